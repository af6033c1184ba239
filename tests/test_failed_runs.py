"""A failed run loses nothing: after any stage fails (a bad param, a device this machine
lacks, a corrupted mirror, a killed process) the workspace still holds every output of
the last good run, or `dvc checkout` brings it back. The outputs kept in git rather than
DVC's cache (the metrics and plots) are `persist: true` in dvc.yaml, so DVC does not delete
them before the stage runs, and the stages replace them atomically only once they succeed;
the cached ones come back with `dvc checkout`."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import make_corpus
from pipeline_project import PipelineProject


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(
            str(p.relative_to(path)).encode() + hashlib.sha256(p.read_bytes()).digest()
            for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs(project: PipelineProject) -> dict[str, str | None]:
    """Every output dvc.lock lists, path -> the digest of what the workspace holds."""
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    paths = [out["path"] for stage in lock["stages"].values() for out in stage["outs"]]
    return {p: digest(project.root / p) if (project.root / p).exists() else None
            for p in paths}


def uncached(project: PipelineProject) -> set[str]:
    """The outputs dvc.yaml keeps out of DVC's cache: only the workspace holds them."""
    spec = yaml.safe_load((project.root / "dvc.yaml").read_text())
    found = set()
    for stage in spec["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                if isinstance(out, dict):
                    (path, opts), = out.items()
                    if opts.get("cache") is False:
                        found.add(path)
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("mirror") / "tinyshakespeare.txt"
    corpus.write_text(make_corpus(1500))
    p = PipelineProject(tmp_path_factory.mktemp("failed-runs"), corpus)
    p.run("dvc", "repro")
    p.run("git", "add", "-A")
    p.run("git", "commit", "-qm", "a good run")
    p.good = outputs(p)
    p.good_params = (p.root / "params.yaml").read_text()
    assert None not in p.good.values() and len(p.good) == 10
    return p


def with_param(project: PipelineProject, key: str, value) -> None:
    params = project.params
    section, name = key.split(".")
    params[section][name] = value
    project.write_params(params)


def assert_nothing_lost(project: PipelineProject) -> None:
    now = outputs(project)
    (project.root / "params.yaml").write_text(project.good_params)
    for path in uncached(project):
        assert now[path] == project.good[path], f"{path} lost or changed by a failed run"
    project.run("dvc", "checkout", "-f")
    assert outputs(project) == project.good
    assert project.run("dvc", "status", "--json").stdout.strip() == "{}"


@pytest.mark.parametrize("key,value,stage", [
    ("tokenizer.val_fraction", 0.0, "tokenize"),
    ("train.device", "cuda", "train"),
    ("train.learning_rate", -1.0, "train"),
    ("evaluate.device", "cuda", "evaluate"),
])
def test_a_bad_value_fails_its_stage_in_one_line_and_loses_nothing(project, key, value, stage):
    if value == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: train.device = cuda is not a bad value here")
    with_param(project, key, value)
    failed = project.run("dvc", "repro", check=False)
    assert failed.returncode != 0
    said = failed.stdout + failed.stderr
    assert f"error: params.yaml: {key} = " in said and "Traceback" not in said, said[-3000:]
    assert f"failed to reproduce '{stage}'" in said, said[-3000:]
    assert_nothing_lost(project)


def test_a_corrupted_mirror_fails_the_download_and_loses_nothing(project, tmp_path):
    bad = tmp_path / "tinyshakespeare.txt"
    bad.write_text("not the corpus\n")
    env, project.env = project.env, {**project.env, "GPTMINI_DATA_MIRROR": str(bad)}
    try:
        failed = project.run("dvc", "repro", "-f", "-s", "download", check=False)
    finally:
        project.env = env
    assert failed.returncode != 0 and "sha256" in failed.stdout + failed.stderr
    assert_nothing_lost(project)


@pytest.mark.parametrize("stage", ["train", "evaluate", "export"])
def test_a_killed_stage_loses_nothing(project, stage):
    """SIGKILL, as the out-of-memory killer or a closed laptop would: nothing runs after
    it, so only what was on disk before it counts."""
    proc = subprocess.Popen([project.dvc, "repro", "-f", "-s", stage], cwd=project.root,
                            env=project.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # killed once the stage's own command runs (DVC has removed what it removes)
        while not any("stages/" in " ".join(p.cmdline()) for p in _children(proc.pid)):
            assert proc.poll() is None, f"dvc repro -s {stage} ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert_nothing_lost(project)


def _children(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
