"""Stopping and scaling the real train stage of a throwaway DVC project: Ctrl-C and SIGTERM
save the step under way and resume bit-identical, two processes train one model, a bad
param stops before any work, and the pinned kernel path decides float32's bits."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from helpers import make_corpus
from pipeline_project import make_project, weights_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("mirror") / "input.txt"
    path.write_text(make_corpus(1500, seed=3))
    return path


def test_two_processes_train_one_model_and_write_one_checkpoint(tmp_path_factory, corpus):
    # 30 steps, each of 2 processes x 8 x 32 characters
    project = make_project(tmp_path_factory, corpus, "ddp", processes=2,
                           budget_chars=30 * 2 * 8 * 32)
    project.run("dvc", "repro", "tokenize")
    out = project.run("dvc", "repro", "train")
    hashes = dict(re.findall(r"rank (\d)/2: weights sha256 ([0-9a-f]{64})",
                             out.stderr + out.stdout))
    assert set(hashes) == {"0", "1"}, out.stderr[-6000:] + out.stdout[-3000:]
    assert hashes["0"] == hashes["1"]  # both processes hold the same model
    assert list((project.root / "data/model").glob("*.pt")) == [
        project.root / "data/model/ckpt.pt"]
    assert weights_of(project) == hashes["0"]
    summary = json.loads((project.root / "metrics/train.json").read_text())
    assert summary["steps"] == 30
    lines = (project.root / "metrics/train_log.csv").read_text().splitlines()
    assert len(lines) == 31
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert len(runs) == 1
    assert runs[0].data.params["train.processes"] == "2"


def test_a_bad_param_stops_the_stage_with_one_line_and_no_outputs(tmp_path_factory, corpus):
    project = make_project(tmp_path_factory, corpus, "badparam")
    project.run("dvc", "repro", "tokenize")
    params = project.params
    params["model"]["n_head"] = 3
    project.write_params(params)
    proc = project.run("python", "stages/train.py", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: model.n_embd = 32: must be divisible by model.n_head = 3"]
    assert not (project.root / "data/model").exists()
    assert not (project.root / "mlflow.db").exists()


# 1,600 steps saved every 100, one torch thread (two threads per process oversubscribe a
# shared CPU): the tiny model trains ~100 float32 steps a second on one core, so the
# signal, up to 2 s after the first save, lands well before the end
SIGNAL_STEPS = 1600
SHORT = {"budget_chars": SIGNAL_STEPS * 8 * 32, "checkpoint_interval": 100, "eval_interval": 400,
         "threads": 1}


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory, corpus):
    project = make_project(tmp_path_factory, corpus, "short", **SHORT)
    project.run("dvc", "repro", "train")
    return project


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_training_in_seconds_and_the_rerun_resumes_bit_identical(
        tmp_path_factory, corpus, short_reference, signum):
    """Ctrl-C (SIGINT to the foreground process group) or SIGTERM to `dvc repro train` at a
    random moment: training saves the state of the step under way (not the last periodic
    save), ends its MLflow run KILLED with every step's metric up to there, and exits in a
    few seconds; the next `dvc repro` resumes from that step to the reference's weights."""
    name = signal.Signals(signum).name
    project = make_project(tmp_path_factory, corpus, name.lower(), **SHORT)
    project.run("dvc", "repro", "tokenize")
    manifest = project.root / "data/train_state/manifest.json"
    log = project.root.parent / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([project.dvc, "repro", "train"], cwd=project.root,
                                env=project.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 900  # dvc, imports and 20 steps, on a busy machine
    while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert manifest.exists(), "no first save in 900 s"
    time.sleep(random.uniform(0.0, 2.0))  # a random moment after the first periodic save
    assert proc.poll() is None, "training ended before the signal"
    before = json.loads(manifest.read_text())["step"]
    sent = time.monotonic()
    os.killpg(proc.pid, signum)
    saved_in = None
    while True:  # until the whole process group is gone
        if saved_in is None and json.loads(manifest.read_text())["step"] != before:
            saved_in = time.monotonic() - sent  # the state of the step under way is saved
        proc.poll()  # reaps dvc once it exits: a zombie leader would keep the group alive
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    exited_in = time.monotonic() - sent
    err = log.read_text()
    match = re.search(rf"stopped: training stopped by {name} at step (\d+); its state is "
                      r"saved in data/train_state/: rerun the stage \(dvc repro\) to resume",
                      err)
    assert match, err[-3000:]
    step = int(match.group(1))
    print(f"\n{name}: state of step {step} saved {saved_in:.2f} s after the signal, every "
          f"process gone after {exited_in:.2f} s")
    assert saved_in is not None and saved_in < 5
    # then the interpreters' and dvc's own exit: 74 s measured once under a load average
    # of 19 on 2 cores, so only bounded here (the stop itself is the save above)
    assert exited_in < 180
    assert json.loads(manifest.read_text())["step"] == step
    assert 0 < step < SIGNAL_STEPS
    assert not (project.root / "data/model/ckpt.pt").exists()
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    assert run.info.status == "KILLED"
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(step))  # sent up to the stop

    rerun = project.run("dvc", "repro", "train")
    assert f"resuming from step {step}" in rerun.stdout
    assert weights_of(project) == weights_of(short_reference)
    assert (project.root / "metrics/train_log.csv").read_bytes() == \
        (short_reference.root / "metrics/train_log.csv").read_bytes()
    run = mlflow.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(SIGNAL_STEPS))


_TRAIN_AND_HASH = """
import gptmini, torch
from helpers import model_config, train_config
from gptmini.core.hashing import weights_sha256
from gptmini.model import GPT
from gptmini.training.trainer import Trainer
import numpy as np
torch.set_num_threads(2)
torch.manual_seed(0)
tokens = np.random.default_rng(0).integers(0, 65, 20000).astype(np.uint16)
model = GPT(model_config(block_size=64, n_layer=2, n_head=4, n_embd=64), 65)
cfg = train_config(warmup_steps=2, batch_size=8, eval_interval=100, eval_iters=1,
                   checkpoint_interval=100, dtype="float32", threads=2, keep_best=False)
Trainer(model, tokens, tokens, cfg, torch.device("cpu"), steps=6).run(progress=False)
print(torch.backends.cpu.get_cpu_capability(), weights_sha256(model))
"""


def _train_and_hash(**env: str) -> tuple[str, str]:
    from helpers import REPO

    clean = {k: v for k, v in os.environ.items()
             if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", _TRAIN_AND_HASH], cwd=REPO / "tests",
                         env={**clean, **env}, capture_output=True, text=True, timeout=300,
                         check=True).stdout.split()
    return out[-2], out[-1]


def _cpu_has(flag: str) -> bool:
    from gptmini.core.numerics import cpu_flags

    return flag in cpu_flags()


@pytest.mark.parametrize("unpinned", [
    {"ATEN_CPU_CAPABILITY": "default"},  # no SIMD: every x86 CPU can show the pin works
    pytest.param({"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO"}, marks=pytest.mark.skipif(
        not _cpu_has("avx512f"), reason="this CPU has no AVX-512 path to compare against")),
], ids=["no-simd", "avx512"])
def test_the_pinned_kernel_path_is_what_makes_float32_training_portable(unpinned):
    """`import gptmini` pins ATen's and MKL's code paths to AVX2 (gptmini.core.numerics): a
    process that sets nothing trains on that path, and a process on another path trains
    to other bits, so without the pin two CPU generations would disagree."""
    capability, pinned = _train_and_hash()
    assert capability == "AVX2"
    other_capability, other = _train_and_hash(**unpinned)
    assert other_capability != "AVX2"
    assert other != pinned


def test_native_kernels_train_on_the_cpus_own_path_and_say_so(tmp_path_factory, corpus):
    """`train.kernels: native`: the train stage runs again without the pins (the CPU's
    fastest path: AVX-512 where it has it), records it in MLflow's tags, and the
    reference check refuses the run."""
    project = make_project(tmp_path_factory, corpus, "native", kernels="native",
                           budget_chars=8 * 8 * 32, warmup_steps=2)
    project.run("dvc", "repro", "tokenize")
    project.run("dvc", "repro", "train")
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlflow.db'}")
    run, = mlflow.search_runs(experiment_names=["gptmini"], output_format="list")
    tags = run.data.tags
    assert tags["cpu.kernels"] == "native" and run.data.params["train.kernels"] == "native"
    assert tags["cpu.kernel_path"] == ("AVX512" if _cpu_has("avx512f") else "AVX2")
    assert tags["cpu.mkl_cbwr"] == "AUTO"
    from helpers import REPO

    check = project.run("python", str(REPO / ".ci/check_reference.py"), check=False)
    assert check.returncode != 0 and "train.kernels: native" in check.stderr + check.stdout
