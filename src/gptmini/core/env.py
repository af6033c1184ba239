"""Environment variables that name paths, made absolute once at each entry point.

``export TIKTOKEN_CACHE_DIR=../shared/tiktoken-cache`` means "relative to where I typed the
command". Child processes often run elsewhere (a DVC temporary workspace, a test's
temporary directory, a torchrun worker), where that relative path means nothing, so every
entry point (the stage runner, the CLI, the test session) calls `resolve_path_variables`
first: each relative path is made absolute against the directory the command started in
and written back to ``os.environ``, which every child inherits.

A stage that DVC runs in a temporary workspace (``dvc exp run --temp`` or a queued
experiment, under ``<checkout>/.dvc/tmp/exps/``) starts in that workspace, not where the
user typed the command; a relative path that exists only against the checkout is resolved
there.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

# Variables whose values are paths (a file:// URL is a path too).
PATH_VARIABLES = ("GPTMINI_DATA_MIRROR", "GPTMINI_EXPORT_DIR", "TIKTOKEN_CACHE_DIR",
                  "DATA_GYM_CACHE_DIR")
_TEMP_WORKSPACE = (".dvc", "tmp", "exps")


def checkout_of(directory: Path) -> Path | None:
    """The checkout a DVC temporary workspace was made from, or None outside one."""
    parts = directory.resolve().parts
    for i in range(len(parts) - len(_TEMP_WORKSPACE)):
        if parts[i:i + len(_TEMP_WORKSPACE)] == _TEMP_WORKSPACE:
            return Path(*parts[:i])
    return None


def absolute(value: str, cwd: Path) -> str:
    """`value` as an absolute path (or file:// URL of one), resolved against `cwd`."""
    if value.startswith("file://"):
        rest = value.removeprefix("file://")
        return value if rest.startswith("/") else "file://" + absolute(rest, cwd)
    path = Path(value).expanduser()
    if path.is_absolute():
        return value
    here = cwd / path
    checkout = checkout_of(cwd)
    if not here.exists() and checkout is not None and (checkout / path).exists():
        here = checkout / path
    return os.path.normpath(here)


def resolve_path_variables(environ: MutableMapping[str, str] | None = None,
                           cwd: str | Path | None = None,
                           names: tuple[str, ...] = PATH_VARIABLES) -> dict[str, str]:
    """Make each set, relative path variable absolute in `environ` (default os.environ);
    return the ones changed."""
    environ = os.environ if environ is None else environ
    cwd = Path(cwd or Path.cwd()).resolve()
    changed = {}
    for name in names:
        value = environ.get(name)
        if value:
            resolved = absolute(value, cwd)
            if resolved != value:
                environ[name] = changed[name] = resolved
    return changed


def project_root(start: str | Path | None = None) -> Path:
    """The nearest folder holding dvc.yaml; for a DVC temp workspace under
    ``<root>/.dvc/tmp/exps/``, the checkout it was made from."""
    here = Path(start or Path.cwd()).resolve()
    root = next((p for p in [here, *here.parents] if (p / "dvc.yaml").is_file()), here)
    return checkout_of(root) or root
