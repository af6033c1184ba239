"""Faults that real runs meet, each injected for real: a disk that fills up mid-write or a
rename that fails (the kernel's file-size limit, a failing os.replace), a non-finite
gradient on the step right before a save."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from conftest import make_corpus, model_config
from gptmini.core.atomic import write_json
from gptmini.core.device import Distributed
from gptmini.model import GPT
from gptmini.training.checkpoint import save_checkpoint
from gptmini.training.resume import ResumeStore


@contextmanager
def disk_full_after(nbytes: int) -> Iterator[None]:
    """Every write past `nbytes` into any file fails with EFBIG, as on a full disk: the
    kernel's RLIMIT_FSIZE (SIGXFSZ ignored, so the write returns the error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def failing_replace(monkeypatch, when) -> None:
    """os.replace raises EIO for the renames `when(src, dst)` picks; the others happen."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if when(Path(src), Path(dst)):
            raise OSError(errno.EIO, "injected rename failure", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def tiny_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(model_config(block_size=16, n_layer=2, n_head=2, n_embd=32), 40)


TOKENIZER = {"kind": "char", "chars": "abc", "vocab_size": 40, "dtype": "uint16"}


def test_a_full_disk_while_saving_the_checkpoint_leaves_the_previous_one(tmp_path):
    ckpt = tmp_path / "model" / "ckpt.pt"
    save_checkpoint(ckpt, tiny_model(0), model_config(), TOKENIZER, step=10)
    before = ckpt.read_bytes()
    with disk_full_after(len(before) // 2), pytest.raises(OSError) as err:
        save_checkpoint(ckpt, tiny_model(1), model_config(), TOKENIZER, step=20)
    assert err.value.errno == errno.EFBIG  # the write itself failed, half-way through
    assert ckpt.read_bytes() == before
    assert list(ckpt.parent.iterdir()) == [ckpt]  # no temporary file left behind
    assert torch.load(ckpt, weights_only=True)["step"] == 10


def test_a_failed_rename_leaves_the_previous_checkpoint_and_metrics(tmp_path, monkeypatch):
    ckpt, metrics = tmp_path / "ckpt.pt", tmp_path / "train.json"
    save_checkpoint(ckpt, tiny_model(0), model_config(), TOKENIZER, step=10)
    write_json(metrics, {"val_loss": 1.0})
    before = {p: p.read_bytes() for p in (ckpt, metrics)}
    failing_replace(monkeypatch, lambda src, dst: True)
    with pytest.raises(OSError, match="injected rename failure"):
        save_checkpoint(ckpt, tiny_model(1), model_config(), TOKENIZER, step=20)
    with pytest.raises(OSError, match="injected rename failure"):
        write_json(metrics, {"val_loss": 0.5})
    assert {p: p.read_bytes() for p in (ckpt, metrics)} == before
    assert sorted(tmp_path.iterdir()) == sorted(before)


def test_a_full_disk_or_failed_rename_while_saving_a_resume_state_keeps_the_last_one(
        tmp_path, monkeypatch):
    store = ResumeStore(tmp_path / "state", "f" * 64, Distributed())
    weights = tiny_model(0).state_dict()
    store.save({"step": 5, "model": weights}, "run-a")
    size = (tmp_path / "state/rank0-step5.pt").stat().st_size
    # The state file of step 10 cannot be written ...
    with disk_full_after(size // 2), pytest.raises(OSError):
        store.save({"step": 10, "model": tiny_model(1).state_dict()}, "run-a")
    # ... or it is, but the manifest naming it cannot be renamed into place.
    failing_replace(monkeypatch, lambda src, dst: dst.name == "manifest.json")
    with pytest.raises(OSError, match="injected rename failure"):
        store.save({"step": 15, "model": tiny_model(2).state_dict()}, "run-a")
    monkeypatch.undo()
    state, run_id = ResumeStore(tmp_path / "state", "f" * 64, Distributed()).load()
    assert state["step"] == 5 and run_id == "run-a"
    for name, tensor in weights.items():
        assert torch.equal(state["model"][name], tensor), name
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.startswith(".")]


def test_a_full_disk_or_failed_rename_while_exporting_keeps_the_previous_export(
        tmp_path, monkeypatch):
    from gptmini.core.hashing import weights_sha256
    from gptmini.serving.export import export, load_export
    from tiny_export import build_tiny_export

    tiny = build_tiny_export(tmp_path / "a")
    before = tree_digest(tiny.directory)
    other = build_tiny_export(tmp_path / "b", seed=1)  # another model's checkpoint
    largest = max(p.stat().st_size for p in tiny.directory.iterdir())
    args = (other.checkpoint, tmp_path / "b/evaluate.json", tiny.directory)
    with disk_full_after(largest // 2), pytest.raises(OSError) as err:
        export(*args)
    assert err.value.errno == errno.EFBIG
    assert tree_digest(tiny.directory) == before
    # Every file written, then the new directory cannot be renamed into place: the old
    # one, already moved aside, is put back.
    failing_replace(monkeypatch, lambda src, dst: dst == tiny.directory and src.suffix == ".tmp")
    with pytest.raises(OSError, match="injected rename failure"):
        export(*args)
    monkeypatch.undo()
    assert tree_digest(tiny.directory) == before
    assert sorted(p.name for p in tiny.directory.parent.iterdir()) == sorted(
        p.name for p in (tmp_path / "b").iterdir())  # no .export.*.tmp or .old left
    assert load_export(tiny.directory).record["model"]["weights_sha256"] == \
        weights_sha256(tiny.model)
    export(*args)  # once the disk is fine again, the new export replaces the old one
    assert tree_digest(tiny.directory) != before


@pytest.mark.parametrize("poison", ["gradient", "weight"])
def test_a_nan_on_the_step_before_a_save_never_reaches_the_saved_state(tmp_path, monkeypatch,
                                                                        poison):
    """checkpoint_interval 5: step 9's end saves the state of step 10. A NaN gradient at
    step 9 (its loss still finite) would, through the optimizer step, put NaN weights into
    that state; so would an optimizer step that overflows. The train stage stops with one
    line, and the state on disk stays the clean one of step 5."""
    from test_train import run_train_stage, tiny_params

    from gptmini.core.stage import StageError
    from gptmini.training import run as train_run
    from gptmini.training.resume import ResumeStore

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    real_trainer = train_run.Trainer

    class PoisonedTrainer(real_trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            weight = self.model.ln_f.weight
            if poison == "gradient":  # a real autograd hook: the loss stays finite
                weight.register_hook(lambda g: g * math.nan if self.step == 9 else g)
            else:  # a real optimizer hook, after the step: the weights overflow
                def overflow(optimizer, args, kwargs):
                    if self.step == 9:
                        with torch.no_grad():
                            weight[0] = math.inf
                self.optimizer.register_step_post_hook(overflow)

    monkeypatch.setattr(train_run, "Trainer", PoisonedTrainer)
    root = tmp_path / "project"
    with pytest.raises(StageError) as err:
        run_train_stage(root, make_corpus(300), tiny_params())
    expected = {"gradient": "non-finite gradient norm nan at step 9",
                "weight": "non-finite weight ln_f.weight inf at step 10"}[poison]
    assert str(err.value) == (f"training stopped: {expected}; the last good state (step 5) "
                              "is kept in data/train_state/")
    fp = json.loads((root / "data/train_state/manifest.json").read_text())["fingerprint"]
    state, run_id = ResumeStore(root / "data/train_state", fp, Distributed()).load()
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(v).all() for s in state["optimizer"]["state"].values()
               for v in s.values())
    assert sorted(p.name for p in (root / "data/train_state").iterdir()) == [
        "manifest.json", "rank0-step5.pt"]
    assert not (root / "data/model/ckpt.pt").exists()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    assert mlflow.get_run(run_id).info.status == "FAILED"
