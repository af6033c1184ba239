"""A local team stack made of the real servers: PostgreSQL (MLflow's backend store), moto's
S3 server (the artifact store and the DVC remote; a stand-in for AWS S3 or MinIO) and
`mlflow server --app-name basic-auth` with proxied artifacts, all on 127.0.0.1 and free ports.

Everything lives in one state directory (default `.team/` in the project, git-ignored):
`stack.json` (ports, process ids, URLs: no secrets), `secrets.json` (mode 0600: the
database password, the S3 keys, the MLflow admin password, all generated), the servers'
logs and the basic-auth database. PostgreSQL refuses to run as root, so as root its data
directory is a temporary directory owned by the `postgres` user and its commands run as
that user (`runuser`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

BUCKET = "gptmini"
DB_NAME = "mlflow"
DB_USER = "gptmini"
ADMIN = "admin"
PG_USER = "postgres"  # the unprivileged account PostgreSQL runs as when we are root
PG_BIN_ENV = "GPTMINI_PG_BIN"
START_TIMEOUT = 300  # seconds: mlflow server's first start on a busy 2-core machine is slow


class TeamError(RuntimeError):
    """A failure of the team stack, said in one line (by the CLI, like its own errors)."""


@dataclass
class Stack:
    """Where the stack's servers listen and what runs them (stack.json)."""

    state: str
    pgdata: str
    pg_port: int
    s3_port: int
    mlflow_port: int
    s3_pid: int | None = None
    mlflow_pid: int | None = None

    @property
    def root(self) -> Path:
        return Path(self.state)

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def backend_store_uri(self) -> str:
        # no password in the URI (it would show in `ps` and in logs): psycopg2 reads PGPASSFILE
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.pg_port}/{DB_NAME}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{BUCKET}/mlflow"

    @property
    def dvc_url(self) -> str:
        return f"s3://{BUCKET}/dvc"

    def secrets(self) -> dict[str, str]:
        return json.loads((self.root / "secrets.json").read_text())

    def save(self) -> None:
        (self.root / "stack.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def load(state: str | Path) -> Stack:
    try:
        return Stack(**json.loads((Path(state) / "stack.json").read_text()))
    except FileNotFoundError:
        raise TeamError(f"no team stack in {state} (start one with `gptmini team up`)") from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin() -> Path:
    """The directory of PostgreSQL's server programs: $GPTMINI_PG_BIN, else Debian's newest
    /usr/lib/postgresql/<version>/bin, else initdb's directory on PATH."""
    if os.environ.get(PG_BIN_ENV):
        if not (Path(os.environ[PG_BIN_ENV]) / "initdb").is_file():
            raise TeamError(f"{PG_BIN_ENV}={os.environ[PG_BIN_ENV]} has no initdb: it must name "
                            "the directory of PostgreSQL's server programs")
        return Path(os.environ[PG_BIN_ENV])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                    else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise TeamError("PostgreSQL's server programs (initdb, pg_ctl) are not installed: "
                    "`apt-get install postgresql`, or set GPTMINI_PG_BIN to their directory")


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None,
         timeout: float = 120) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TeamError(f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        raise TeamError(f"{what} failed ({proc.returncode}): {lines[-1][:300]}")
    return proc.stdout


def _make_secrets(root: Path) -> None:
    path = root / "secrets.json"
    values = {"db_password": secrets.token_urlsafe(24),
              "s3_access_key_id": "GM" + secrets.token_hex(9).upper(),
              "s3_secret_access_key": secrets.token_urlsafe(30),
              "admin_password": secrets.token_urlsafe(24),
              "flask_secret_key": secrets.token_hex(32)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(values, out, indent=2)
    pgpass = root / "pgpass"
    fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:  # libpq ignores a pgpass that others can read
        out.write(f"127.0.0.1:*:*:{DB_USER}:{values['db_password']}\n")


# -- PostgreSQL -----------------------------------------------------------------------------

def _pgdata_home() -> Path:
    """A directory PostgreSQL's account owns (as root: a temporary one, since pytest's and
    most users' directories are not traversable by `postgres`)."""
    home = Path(tempfile.mkdtemp(prefix="gptmini-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, PG_USER, PG_USER)
    return home


def init_postgres(stack: Stack) -> None:
    """initdb with a password-protected superuser `gptmini`, then the `mlflow` database."""
    home = Path(stack.pgdata).parent
    pwfile = home / "pwfile"
    pwfile.write_text(stack.secrets()["db_password"] + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, PG_USER, PG_USER)
    try:
        _run(_as_pg_user([str(pg_bin() / "initdb"), "-D", stack.pgdata, "-U", DB_USER,
                          "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                          "--locale=C"]), "initdb")
    finally:
        pwfile.unlink()
    start_postgres(stack)
    _run([str(pg_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(stack.pg_port),
          "-U", DB_USER, DB_NAME], "createdb", env=_pg_env(stack))


def _pg_env(stack: Stack) -> dict[str, str]:
    return {**os.environ, "PGPASSFILE": str(stack.root / "pgpass")}


def start_postgres(stack: Stack) -> None:
    home = Path(stack.pgdata).parent
    options = (f"-c listen_addresses=127.0.0.1 -p {stack.pg_port} "
               f"-c unix_socket_directories={home}")
    _run(_as_pg_user([str(pg_bin() / "pg_ctl"), "-D", stack.pgdata, "-l", str(home / "pg.log"),
                      "-o", options, "-w", "-t", "120", "start"]), "PostgreSQL start",
         timeout=150)


def stop_postgres(stack: Stack) -> None:
    """A fast shutdown (open connections are cut, as on a server restart)."""
    if (Path(stack.pgdata) / "postmaster.pid").exists():
        _run(_as_pg_user([str(pg_bin() / "pg_ctl"), "-D", stack.pgdata, "-m", "fast", "-w",
                          "-t", "120", "stop"]), "PostgreSQL stop", timeout=150)


# -- S3 (moto's server) ---------------------------------------------------------------------

def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """A server in its own session (so that `down` stops it and its workers together)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=log.parent)
    return proc.pid


def _wait_http(url: str, pid: int, what: str, log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise TeamError(f"{what} exited while starting: {tail[0][:300]} (log: {log})")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers (e.g. 401, 404): it is up
        except OSError:
            time.sleep(0.25)
    raise TeamError(f"{what} did not answer {url} within {timeout:.0f} s (log: {log})")


def _alive(pid: int) -> bool:
    """Running, not a zombie: a server that another `gptmini team` process started, once
    killed, stays a zombie until its parent reaps it, and a zombie still answers kill 0."""
    import psutil

    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # our child: reap it
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_s3(stack: Stack) -> None:
    """moto's S3 server, then the bucket. moto keeps objects in memory: a restart starts
    empty (a real S3 endpoint keeps them), so the bucket is made again."""
    log = stack.root / "s3.log"
    stack.s3_pid = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                           str(stack.s3_port)], log)
    stack.save()
    _wait_http(f"{stack.s3_url}/moto-api/", stack.s3_pid, "moto's S3 server", log)
    import boto3

    values = stack.secrets()
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, region_name="us-east-1",
                      aws_access_key_id=values["s3_access_key_id"],
                      aws_secret_access_key=values["s3_secret_access_key"])
    s3.create_bucket(Bucket=BUCKET)


def stop_s3(stack: Stack) -> None:
    _stop(stack.s3_pid)
    stack.s3_pid = None
    stack.save()


def _stop(pid: int | None, timeout: float = 30) -> None:
    """SIGTERM to the server's process group, SIGKILL when it has not gone in `timeout`."""
    if pid is None or not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- MLflow ---------------------------------------------------------------------------------

def _write_auth_config(stack: Stack) -> Path:
    """basic-auth's config: users see only what they are granted, the users' database in
    the state directory. The admin's password is not in it: the server's environment
    (MLFLOW_AUTH_ADMIN_PASSWORD) gives it, generated, when the admin is first created."""
    path = stack.root / "basic_auth.ini"
    path.write_text("[mlflow]\n"
                    "default_permission = NO_PERMISSIONS\n"
                    f"database_uri = sqlite:///{stack.root / 'basic_auth.db'}\n"
                    f"admin_username = {ADMIN}\n"
                    "authorization_function = "
                    "mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def server_env(stack: Stack) -> dict[str, str]:
    """The server's environment: only it holds the S3 keys and the database password."""
    values = stack.secrets()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_", "AWS_"))}
    return {**env, **_pg_env(stack), "AWS_ACCESS_KEY_ID": values["s3_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": values["s3_secret_access_key"],
            "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": stack.s3_url,
            "MLFLOW_AUTH_CONFIG_PATH": str(stack.root / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": values["admin_password"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": values["flask_secret_key"],
            # its job runner (seven huey workers, for GenAI jobs this project has none of)
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def _mlflow() -> str:
    return str(Path(sys.executable).parent / "mlflow")


def upgrade_db(stack: Stack) -> None:
    _run([_mlflow(), "db", "upgrade", stack.backend_store_uri], "mlflow db upgrade",
         env=server_env(stack), timeout=600)


def start_mlflow(stack: Stack) -> None:
    log = stack.root / "mlflow.log"
    stack.mlflow_pid = _spawn(
        [_mlflow(), "server", "--backend-store-uri", stack.backend_store_uri,
         "--artifacts-destination", stack.artifacts_destination, "--app-name", "basic-auth",
         "--host", "127.0.0.1", "--port", str(stack.mlflow_port), "--workers", "1"],
        log, env=server_env(stack))
    stack.save()
    _wait_http(f"{stack.tracking_uri}/health", stack.mlflow_pid, "mlflow server", log)


def stop_mlflow(stack: Stack) -> None:
    _stop(stack.mlflow_pid)
    stack.mlflow_pid = None
    stack.save()


# -- the whole stack ------------------------------------------------------------------------

def up(state: str | Path) -> Stack:
    """Start PostgreSQL, the S3 server and the MLflow server; on a failure, stop what
    started and raise."""
    root = Path(state).resolve()
    if (root / "stack.json").exists():
        raise TeamError(f"a team stack is already in {root} (`gptmini team down` first)")
    pg_bin()  # fail before anything starts when PostgreSQL is missing
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    stack = Stack(str(root), str(_pgdata_home() / "data"), free_port(), free_port(),
                  free_port())
    _make_secrets(root)
    stack.save()
    try:
        init_postgres(stack)
        start_s3(stack)
        upgrade_db(stack)
        _write_auth_config(stack)
        start_mlflow(stack)
    except BaseException:
        down(root)
        raise
    return stack


def down(state: str | Path) -> None:
    """Stop every server of the stack and delete its state (the database, the objects,
    the secrets): the stack is a throwaway."""
    stack = load(state)
    stop_mlflow(stack)
    stop_s3(stack)
    with contextlib.suppress(TeamError):
        stop_postgres(stack)
    shutil.rmtree(Path(stack.pgdata).parent, ignore_errors=True)
    shutil.rmtree(stack.root, ignore_errors=True)
