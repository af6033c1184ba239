"""`gptmini team up|down|env|dvc-remote`: the local team stack (gptmini.team.stack) from the
command line. A `gptmini` subcommand rather than a script: it is installed with the
package, and its failures are the CLI's one line and exit status 2."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from gptmini.team import stack as team

DEFAULT_STATE = ".team"
DVC_REMOTE = "team"


def client_env(stack: team.Stack, username: str, password: str) -> dict[str, str]:
    """What a client of the stack's MLflow server needs (no S3 keys: artifacts go through
    the server)."""
    return {"MLFLOW_TRACKING_URI": stack.tracking_uri, "MLFLOW_TRACKING_USERNAME": username,
            "MLFLOW_TRACKING_PASSWORD": password}


def dvc_remote_commands(stack: team.Stack, remote: str = DVC_REMOTE) -> list[list[str]]:
    """`dvc remote` commands that make the stack's bucket this checkout's default remote,
    all in the git-ignored .dvc/config.local (the endpoint's port is this machine's)."""
    values = stack.secrets()
    # `--` ends the options: a value may begin with a dash (a url-safe secret does 1 time in 64)
    return [["dvc", "remote", "add", "--local", "-d", "-f", "--", remote, stack.dvc_url],
            *(["dvc", "remote", "modify", "--local", "--", remote, option, value]
              for option, value in (("endpointurl", stack.s3_url),
                                    ("access_key_id", values["s3_access_key_id"]),
                                    ("secret_access_key", values["s3_secret_access_key"])))]


def configure_dvc(stack: team.Stack, repo: Path, remote: str = DVC_REMOTE) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in dvc_remote_commands(stack, remote):
        proc = subprocess.run([dvc, *cmd[1:]], cwd=repo, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            reason = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
            raise team.TeamError(f"`dvc remote` in {repo} failed: {reason[0][:300]}")


def cmd_up(args: argparse.Namespace) -> int:
    stack = team.up(args.state)
    print(f"team stack up in {args.state}: PostgreSQL 127.0.0.1:{stack.pg_port} (database "
          f"{team.DB_NAME}), S3 {stack.s3_url} (bucket {team.BUCKET}), MLflow "
          f"{stack.tracking_uri} (basic-auth, user {team.ADMIN})")
    if args.dvc and (Path.cwd() / ".dvc").is_dir():
        configure_dvc(stack, Path.cwd())
        print(f"DVC remote '{DVC_REMOTE}' ({stack.dvc_url}) is this checkout's default, in "
              ".dvc/config.local")
    print(f'next: eval "$(gptmini team env --state {args.state})"; '
          f"stop it with `gptmini team down --state {args.state}`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    team.down(args.state)
    print(f"team stack in {args.state} stopped and deleted")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """`export` lines for the shell (`eval "$(gptmini team env)"`): the admin's login."""
    stack = team.load(args.state)
    env = client_env(stack, team.ADMIN, stack.secrets()["admin_password"])
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def cmd_dvc_remote(args: argparse.Namespace) -> int:
    stack = team.load(args.state)
    configure_dvc(stack, Path.cwd())
    print(f"DVC remote '{DVC_REMOTE}' ({stack.dvc_url} on {stack.s3_url}) is this checkout's "
          "default, in .dvc/config.local")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("team", help="start or stop the local team stack (docs/team.md)",
                            description="PostgreSQL, an S3 server and MLflow with logins, "
                            "on 127.0.0.1: the team setup on one machine (docs/team.md).")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, func, text in (
            ("up", cmd_up, "start the stack (and make it this checkout's DVC remote)"),
            ("down", cmd_down, "stop the stack and delete its state"),
            ("env", cmd_env, "print the admin's MLflow variables as shell exports"),
            ("dvc-remote", cmd_dvc_remote, "make the stack's bucket this checkout's DVC "
                                           "remote (in .dvc/config.local)")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--state", default=DEFAULT_STATE, metavar="DIR",
                            help=f"the stack's state directory (default {DEFAULT_STATE})")
        if name == "up":
            action.add_argument("--no-dvc", dest="dvc", action="store_false",
                                help="leave this checkout's DVC remotes alone")
        action.set_defaults(func=func)
