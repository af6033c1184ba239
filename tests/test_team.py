"""The team setup on real servers (docs/team.md), end to end: `gptmini team up` starts
PostgreSQL, moto's S3 server and `mlflow server --app-name basic-auth`; a tiny `dvc repro`
tracks to it as a trainer; `dvc push` sends the outputs to S3; a teammate's clone pulls the
model and generates; `mlflow models serve` serves the champion from the server. Then who
may do what (the auth matrix), that no secret leaks, and faults injected into the real
processes: S3 down during `dvc push`, PostgreSQL restarted mid-training, wrong
credentials. Skips, saying why, where PostgreSQL's server programs are not installed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
from test_faults import (
    SERVER_STEPS,
    assert_every_metric_once,
    saved_step,
    server_project,
    wait_for_step,
)
from test_registry import _start, _stop
from test_share import OUTPUTS, clone, generate, git

from gptmini.export.registry import CHAMPION, REGISTERED_MODEL
from gptmini.team import stack as team
from gptmini.team.cli import client_env
from helpers import make_corpus
from pipeline_project import PipelineProject

try:
    team.pg_bin()
    MISSING_PG = None
except team.TeamError as exc:
    MISSING_PG = str(exc)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MISSING_PG is not None, reason=str(MISSING_PG))]
TRAINER, READER = "trainer", "reader"
CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"


def gptmini(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptmini.cli", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def request(url: str, user: str | None = None, password: str | None = None,
            body: dict | None = None) -> int:
    """The HTTP status of a GET (or a POST of `body`), with basic auth when a user is given."""
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                    timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The stack, started and stopped by the project's command; the users trainer (who
    runs the pipeline) and reader, made by the admin."""
    base = tmp_path_factory.mktemp("team")
    state = base / "state"
    started = time.monotonic()
    up = gptmini("team", "up", "--state", str(state), cwd=base)
    assert up.returncode == 0, up.stderr[-3000:]
    stack = team.load(state)
    stack.base, stack.up_seconds, stack.up_output = base, time.monotonic() - started, up
    admin = stack.secrets()["admin_password"]
    from mlflow.server import get_app_client

    os.environ.update(client_env(stack, team.ADMIN, admin))
    auth = get_app_client("basic-auth", tracking_uri=stack.tracking_uri)
    stack.passwords = {team.ADMIN: admin}
    for user in (TRAINER, READER):
        stack.passwords[user] = f"{user}-{os.urandom(9).hex()}"
        auth.create_user(user, stack.passwords[user])
    stack.auth = auth
    print(f"\nteam up took {stack.up_seconds:.1f} s")
    yield stack
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        os.environ.pop(name, None)
    pids = (stack.s3_pid, stack.mlflow_pid)
    pgdata = Path(team.load(state).pgdata)
    down = gptmini("team", "down", "--state", str(state), cwd=base)
    assert down.returncode == 0, down.stderr
    assert not state.exists() and not pgdata.exists()
    for pid in pids:
        assert pid is None or not team._alive(pid)


def as_user(stack, user: str, env: dict) -> dict:
    return {**env, **client_env(stack, user, stack.passwords[user])}


@pytest.fixture(scope="module")
def pipeline(stack):
    """A colleague's tiny project after `dvc repro` as the trainer, committed and pushed to a
    bare git origin and (`dvc push`) to the stack's S3 bucket; the reader gets READ on the
    experiment and the registered model."""
    corpus = stack.base / "tinyshakespeare.txt"
    corpus.write_text(make_corpus(1500))
    project = PipelineProject(stack.base / "colleague", corpus)
    project.env = as_user(stack, TRAINER, project.env)
    connect = gptmini("team", "dvc-remote", "--state", stack.state, cwd=project.root,
                      env=project.env)
    assert connect.returncode == 0, connect.stderr
    started = time.monotonic()
    project.repro = project.run("dvc", "repro")
    project.repro_seconds = time.monotonic() - started
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "tiny run")
    origin = stack.base / "origin.git"
    git(stack.base, "init", "-q", "--bare", "-b", "main", str(origin))
    project.run("git", "remote", "add", "origin", str(origin))
    project.run("git", "push", "-q", "origin", "main")
    project.origin = origin
    import mlflow

    client = mlflow.MlflowClient(stack.tracking_uri)  # the admin grants the reader READ
    project.experiment_id = client.get_experiment_by_name("gptmini").experiment_id
    stack.auth.grant_user_permission(READER, "experiment", project.experiment_id, "READ")
    stack.auth.grant_user_permission(READER, "registered_model", REGISTERED_MODEL, "READ")
    return project


def s3_keys(stack, prefix: str) -> list[str]:
    import boto3

    values = stack.secrets()
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1",
                      aws_access_key_id=values["s3_access_key_id"],
                      aws_secret_access_key=values["s3_secret_access_key"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=team.BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def sql(stack, query: str) -> list[tuple]:
    """A query on the MLflow database, straight to PostgreSQL (not through MLflow)."""
    import psycopg2

    os.environ.setdefault("PGPASSFILE", str(stack.root / "pgpass"))
    with psycopg2.connect(host="127.0.0.1", port=stack.pg_port, user=team.DB_USER,
                          dbname=team.DB_NAME, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def test_the_pipeline_tracks_to_postgresql_and_s3_through_the_server(stack, pipeline):
    import mlflow

    print(f"\ndvc repro (tiny) against the stack: {pipeline.repro_seconds:.1f} s")
    assert "now @champion" in pipeline.repro.stdout
    client = mlflow.MlflowClient(stack.tracking_uri)  # the admin
    (run,) = client.search_runs([pipeline.experiment_id])
    assert run.info.status == "FINISHED" and run.info.user_id == TRAINER
    assert run.data.params["model.n_layer"] == "2"
    summary = json.loads((pipeline.root / "metrics/train.json").read_text())
    assert run.data.metrics["train.val_loss"] == summary["val_loss"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(40))
    # The artifacts are in the bucket, under the server's destination (proxied: the client
    # has no S3 keys), the MLflow Model among them.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    keys = s3_keys(stack, "mlflow/")
    assert any(k.endswith("/artifacts/MLmodel") for k in keys), keys[:20]
    assert any(k.endswith("model.ts") for k in keys), keys[:20]
    # The registry is in PostgreSQL: version 1, and the champion alias on it.
    assert sql(stack, "SELECT name, version FROM model_versions") == [(REGISTERED_MODEL, 1)]
    assert sql(stack, "SELECT name, alias, version FROM registered_model_aliases") == [
        (REGISTERED_MODEL, CHAMPION, 1)]
    assert sql(stack, f"SELECT count(*) FROM runs WHERE run_uuid = '{run.info.run_id}'") == [
        (1,)]


def test_dvc_push_to_s3_and_a_teammate_pulls_and_generates_without_training(stack, pipeline):
    pushed = pipeline.run("dvc", "push")
    assert re.search(r"\d+ files? pushed", pipeline.run("dvc", "push").stdout + pushed.stdout)
    keys = s3_keys(stack, "dvc/files/md5/")
    assert len(keys) >= len(OUTPUTS), keys
    teammate = clone(pipeline, pipeline.origin, stack.base / "teammate")
    # a fresh clone has no remote of its own: the stack's is one command away
    assert teammate.run("dvc", "remote", "list").stdout.strip() == ""
    connect = gptmini("team", "dvc-remote", "--state", stack.state, cwd=teammate.root,
                      env=teammate.env)
    assert connect.returncode == 0, connect.stderr
    teammate.run("dvc", "pull")
    for path in OUTPUTS:
        assert (teammate.root / path).read_bytes() == (pipeline.root / path).read_bytes(), path
    assert "up to date" in teammate.run("dvc", "status").stdout
    assert re.findall(r"Running stage '(\w+)'", teammate.run("dvc", "repro").stdout) == []
    text = generate(teammate)
    assert len(text) > len("ROMEO:") and text == generate(pipeline)


def test_registrys_serve_reads_the_champion_from_the_server(stack, pipeline):
    port = team.free_port()
    root = stack.base / "serve"
    root.mkdir()
    env = as_user(stack, READER, {k: v for k, v in os.environ.items()
                                  if not k.startswith("MLFLOW_TRACKING_")})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # _start passes os.environ on
    try:
        process = _start([str(Path(sys.executable).parent / "mlflow"), "models", "serve",
                          "-m", CHAMPION_URI, "--env-manager", "local", "--host", "127.0.0.1",
                          "--port", str(port), "--workers", "1"], root / "serve.log", root,
                         f"http://127.0.0.1:{port}/ping", timeout=300)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    try:
        body = {"dataframe_split": {"columns": ["prompt"], "data": [["ROMEO:"]]},
                "params": {"max_new_tokens": 30, "seed": 7, "temperature": 0.8}}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as response:
            answer = json.loads(response.read())
    finally:
        _stop(process)
    # the same model and sampling as the CLI on the pipeline's export
    local = generate(pipeline, "--no-echo", "-t", "0.8")
    assert answer == {"predictions": [local.removesuffix("\n")]}  # the CLI ends a line


# -- who may do what ------------------------------------------------------------------------

def test_the_auth_matrix(stack, pipeline):
    """No credentials: refused. A wrong password and MLflow's default admin password:
    refused. The reader reads the experiment and the model but can neither log to the
    experiment nor move @champion; the trainer (the experiment's creator) can."""
    import mlflow
    from mlflow.exceptions import MlflowException

    api = f"{stack.tracking_uri}/api/2.0/mlflow"
    search = f"{api}/experiments/get?experiment_id={pipeline.experiment_id}"
    assert request(search) == 401
    assert request(search, team.ADMIN, "password1234") == 401  # MLflow's default
    assert request(search, TRAINER, "wrong") == 401
    assert stack.passwords[team.ADMIN] != "password1234"
    assert request(search, READER, stack.passwords[READER]) == 200
    assert request(search, team.ADMIN, stack.passwords[team.ADMIN]) == 200
    create = {"experiment_id": pipeline.experiment_id}
    assert request(f"{api}/runs/create", body=create) == 401
    assert request(f"{api}/runs/create", READER, stack.passwords[READER], create) == 403
    alias = {"name": REGISTERED_MODEL, "alias": CHAMPION, "version": "1"}
    assert request(f"{api}/registered-models/alias", READER, stack.passwords[READER],
                   alias) == 403
    # the reader cannot touch the S3 bucket behind the server either: it has no keys, and
    # the server's artifact proxy asks for the same login
    assert request(f"{stack.tracking_uri}/api/2.0/mlflow-artifacts/artifacts") == 401

    os.environ.update(client_env(stack, READER, stack.passwords[READER]))
    try:
        client = mlflow.MlflowClient(stack.tracking_uri)
        assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version == "1"
        with pytest.raises(MlflowException, match="Permission denied"):
            client.create_run(pipeline.experiment_id)
        with pytest.raises(MlflowException, match="Permission denied"):
            client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, "1")
    finally:
        os.environ.update(client_env(stack, team.ADMIN, stack.passwords[team.ADMIN]))
    assert request(f"{api}/registered-models/alias", TRAINER, stack.passwords[TRAINER],
                   alias) == 200  # the trainer owns the model it registered


def test_no_secret_in_git_mlflow_or_the_logs(stack, pipeline):
    values = [*stack.secrets().values(), stack.passwords[TRAINER], stack.passwords[READER]]
    assert all(len(v) >= 16 for v in values)
    # git: every commit of the colleague's repository, and what it tracks now
    history = pipeline.run("git", "log", "-p", "--all").stdout
    tracked = pipeline.run("git", "ls-files").stdout.split()
    assert ".dvc/config.local" not in tracked and (pipeline.root / ".dvc/config.local").exists()
    # MLflow: the run's params and tags (and the registered version's tags)
    import mlflow

    client = mlflow.MlflowClient(stack.tracking_uri)
    (run,) = client.search_runs([pipeline.experiment_id])
    recorded = json.dumps([run.data.params, run.data.tags,
                           client.get_model_version(REGISTERED_MODEL, "1").tags])
    # logs: the stages' output, the `team up` output, every server's log
    logs = [pipeline.repro.stdout, pipeline.repro.stderr, stack.up_output.stdout,
            stack.up_output.stderr]
    logs += [p.read_text(errors="replace") for p in stack.root.glob("*.log")]
    logs += [(Path(stack.pgdata).parent / "pg.log").read_text(errors="replace")]
    key_id = stack.secrets()["s3_access_key_id"]
    for value in values:
        assert value not in history
        assert value not in recorded
        if value == key_id:  # an identifier, in every signed URL an S3 endpoint logs
            continue
        for text in logs:
            assert value not in text
    # and this repository commits no value to a secret's name (code reads them, docs elide)
    grep = subprocess.run(["git", "grep", "-n", "-i", "-E",
                           r"(secret_access_key|_password|access_key_id) *[=:] *['\"]?"
                           r"[A-Za-z0-9/+_-]{16,}"], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=60)
    assert grep.stdout == "", grep.stdout


# -- faults ---------------------------------------------------------------------------------

def one_error_line(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("ERROR", "error"))]


def test_wrong_credentials_are_one_line_and_a_non_zero_exit(stack, pipeline, tmp_path):
    """A wrong MLflow password for the pipeline and for the CLI: one line, no traceback."""
    env = {**pipeline.env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    cli = gptmini("generate", "ROMEO:", "--model", CHAMPION_URI, cwd=pipeline.root, env=env)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    print(f"\nCLI with a wrong password: {cli.stderr.strip()}")
    proc = subprocess.run([pipeline.dvc, "repro", "-f", "--single-item", "evaluate"],
                          cwd=pipeline.root, env=env, capture_output=True, text=True,
                          timeout=600)
    print(f"dvc repro with a wrong password: {proc.stderr.strip()[-600:]}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    stage_errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(stage_errors) == 1, proc.stderr[-2000:]
    assert "refused this login (UNAUTHENTICATED)" in stage_errors[0], stage_errors


def test_s3_down_during_dvc_push_then_the_retry_succeeds(stack, pipeline):
    """The S3 endpoint stops before `dvc push` (moto keeps objects in memory, so its restart
    is an empty bucket, as after a lost volume): one clear error line and a non-zero exit,
    the local cache intact, and the retry after the restart pushes every object."""
    before = {p: (pipeline.root / p).read_bytes() for p in OUTPUTS}
    team.stop_s3(stack)
    started = time.monotonic()
    proc = pipeline.run("dvc", "push", check=False)
    failed_in = time.monotonic() - started
    errors = one_error_line(proc.stdout + proc.stderr)
    print(f"\ndvc push with S3 down: exit {proc.returncode} in {failed_in:.1f} s: {errors}")
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    team.start_s3(stack)
    assert "up to date" in pipeline.run("dvc", "status").stdout  # the cache is intact
    retry = pipeline.run("dvc", "push")
    print(f"retry: {retry.stdout.strip().splitlines()[-1:]}")
    assert "Everything is up to date" in pipeline.run("dvc", "push").stdout
    assert len(s3_keys(stack, "dvc/files/md5/")) >= len(OUTPUTS)
    assert "Cache and remote 'team' are in sync" in pipeline.run("dvc", "status", "-c").stdout
    assert {p: (pipeline.root / p).read_bytes() for p in OUTPUTS} == before


class _StackServer:
    """What test_faults' checks of a server need: its URL."""

    def __init__(self, url: str) -> None:
        self.url = url


def test_postgresql_restarted_mid_training_loses_no_metric(stack, tmp_path, monkeypatch):
    """PostgreSQL stopped (fast shutdown) after the first save and started again three
    saves later: the MLflow server answers errors meanwhile, the train stage keeps its
    metrics in the outbox, delivers them when the database is back, and the run ends
    FINISHED with every step's metrics exactly once."""
    server = _StackServer(stack.tracking_uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "pg-restart")
    project = server_project(tmp_path, server)
    project.env = as_user(stack, TRAINER, {**project.env, "MLFLOW_EXPERIMENT_NAME": "pg-restart"})
    proc = subprocess.Popen([project.dvc, "repro", "train"], cwd=project.root, env=project.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(project, proc, 10)
        team.stop_postgres(stack)
        stopped_at, stopped = saved_step(project), time.monotonic()
        wait_for_step(project, proc, stopped_at + 30)
        down_for = time.monotonic() - stopped
        team.start_postgres(stack)
        back_at = saved_step(project)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    said = [line for line in err.splitlines() if line.startswith("MLflow")]
    print(f"\nPostgreSQL stopped at step {stopped_at}, down {down_for:.1f} s, back at step "
          f"{back_at}; the stage said: {said}")
    assert proc.returncode == 0, err[-3000:]
    assert err.count("training goes on") == 1
    if "the tracking store is back" not in err:  # training ended before it was back
        project.run("dvc", "repro")
    assert not (project.root / "data/volatile/mlflow_outbox.json").exists()
    assert_every_metric_once(server, project, experiment="pg-restart")
    assert SERVER_STEPS == 200
