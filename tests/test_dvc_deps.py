"""dvc.yaml declares the code each stage runs: every stage depends on its script and on each
`gptmini` module the script imports, directly or through other modules (imports inside
functions included), and on nothing else under src/. So an edit to any library file reruns
exactly the stages that run it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO

SRC = REPO / "src"
PACKAGE = "gptmini"


def module_file(name: str) -> Path | None:
    """The file of module `name` under src/, or None when it is not a module (an attribute)."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _run_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the tree but those under `if TYPE_CHECKING:`, which never run."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def imported_modules(path: Path) -> set[str]:
    """The gptmini modules `path` imports anywhere it runs, with their parent packages (which
    Python runs first); imports for type checkers only are not followed."""
    found: set[str] = set()
    for node in _run_nodes(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1)
                         if module_file(".".join(parts[:i])))
    return found


def source_closure(script: Path) -> set[Path]:
    """Every src/ file that running `script` can execute, as paths relative to the repo."""
    seen: set[str] = set()
    todo = list(imported_modules(script))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)) - seen)
    return {module_file(name).relative_to(REPO) for name in seen}


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


@pytest.mark.parametrize("stage", list(stages()))
def test_every_source_file_a_stage_runs_is_a_dependency(stage):
    spec = stages()[stage]
    script = Path(spec["cmd"].split()[-1])
    deps = [str(d) for d in spec["deps"]]
    assert str(script) in deps
    closure = source_closure(REPO / script)
    undeclared = sorted(str(p) for p in closure if not covered(p, deps))
    assert undeclared == [], f"{stage} runs these files but does not depend on them"
    # ... and on nothing under src/ that it does not run (it would rerun for no reason): a
    # folder is a dependency only when the stage runs every file in it.
    declared = {p.relative_to(REPO) for d in deps if d.startswith("src/")
                for p in ([REPO / d] if (REPO / d).is_file() else (REPO / d).rglob("*.py"))}
    assert sorted(map(str, declared - closure)) == [], f"{stage} depends on source it never runs"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    # The train stage reaches the tracking module only through gptmini.training.stage, and
    # mlflow through a function-level import: the walk must see both kinds.
    closure = source_closure(REPO / "stages/train.py")
    assert Path("src/gptmini/tracking/runs.py") in closure
    assert Path("src/gptmini/core/env.py") in closure
    assert Path("src/gptmini/__init__.py") in closure
    assert Path("src/gptmini/cli/__init__.py") not in closure
    script = tmp_path / "lazy.py"
    script.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from gptmini.model import GPT\n"
                      "def f():\n    from gptmini.core.hashing import sha256_file\n")
    closure = source_closure(script)
    assert closure >= {Path("src/gptmini/core/hashing.py"), Path("src/gptmini/core/__init__.py")}
    assert Path("src/gptmini/model.py") not in closure  # a type checker's import never runs


def test_no_import_cycle_between_library_modules():
    graph = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        # Parent packages are not edges: importing a.b runs a/__init__ first, not a cycle.
        graph[name] = {m for m in imported_modules(path)
                       if m != name and not name.startswith(m + ".")
                       and not m.startswith(name + ".")}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_stage_scripts_are_thin():
    for script in (REPO / "stages").glob("*.py"):
        assert len(script.read_text().splitlines()) <= 40, script.name


def suggested_deps(stage_script: str) -> list[str]:
    """The smallest list of src/ paths that covers exactly the closure: a folder where the
    stage runs every file in it, else the files (for writing dvc.yaml by hand)."""
    closure = source_closure(REPO / stage_script)
    out: list[str] = []
    for folder in sorted({p.parent for p in closure}):
        files = {p.relative_to(REPO) for p in (REPO / folder).glob("*.py")}
        nested = any(q.parent != folder and folder in q.parents for q in closure)
        if files <= closure and not nested and folder != Path("src/gptmini"):
            out.append(str(folder))
        else:
            out += sorted(str(p) for p in closure if p.parent == folder)
    return out


def committed_dvc_lock() -> dict:
    """dvc.lock as the last commit holds it: `dvc repro` rewrites the workspace's copy with
    this machine's bits (the README's first command does), and that must not fail a test
    that means the committed one."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no committed dvc.lock to read")
    shown = subprocess.run(["git", "show", "HEAD:dvc.lock"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    if shown.returncode:
        pytest.skip(f"git show HEAD:dvc.lock: {shown.stderr.strip()}")
    return yaml.safe_load(shown.stdout)


def test_the_committed_dvc_lock_is_a_vendors_reference():
    """CI checks a machine's `dvc repro` against its CPU vendor's entry in
    tests/golden/pipeline.json (.ci/check_reference.py): the committed dvc.lock must be one
    vendor's whole entry, so a change of the numbers cannot update one and not the other,
    and every other entry may hold only outputs the committed dvc.lock has."""
    from references import outs_hashes, references

    committed = outs_hashes(committed_dvc_lock())
    entries = references("pipeline")
    assert committed in entries.values(), (
        "the committed dvc.lock's outputs are no vendor's whole entry in "
        f"tests/golden/pipeline.json:\n{committed}")
    for vendor, entry in entries.items():
        assert set(entry) <= set(committed), f"{vendor}'s entry names outputs dvc.lock lacks"


if __name__ == "__main__":  # print each stage's src/ dependencies, for dvc.yaml
    for name, spec in stages().items():
        print(f"{name}:", *suggested_deps(spec["cmd"].split()[-1]), sep="\n  - ")

