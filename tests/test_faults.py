"""Faults that real runs meet, each injected for real: a disk that fills up mid-write or a
rename that fails (the kernel's file-size limit, a failing os.replace), a non-finite
gradient on the step right before a save."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import resource
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gptmini.core.atomic import write_json
from gptmini.core.device import Distributed
from gptmini.model import GPT
from gptmini.team.stack import free_port
from gptmini.training.checkpoint import save_checkpoint
from gptmini.training.resume import ResumeStore
from helpers import make_corpus, model_config


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
    from gptmini.export.writer import export
    from gptmini.inference.loading import load_export
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
    from gptmini.training import stage as train_stage
    from gptmini.training.resume import ResumeStore

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    real_trainer = train_stage.Trainer

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
                self.optimizer.optimizers[-1].register_step_post_hook(overflow)  # the last

    monkeypatch.setattr(train_stage, "Trainer", PoisonedTrainer)
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
    assert all(torch.isfinite(v).all() for optimizer in state["optimizer"]  # AdamW, Muon
               for s in optimizer["state"].values() for v in s.values())
    assert sorted(p.name for p in (root / "data/train_state").iterdir()) == [
        "manifest.json", "rank0-step5.pt"]
    assert not (root / "data/model/ckpt.pt").exists()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    assert mlflow.get_run(run_id).info.status == "FAILED"


# -- the tracking server dies mid-run --------------------------------------------------------

SERVER_STEPS = 200  # checkpoint_interval 10: the metrics are flushed every 10 steps


class TrackingServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, served artifacts) that a test can
    kill (SIGKILL: it dies, it does not shut down) and start again on the same port and
    store."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import subprocess
        import sys
        import time
        import urllib.request

        mlflow_exe = Path(sys.executable).parent / "mlflow"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 (the server keeps it)
        self.proc = subprocess.Popen(
            [str(mlflow_exe), "server", "--backend-store-uri",
             f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 600  # minutes, on a busy machine
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise AssertionError("mlflow server did not start in 600 s")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    srv = TrackingServer(tmp_path)
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.kill()


def server_project(tmp_path: Path, server: TrackingServer):
    from pipeline_project import PipelineProject

    corpus = tmp_path / "mirror" / "input.txt"
    corpus.parent.mkdir()
    corpus.write_text(make_corpus(1500, seed=3))
    project = PipelineProject(tmp_path / "project", corpus)
    params = project.params
    params["train"].update(budget_chars=SERVER_STEPS * 8 * 32, checkpoint_interval=10,
                           eval_interval=100, threads=1)
    project.write_params(params)
    project.env["MLFLOW_TRACKING_URI"] = server.url
    project.run("dvc", "repro", "tokenize")
    return project


def saved_step(project) -> int:
    try:
        return json.loads((project.root / "data/train_state/manifest.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def wait_for_step(project, proc, step: int) -> None:
    import time

    deadline = time.monotonic() + 300
    while saved_step(project) < step:
        assert proc.poll() is None, f"training ended before step {step}"
        assert time.monotonic() < deadline
        time.sleep(0.05)


def assert_every_metric_once(server: TrackingServer, project, experiment: str = "gptmini"):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    for key in ("train_loss", "train_lr", "train_tokens_per_second"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(SERVER_STEPS)), key  # each step exactly once
    evals = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert sorted(evals) == list(range(0, SERVER_STEPS + 1, 100))
    summary = json.loads((project.root / "metrics/train.json").read_text())
    assert run.data.metrics["train.val_loss"] == summary["val_loss"]
    assert "loss_curve.png" in [a.path for a in client.list_artifacts(run.info.run_id)]
    return run


def train_until_the_server_dies(tmp_path: Path, server: TrackingServer):
    """`dvc repro train` under way, its tracking server SIGKILLed after the first save:
    the project, the process, the step saved before the kill and the kill's time."""
    import subprocess
    import time

    project = server_project(tmp_path, server)
    proc = subprocess.Popen([project.dvc, "repro", "train"], cwd=project.root, env=project.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(project, proc, 10)
    server.kill()
    return project, proc, saved_step(project), time.monotonic()


@pytest.mark.slow
def test_the_tracking_server_dies_mid_run_and_comes_back(tmp_path, server):
    """Killed after the first save, back two saves later on the same port and store:
    training never waits long, and the run ends FINISHED with every step's metrics once."""
    import time

    project, proc, killed_at, killed = train_until_the_server_dies(tmp_path, server)
    wait_for_step(project, proc, killed_at + 30)  # three saves while it is down
    down_for = time.monotonic() - killed
    server.start()
    back_at = saved_step(project)
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err[-3000:]
    print(f"\nserver killed at step {killed_at}, down {down_for:.1f} s, restarted at step "
          f"{back_at}; stage stderr: {[l for l in err.splitlines() if 'MLflow' in l]}")
    assert err.count("training goes on") == 1  # said once, not at every save
    assert (project.root / "data/model/ckpt.pt").exists()
    if "the tracking store is back" not in err:  # training ended before the server was up:
        assert (project.root / "data/volatile/mlflow_outbox.json").exists()
        project.run("dvc", "repro")  # the next stage delivers it
    assert not (project.root / "data/volatile/mlflow_outbox.json").exists()
    assert_every_metric_once(server, project)


@pytest.mark.slow
def test_a_tracking_server_that_never_returns_costs_the_run_nothing(tmp_path, server):
    """Killed after the first save and not back before the stage ends: the stage finishes
    with all its outputs, in seconds rather than minutes of retries, and says in one line
    where the rest waits; `gptmini mlflow-sync` delivers it once a server is back."""
    import subprocess
    import sys
    import time

    project, proc, killed_at, killed = train_until_the_server_dies(tmp_path, server)
    out, err = proc.communicate(timeout=1800)
    after_kill = time.monotonic() - killed
    assert proc.returncode == 0, err[-3000:]
    for output in ("data/model/ckpt.pt", "metrics/train.json", "metrics/train_log.csv",
                   "metrics/eval_log.csv", "metrics/loss_curve.png"):
        assert (project.root / output).is_file(), output
    final = [line for line in err.splitlines() if "the run's remainder" in line]
    assert len(final) == 1, err[-3000:]
    assert re.search(
        rf"MLflow: the tracking store {re.escape(server.url)} is unreachable \(.+\); the run's "
        r"remainder "
        r"\([\d,]+ metrics, 1 artifacts, run [0-9a-f]{32} FINISHED\) is kept in "
        r"data/volatile/mlflow_outbox.json: `gptmini mlflow-sync` delivers it once the store "
        r"is back", final[0]), final[0]
    kept = json.loads((project.root / "data/volatile/mlflow_outbox.json").read_text())
    (entry,) = kept.values()
    print(f"\nserver killed at step {killed_at}; the stage ended {after_kill:.1f} s later "
          f"with {len(entry['metrics'])} metrics kept")
    server.start()
    sync = subprocess.run([sys.executable, "-m", "gptmini.cli", "mlflow-sync"],
                          cwd=project.root, env=project.env, capture_output=True, text=True)
    assert sync.returncode == 0, sync.stderr
    assert f"({len(entry['metrics']):,} metrics)" in sync.stdout
    assert_every_metric_once(server, project)
    again = subprocess.run([sys.executable, "-m", "gptmini.cli", "mlflow-sync"],
                           cwd=project.root, env=project.env, capture_output=True, text=True)
    assert again.stdout.startswith("nothing to deliver")


def test_mlflow_sync_keeps_the_outbox_while_the_store_is_still_unreachable(tmp_path, capsys,
                                                                           monkeypatch):
    """Nothing is lost by a sync against a store that is still down: one line, exit 2, the
    outbox as it was; and a failed request is bounded (no minutes of MLflow's retries)."""
    import time

    from mlflow.entities import Metric

    from gptmini.cli import main
    from gptmini.tracking.outbox import Outbox

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nobody
    outbox = Outbox(tmp_path / "outbox.json")
    outbox.keep("a" * 32, metrics=[Metric("train_loss", 2.5, 1000, s) for s in range(3)],
                status="FINISHED")
    before = outbox.path.read_bytes()
    start = time.monotonic()
    code = main(["mlflow-sync", "--outbox", str(outbox.path)])
    took = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: the tracking store is still unreachable")
    assert err[0].endswith(f"kept in {outbox.path}: 3 metrics, 0 artifacts, run {'a' * 32} "
                           "FINISHED")
    assert outbox.path.read_bytes() == before
    assert took < 15, took
    assert main(["mlflow-sync", "--outbox", str(tmp_path / "none.json")]) == 0
    assert capsys.readouterr().out.startswith("nothing to deliver")


@pytest.mark.slow
def test_sigterm_to_the_train_stage_saves_the_step_under_way_and_resumes_bit_identical(
        tmp_path, monkeypatch):
    """The real train stage in this process, a real SIGTERM to it after its first save:
    the state of the step under way is saved, the run is KILLED with every step's metric
    up to there; the rerun resumes to the uninterrupted run's weights, FINISHED."""
    import time

    import mlflow
    from test_train import run_train_stage, tiny_params

    from gptmini.core.hashing import weights_sha256
    from gptmini.core.stage import Interrupted
    from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint

    text, params = make_corpus(300), tiny_params(threads=1)  # 12 steps, saved every 5
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'ref.db'}")
    run_train_stage(tmp_path / "ref", text, params)
    uri = f"sqlite:///{tmp_path / 'sig.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    manifest = tmp_path / "sig/data/train_state/manifest.json"
    sent = []
    from gptmini.training import stage as train_stage

    real_trainer = train_stage.Trainer

    class SignalledTrainer(real_trainer):
        """SIGTERM to this process right after step 7's optimizer step (after the first
        save, at 5): inside the loop, so the stage's handler is surely installed (a timer
        thread raced a tiny run that had already finished, and killed pytest itself)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

            def terminate(optimizer, args, kwargs):
                if self.step == 7 and not sent:
                    sent.append(time.monotonic())
                    os.kill(os.getpid(), signal.SIGTERM)

            self.optimizer.optimizers[-1].register_step_post_hook(terminate)

    monkeypatch.setattr(train_stage, "Trainer", SignalledTrainer)
    with pytest.raises(Interrupted) as err:
        run_train_stage(tmp_path / "sig", text, params)
    monkeypatch.setattr(train_stage, "Trainer", real_trainer)
    stopped_in = time.monotonic() - sent[0]
    step = json.loads(manifest.read_text())["step"]
    assert step == 8  # the step under way when the signal came (7) ran to its end
    assert str(err.value) == (f"training stopped by SIGTERM at step {step}; its state is "
                              "saved in data/train_state/: rerun the stage (dvc repro) to "
                              "resume")
    assert stopped_in < 5, stopped_in
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert run.info.status == "KILLED"
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(step))
    run_train_stage(tmp_path / "sig", text, params)

    def weights(root):
        return weights_sha256(model_from_checkpoint(load_checkpoint(
            root / "data/model/ckpt.pt")))

    assert weights(tmp_path / "sig") == weights(tmp_path / "ref")
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(12))
