"""A throwaway copy of the project (a real git + DVC repo) configured to run the real
pipeline in seconds on a tiny generated corpus."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from gptmini.core.hashing import weights_sha256
from gptmini.training.checkpoint import load_checkpoint, model_from_checkpoint
from helpers import REPO, processes_in, sha256_of

TINY_PARAMS = {
    "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "block_size": 32, "dropout": 0.0},
    # budget_chars: 40 steps of 8 x 32 characters
    "train": {"device": "cpu", "batch_size": 8, "data_order": "random",
              "budget_chars": 40 * 8 * 32, "warmup_steps": 5, "eval_interval": 10,
              "eval_iters": 2, "learning_rate": 3e-3},
    "evaluate": {"batch_size": 8, "device": "cpu"},
}


class PipelineProject:
    def __init__(self, root: Path, corpus: Path) -> None:
        self.root = root
        for name in ("stages", "src"):
            shutil.copytree(REPO / name, root / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
        (root / ".gitignore").write_text("/data/\n/mlflow.db\n/mlartifacts/\n")
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"]["sha256"] = sha256_of(corpus)
        for section, values in TINY_PARAMS.items():
            params[section].update(values)
        self.write_params(params)
        # No PYTHONPATH: dvc.yaml's commands make each stage import its workspace's src/.
        self.env = {**os.environ, "GPTMINI_DATA_MIRROR": str(corpus),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME",
                    "PYTHONPATH"):
            self.env.pop(var, None)
        self.run("git", "init", "-q", "-b", "main")
        self.run("dvc", "init", "-q")
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", "init")

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    @property
    def dvc(self) -> str:
        return str(Path(sys.executable).parent / "dvc")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        exe = {"dvc": self.dvc, "python": sys.executable}.get(cmd[0], cmd[0])
        proc = subprocess.run([exe, *cmd[1:]], cwd=self.root, env=self.env, text=True,
                              capture_output=True, timeout=900)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def run_detached(self, *cmd: str, log: Path) -> None:
        """Run a command that leaves a daemon behind (`dvc queue start`): its output goes to
        `log` and it shares no pipe with the test, so waiting on it cannot hang on the
        daemon; `reap()` ends what it left."""
        exe = {"dvc": self.dvc}.get(cmd[0], cmd[0])
        with open(log, "ab") as out:
            subprocess.run([exe, *cmd[1:]], cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                           stdout=out, stderr=subprocess.STDOUT, timeout=300,
                           start_new_session=True, check=True)

    def reap(self, timeout: float = 30) -> list[str]:
        """Kill every process still working in this project (an idle queue worker ignores
        SIGTERM) and wait for them; the command lines of those found."""
        import psutil

        victims, found = processes_in(self.root), []
        for proc in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                found.append(" ".join(proc.cmdline()))
                proc.kill()
        psutil.wait_procs(victims, timeout=timeout)
        return found


def make_project(tmp_path_factory, corpus: Path, name: str, **train) -> PipelineProject:
    """A project named `name` on `corpus` with these train params, committed."""
    project = PipelineProject(tmp_path_factory.mktemp(name), corpus)
    params = project.params
    params["train"].update(train)
    project.write_params(params)
    project.run("git", "commit", "-qam", "params", "--allow-empty")
    return project


def weights_of(project: PipelineProject) -> str:
    """The weights hash of the project's checkpoint."""
    return weights_sha256(model_from_checkpoint(load_checkpoint(project.root /
                                                                "data/model/ckpt.pt")))
