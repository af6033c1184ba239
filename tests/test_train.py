from __future__ import annotations

import json
import math
import os
import re

import mlflow
import numpy as np
import pytest
import torch

from gptmini.core.config import ConfigError
from gptmini.core.device import Distributed, pick_dtype
from gptmini.data.tokenizers import CharTokenizer
from gptmini.model import GPT
from gptmini.tracking.runs import mlflow_run
from gptmini.training.resume import ResumeStore, fingerprint
from gptmini.training.trainer import NonFiniteLoss, Trainer
from helpers import make_corpus, model_config, train_config


@pytest.fixture
def tokens():
    text = make_corpus(200)
    tok = CharTokenizer(text)
    ids = np.asarray(tok.encode(text), dtype=np.uint16)
    split = int(len(ids) * 0.9)
    return tok.vocab_size, ids[:split], ids[split:]


def tiny_trainer(tokens, steps=30, **cfg) -> Trainer:
    vocab, train_ids, val_ids = tokens
    torch.manual_seed(0)
    model = GPT(model_config(block_size=16, n_layer=1, n_head=2, n_embd=16), vocab)
    defaults = {"warmup_steps": 2, "batch_size": 4, "eval_interval": 10,
                "eval_iters": 2, "checkpoint_interval": 5, "dtype": "float32"}
    return Trainer(model, train_ids, val_ids, train_config(**{**defaults, **cfg}),
                   torch.device("cpu"), steps=steps)


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_state(tokens, tmp_path):
    trainer = tiny_trainer(tokens)
    store = ResumeStore(tmp_path / "state", "f" * 64, Distributed())

    def poison(row):
        if row["step"] == 12:
            with torch.no_grad():
                trainer.model.ln_f.weight.fill_(math.nan)

    with pytest.raises(NonFiniteLoss, match="non-finite loss nan at step 13") as err:
        trainer.run(on_step=poison, on_checkpoint=lambda t: store.save(t.state_dict(), None),
                    progress=False)
    assert err.value.step == 13
    state, _ = ResumeStore(tmp_path / "state", "f" * 64, Distributed()).load()
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def stopped_and_resumed(tokens, **cfg) -> Trainer:
    """A run stopped after its state at step 15 was saved, then resumed from that state."""
    saved = {}

    class Stop(Exception):
        pass

    def keep_and_stop(t):
        saved["state"] = t.state_dict()
        if t.step == 15:
            raise Stop

    with pytest.raises(Stop):
        tiny_trainer(tokens, **cfg).run(on_checkpoint=keep_and_stop, progress=False)
    resumed = tiny_trainer(tokens, **cfg)
    resumed.load_state_dict(saved["state"])
    resumed.run(progress=False)
    return resumed


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_in_process_gives_the_same_weights(tokens, tmp_path, optimizer):
    straight = tiny_trainer(tokens, optimizer=optimizer)
    straight.run(progress=False)
    resumed = stopped_and_resumed(tokens, optimizer=optimizer)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_muon_steps_the_blocks_matrices_and_adamw_the_rest(tokens):
    trainer = tiny_trainer(tokens, optimizer="muon", learning_rate=1e-3, muon_lr=0.05)
    adamw, muon = trainer.optimizer.optimizers
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in trainer.model.named_parameters()
                       if p.dim() == 2 and n.startswith("blocks.")}
    assert in_muon.isdisjoint(in_adamw) and in_muon | in_adamw == set(names.values())
    assert "wte.weight" in in_adamw  # the embedding, tied to the head, stays with AdamW
    assert muon.state_dict()["state"] == {}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run(progress=False)
    assert muon.state_dict()["state"], "Muon kept no momentum: it never stepped"
    assert all(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    # every group follows the schedule in proportion to its own peak
    assert muon.param_groups[0]["lr"] / muon.param_groups[0]["peak_lr"] == pytest.approx(
        adamw.param_groups[0]["lr"] / adamw.param_groups[0]["peak_lr"])


def test_muon_momentum_warms_up_from_0_85_to_its_value(tokens):
    trainer = tiny_trainer(tokens, optimizer="muon", muon_momentum=0.95,
                           muon_momentum_warmup=20, steps=30)
    muon = trainer.optimizer.optimizers[1]
    seen = []
    trainer.run(on_step=lambda row: seen.append(muon.param_groups[0]["momentum"]),
                progress=False)
    assert seen[0] == pytest.approx(0.85) and seen[10] == pytest.approx(0.90)
    assert seen[20:] == [pytest.approx(0.95)] * 10


def test_muon_and_adamw_take_their_own_weight_decay(tokens):
    trainer = tiny_trainer(tokens, optimizer="muon", weight_decay=0.1, muon_weight_decay=0.3)
    adamw, muon = trainer.optimizer.optimizers
    assert [g["weight_decay"] for g in muon.param_groups] == [0.3]
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]


def test_z_loss_adds_the_mean_squared_log_partition_to_the_training_loss(tokens):
    plain, with_z = tiny_trainer(tokens), tiny_trainer(tokens, z_loss=1e-2)
    x, y = plain.samplers["train"].sample(torch.device("cpu"))
    plain.model.eval(), with_z.model.eval()  # no dropout: the same forward in both
    with torch.no_grad():
        logits = plain.model(x)
        z = torch.logsumexp(logits.float(), dim=-1).pow(2).mean()
        assert z > 1  # else the test could not tell the terms apart
        assert with_z.step_model(x, y) == pytest.approx(float(plain.step_model(x, y) + 1e-2 * z),
                                                        rel=1e-6)
    with_z.model.train()
    with_z.run(progress=False)  # and it trains: the logits' scale is what z-loss acts on
    assert with_z.evals[-1]["val_loss"] < with_z.evals[0]["val_loss"]


def test_the_next_next_head_adds_its_loss_trains_resumes_and_is_never_saved(tokens):
    plain, with_head = tiny_trainer(tokens), tiny_trainer(tokens, next_next_loss=0.5)
    ahead = with_head.objective.ahead
    x, y = plain.samplers["train"].sample(torch.device("cpu"))
    with_head.model.load_state_dict(plain.model.state_dict())
    plain.model.eval(), with_head.model.eval()
    with torch.no_grad():
        after_next = with_head.model.lm_head(ahead(with_head.model.hidden(x)[:, :-1]))
        extra = torch.nn.functional.cross_entropy(after_next.flatten(0, 1), y[:, 1:].flatten())
        assert with_head.step_model(x, y) == pytest.approx(
            float(plain.model(x, y) + 0.5 * extra), rel=1e-6)
    adamw = with_head.optimizer.optimizers[0]
    in_adamw = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert {id(p) for p in ahead.parameters()} <= in_adamw
    with_head.model.train()
    before = [p.detach().clone() for p in ahead.parameters()]
    with_head.run(progress=False)
    assert all(not torch.equal(a, p) for a, p in zip(before, ahead.parameters(), strict=True))
    assert set(with_head.model.state_dict()) == set(plain.model.state_dict())
    straight = tiny_trainer(tokens, next_next_loss=0.5)
    straight.run(progress=False)
    resumed = stopped_and_resumed(tokens, next_next_loss=0.5)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for name, a in straight.objective.state_dict().items():
        assert torch.equal(a, resumed.objective.state_dict()[name]), name


def test_sequence_length_warmup_trains_prefixes_rising_to_the_context(tokens):
    from gptmini.training.trainer import seq_len_at

    cfg = train_config(seq_warmup_steps=100)
    lengths = [seq_len_at(step, cfg, 256) for step in range(0, 120, 10)]
    assert lengths[0] == 32 and lengths[5] == 144 and lengths[10:] == [256, 256]
    assert lengths == sorted(lengths) and all(n % 8 == 0 for n in lengths)
    trainer = tiny_trainer(tokens, seq_warmup_steps=16)  # block_size 16
    trained = []
    real_forward = trainer.model.forward

    def forward(x, y=None):
        if trainer.model.training:  # not the loss estimates, which see whole windows
            trained.append(x.size(1))
        return real_forward(x, y)

    trainer.model.forward = forward
    trainer.run(progress=False)
    assert trained == [2] * 10 + [10] * 6 + [16] * 14


def test_z_loss_is_refused_for_the_chunked_head(tokens):
    vocab, train_ids, val_ids = tokens
    model = GPT(model_config(block_size=16, n_layer=1, n_head=2, n_embd=16), 50257)
    with pytest.raises(ValueError, match="train.z_loss = 0.0001 and train.next_next_loss = "
                                         "0.0 need the plain head"):
        Trainer(model, train_ids, val_ids, train_config(z_loss=1e-4, warmup_steps=2),
                torch.device("cpu"), steps=10)


@pytest.mark.parametrize("keep_best", [False, True])
def test_ema_is_what_is_evaluated_kept_and_saved_and_it_resumes(tokens, keep_best):
    raw = tiny_trainer(tokens, keep_best=keep_best)
    raw.run(progress=False)
    straight = tiny_trainer(tokens, ema_decay=0.9, keep_best=keep_best)
    averages = {}
    straight.run(on_eval=lambda row: averages.update(
        {row["step"]: {k: v.clone() for k, v in straight.ema.module.state_dict().items()}}),
        progress=False)
    # the same training (the average never feeds back), other weights evaluated and saved
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in raw.history]
    assert straight.evals != raw.evals
    saved = averages[straight.best_step if keep_best else 30]
    for name, weights in straight.model.state_dict().items():
        assert torch.equal(weights, saved[name]), name
    assert not torch.equal(straight.model.lm_head.weight, raw.model.lm_head.weight)
    # a resumed run averages on from where it stopped, bit for bit
    resumed = stopped_and_resumed(tokens, ema_decay=0.9, keep_best=keep_best)
    for name, weights in straight.model.state_dict().items():
        assert torch.equal(weights, resumed.model.state_dict()[name]), name


def test_a_resume_state_of_the_other_optimizer_is_refused(tokens):
    adamw = tiny_trainer(tokens, optimizer="adamw")
    muon = tiny_trainer(tokens, optimizer="muon")
    with pytest.raises(ValueError, match="holds 1 optimizers, this run has 2"):
        muon.load_state_dict(adamw.state_dict())


def test_keep_best_saves_the_weights_of_the_best_step(tokens, tmp_path):
    from gptmini.training.checkpoint import load_checkpoint, save_checkpoint

    # AdamW at a rate this high overshoots: the last step is not the best one
    trainer = tiny_trainer(tokens, optimizer="adamw", learning_rate=0.05, min_lr=0.05, steps=30,
                           data_order="random")
    at_eval = {}

    def keep(row):
        at_eval[row["step"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    result = trainer.run(on_eval=keep, progress=False)
    best = min(trainer.evals, key=lambda r: r["val_loss"])
    assert result.best_val_loss == best["val_loss"] and result.best_step == best["step"]
    assert result.best_step < 30  # a restore is needed: the last step is not the best
    save_checkpoint(tmp_path / "ckpt.pt", trainer.model,
                    model_config(block_size=16, n_layer=1, n_head=2, n_embd=16),
                    {"kind": "char", "vocab": [], "dtype": "uint16"}, result.steps)
    saved = load_checkpoint(tmp_path / "ckpt.pt")["model"]
    for name, weights in at_eval[result.best_step].items():
        assert torch.equal(saved[name], weights), name
    assert any(not torch.equal(saved[k], v) for k, v in at_eval[30].items())


def test_fingerprint_follows_config_and_bytes(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    base = fingerprint({"lr": 1}, [f])
    assert fingerprint({"lr": 1}, [f]) == base
    assert fingerprint({"lr": 2}, [f]) != base
    f.write_bytes(b"abd")
    assert fingerprint({"lr": 1}, [f]) != base


def test_dtype_choice():
    cpu = torch.device("cpu")
    assert pick_dtype("float32", cpu) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    assert pick_dtype("auto", torch.device("mps")) == torch.float32


def tiny_params(**train):
    from gptmini.core.config import parse_params
    from helpers import default_params

    raw = default_params()
    raw["model"].update(n_layer=1, n_embd=16, n_head=2, block_size=16)
    raw["train"].update(device="cpu", batch_size=4, budget_chars=12 * 4 * 16, warmup_steps=2,
                        eval_interval=5, eval_iters=2, checkpoint_interval=5, dtype="float32",
                        **train)
    return parse_params(raw)


def run_train_stage(root, corpus_text: str, params):
    """The train stage's library function in a project folder of its own, after tokenize."""
    from gptmini.core import paths
    from gptmini.data.tokens import prepare
    from gptmini.training.stage import train

    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")  # marks the project root for MLflow
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        prepare(corpus, paths.TOKENS_DIR, params.tokenizer)
        return train(params)
    finally:
        os.chdir(cwd)


def test_the_train_stage_writes_its_outputs_and_one_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text = make_corpus(300)
    result = run_train_stage(tmp_path / "a", text, tiny_params())
    root = tmp_path / "a"
    assert result.steps == 12
    ckpt = torch.load(root / "data/model/ckpt.pt", weights_only=True)
    assert set(ckpt) == {"model", "model_config", "tokenizer", "step"}
    assert (root / "metrics/train_log.csv").read_text().splitlines()[0] == "step,loss,lr"
    summary = json.loads((root / "metrics/train.json").read_text())
    assert summary == {**result.summary(), "parameters": summary["parameters"]}
    timings = json.loads((root / "data/volatile/timings.json").read_text())["train"]
    assert timings["wall_seconds"] > 0 and timings["tokens_per_second"] > 0
    run_id = json.loads((root / "data/volatile/mlflow_run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.budget_chars"] == str(12 * 4 * 16)
    assert run.data.params["train.steps"] == "12"
    assert run.data.params["train.chars_per_token"] == "1.0"
    assert run.data.metrics["train.best_val_loss"] == summary["best_val_loss"]
    assert run.data.metrics["train.wall_seconds"] == timings["wall_seconds"]
    assert not (root / "data/train_state").exists()

    # A second run with the same inputs writes byte-identical outputs; only what lives in
    # data/volatile/ (the run id, the timings) differs.
    run_train_stage(tmp_path / "b", text, tiny_params())
    for out in ("data/model/ckpt.pt", "metrics/train.json", "metrics/train_log.csv",
                "metrics/eval_log.csv", "metrics/loss_curve.png"):
        assert (tmp_path / "b" / out).read_bytes() == (root / out).read_bytes(), out
    assert (tmp_path / "b/data/volatile/mlflow_run.json").read_text() != \
        (root / "data/volatile/mlflow_run.json").read_text()


def test_an_error_inside_the_train_stage_marks_its_mlflow_run_failed(tmp_path, monkeypatch):
    """A real fault in the real stage: its log file's path is taken by a folder, so writing
    the outputs fails after training, inside the run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "p"
    (root / "metrics/train_log.csv").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        run_train_stage(root, make_corpus(300), tiny_params())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(runs[0].info.run_id, "train_loss")) == 12


def test_the_train_stage_refuses_a_context_longer_than_a_split(tmp_path):
    with pytest.raises(ConfigError, match=r"model.block_size = 16: must be < the val split"):
        run_train_stage(tmp_path, "ab\n" * 30, tiny_params())


def test_a_resumed_run_does_not_send_metrics_mlflow_already_has(tmp_path, monkeypatch):
    """A crash after the metrics of steps 0-24 were sent but before the state of step 25 was
    saved resumes from step 0 (say): those steps must not reach MLflow twice."""
    from gptmini.tracking.metrics import MetricBuffer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.chdir(tmp_path)
    with mlflow_run(run_name="crashed") as run:
        first = MetricBuffer(run.info.run_id)
        for step in range(25):
            first.add({"loss": 1.0 / (step + 1)}, step, "train_")
        first.flush()
    resumed = MetricBuffer(run.info.run_id, resume_metric="train_loss")
    for step in range(10, 40):  # the resumed state was older than what MLflow got
        resumed.add({"loss": 1.0 / (step + 1)}, step, "train_")
    resumed.flush()
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(40))


def test_a_run_id_from_another_store_is_replaced_for_the_later_stages(tmp_path, monkeypatch):
    from gptmini.tracking.run_id import read_run_id, write_run_id
    from gptmini.tracking.runs import pipeline_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.chdir(tmp_path)
    write_run_id("0" * 32)  # left by a run logged to another tracking store
    with pipeline_run("evaluate") as first:
        pass
    assert read_run_id() == first.info.run_id
    with pipeline_run("export") as second:
        pass
    assert second.info.run_id == first.info.run_id  # export joins evaluate's run


def crash_after_the_first_save(monkeypatch, root, text: str, params) -> None:
    """Run the train stage until its first resume state is written, then crash it."""
    from gptmini.training.resume import ResumeStore

    class Crash(Exception):
        pass

    real_save = ResumeStore.save

    def save_then_crash(self, state, run_id):
        real_save(self, state, run_id)
        raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(ResumeStore, "save", save_then_crash)
        with pytest.raises(Crash):
            run_train_stage(root, text, params)


@pytest.fixture(scope="module")
def fresh_checkpoint(tmp_path_factory) -> bytes:
    """The checkpoint of the tiny train stage never interrupted."""
    root = tmp_path_factory.mktemp("fresh")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    run_train_stage(root, make_corpus(300), tiny_params())
    return (root / "data/model/ckpt.pt").read_bytes()


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("damage,message", [
    ("truncated state", r"rank0-step5\.pt is truncated or corrupt \(\w+\)"),
    ("missing state", r"rank0-step5\.pt, named by manifest\.json, is missing"),
    ("truncated manifest", r"unreadable manifest\.json \(JSONDecodeError\)"),
])
def test_a_corrupt_resume_state_is_one_line_and_a_fresh_start(tmp_path, monkeypatch, capsys,
                                                               fresh_checkpoint, damage,
                                                               message):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, text = tmp_path / "p", make_corpus(300)
    crash_after_the_first_save(monkeypatch, root, text, tiny_params())
    state = root / "data/train_state"
    assert json.loads((state / "manifest.json").read_text())["step"] == 5
    {"truncated state": lambda: _truncate(state / "rank0-step5.pt"),
     "missing state": lambda: (state / "rank0-step5.pt").unlink(),
     "truncated manifest": lambda: _truncate(state / "manifest.json")}[damage]()
    capsys.readouterr()
    result = run_train_stage(root, text, tiny_params())
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if "train_state" in line]
    assert len(lines) == 1, out.out
    assert re.fullmatch(rf".*data/train_state: {message}; starting over \(delete "
                        rf".*data/train_state to discard it by hand\)", lines[0]), lines[0]
    assert "resuming" not in out.out and "Traceback" not in out.err
    assert result.steps == 12
    assert (root / "data/model/ckpt.pt").read_bytes() == fresh_checkpoint
    assert not state.exists()


def test_a_state_made_on_other_token_bytes_is_not_resumed(tmp_path, monkeypatch, capsys):
    """Same params, another corpus: the token files differ, so the state is not this run's."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "p"
    crash_after_the_first_save(monkeypatch, root, make_corpus(300), tiny_params())
    capsys.readouterr()
    result = run_train_stage(root, make_corpus(300, seed=1), tiny_params())
    out = capsys.readouterr().out
    assert "data/train_state: saved state is for other params or data; starting over" in out
    assert "resuming" not in out and result.steps == 12


def _muon_run(optimizer_class, nesterov: bool, steps: int = 3, **kwargs):
    """Parameters of the seed's four block shapes after `steps` Muon steps on fixed grads."""
    g = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02)
              for s in ((384, 128), (128, 128), (512, 128), (128, 512))]
    opt = optimizer_class(params, lr=0.05, momentum=0.95, weight_decay=0.1, nesterov=nesterov,
                          **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return params, opt


@pytest.mark.parametrize("nesterov", [True, False])
def test_our_muon_with_bf16_newton_schulz_is_torchs_muon_bit_for_bit(nesterov):
    from gptmini.training.muon import Muon

    theirs, their_opt = _muon_run(torch.optim.Muon, nesterov)
    ours, our_opt = _muon_run(Muon, nesterov, ns_dtype=torch.bfloat16)
    for a, b in zip(theirs, ours, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(their_opt.state.values(), our_opt.state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    # float32 iterations: another result, and the momentum never scaled in place by them
    fp32, fp32_opt = _muon_run(Muon, nesterov, ns_dtype=torch.float32)
    assert not torch.equal(fp32[0], ours[0])
    assert all(torch.equal(a["momentum_buffer"], b["momentum_buffer"])
               for a, b in zip(their_opt.state.values(), fp32_opt.state.values(), strict=True))


def test_muon_iterates_in_float32_on_a_cpu_unless_bf16_is_asked_for_and_native():
    from gptmini.core.device import cpu_has_fast_bf16
    from gptmini.training.muon import ns_dtype_for

    cpu = torch.device("cpu")
    assert ns_dtype_for(cpu, torch.float32) == torch.float32
    assert ns_dtype_for(cpu, torch.bfloat16) == (torch.bfloat16 if cpu_has_fast_bf16()
                                                 else torch.float32)
    assert pick_dtype("auto", cpu) == torch.float32  # bf16 on a CPU is an opt-in
    # the trainer's Muon (resumed bit-exact by test_resume_in_process_gives_the_same_weights)
    trainer = tiny_trainer((65, np.zeros(500, np.uint16), np.zeros(500, np.uint16)),
                           optimizer="muon")
    assert trainer.optimizer.optimizers[1].ns_dtype == torch.float32

