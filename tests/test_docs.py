"""The docs cannot go stale: what README.md and docs/*.md show is checked against the code.

- every fenced ``python`` block runs, in a fresh process whose working directory holds a
  tiny export at ``data/export`` (the path the docs use), or is marked as an illustration
  by an ``<!-- illustration: REASON -->`` comment on the line before it;
- every ``gptmini`` command line, in a shell block or in inline code, parses with the CLI's
  own argparse parser (nothing is run);
- every number in the README's results table equals the metric file its row cites;
- every relative link (and its #anchor), every backticked repository path and every
  ``tests/FILE.py::test_name`` the docs cite exists;
- no phrase about the docs' own writing appears.

The code under test is this checkout's ``src/`` (run in subprocesses with PYTHONPATH), not
whichever ``gptmini`` an editable install points at.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PROSE = [*DOCS, REPO / "data" / "README.md"]  # also checked for links, paths and phrases

ILLUSTRATION = re.compile(r"<!--\s*illustration:\s*(\S.*?)\s*-->")
FORBIDDEN = (
    "this work", "this session", "that session", "previous session", "when this was written",
    "at the time of writing", "as of writing", "was lent", "none was lent", "last readme",
    "development machine", "this change", "earlier, faster one", "this readme",
)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# -- parsing the Markdown ---------------------------------------------------------------------

@dataclass(frozen=True)
class Block:
    path: Path
    line: int          # 1-based line of the opening fence
    lang: str
    text: str
    illustration: str | None  # the stated reason, when marked as an illustration

    @property
    def id(self) -> str:
        return f"{rel(self.path)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = re.match(r"^\s*```(\S*)", lines[i])
        if not opening:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            body.append(lines[i])
            i += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marked = ILLUSTRATION.search(lines[before]) if before >= 0 else None
        blocks.append(Block(path, start + 1, opening.group(1).lower(), "\n".join(body) + "\n",
                            marked.group(1) if marked else None))
        i += 1
    return blocks


def prose(path: Path) -> str:
    """The text outside fenced blocks, line for line (fenced lines blanked)."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def inline_code(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


PYTHON_BLOCKS = [b for path in DOCS for b in fenced_blocks(path) if b.lang in ("python", "py")]
RUNNABLE = [b for b in PYTHON_BLOCKS if b.illustration is None]


# -- Python blocks ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docs_workdir(tmp_path_factory) -> Path:
    """A directory whose data/export is a tiny export, as data/export is after dvc repro."""
    from tiny_export import build_tiny_export

    root = tmp_path_factory.mktemp("docs")
    build_tiny_export(root / "data")  # -> root/data/export
    return root


def test_the_docs_have_python_blocks_that_run():
    assert RUNNABLE, "no runnable python block found: the test below would check nothing"
    assert any(b.path.name == "README.md" for b in RUNNABLE)


def test_every_illustration_states_its_reason():
    for block in PYTHON_BLOCKS:
        if block.illustration is not None:
            assert len(block.illustration.split()) >= 3, \
                f"{block.id}: say why the block cannot run, in a few words"


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_python_block_runs(block, docs_workdir):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("GPTMINI_EXPORT_DIR", None)
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=docs_workdir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"{block.id}: the python block failed (mark it `<!-- illustration: why -->` if it "
        f"cannot run against a tiny export):\n{proc.stderr[-3000:]}")


# -- gptmini command lines ------------------------------------------------------------------

SHELL_LANGS = ("bash", "sh", "shell", "console")
CLI_PREFIXES = (["gptmini"], ["python", "-m", "gptmini.cli"],
                [".venv/bin/gptmini"])
OPERATORS = {"&&", "||", ";", "|", "&"}
REDIRECTS = {"<", ">", ">>", "2>", "<<"}


def shell_lines(text: str) -> list[str]:
    """Lines of a shell block, continuation lines joined, a `$ ` prompt removed."""
    out, pending = [], ""
    for line in text.splitlines():
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        out.append(re.sub(r"^\s*\$\s+", "", line))
    return out


def gptmini_argvs(line: str) -> list[list[str]]:
    """The argument lists of each gptmini command in a shell line (comments, pipes,
    redirections and other commands left out)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError as exc:  # unbalanced quotes
        raise AssertionError(f"cannot split {line!r}: {exc}") from None
    commands, current = [], []
    for token in tokens:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    argvs = []
    for command in commands:
        words, skip = [], False
        for token in command:
            if skip:
                skip = False
            elif token in REDIRECTS:
                skip = True
            else:
                words.append(token)
        for prefix in CLI_PREFIXES:
            if words[:len(prefix)] == prefix:
                argvs.append(words[len(prefix):])
    return argvs


def cli_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for block in fenced_blocks(path):
            if block.lang in SHELL_LANGS:
                for line in shell_lines(block.text):
                    if "gptmini" in line:
                        found += [(f"{block.id}: {line.strip()}", argv)
                                  for argv in gptmini_argvs(line)]
        for number, line in enumerate(prose(path).splitlines(), 1):
            for code in inline_code(line):
                if code.startswith(("gptmini ", "python -m gptmini.cli ")):
                    found += [(f"{rel(path)}:{number}: {code}", argv)
                              for argv in gptmini_argvs(code)]
    return found


PARSE = r"""
import contextlib, io, json, sys
from gptmini.cli import build_parser
failures = []
for where, argv in json.load(sys.stdin):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            failures.append(f"{where}\n    {err.getvalue().strip().splitlines()[-1]}")
print(json.dumps(failures))
"""


def test_every_gptmini_command_in_the_docs_parses():
    commands = cli_commands()
    subcommands = {argv[0] for _, argv in commands if argv}
    assert {"generate", "evaluate", "runs", "info", "app", "mlflow-sync"} <= subcommands, \
        subcommands
    proc = subprocess.run([sys.executable, "-c", PARSE], input=json.dumps(commands),
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    failures = json.loads(proc.stdout)
    assert not failures, "gptmini commands in the docs that do not parse:\n" + "\n".join(
        failures)


# -- the README's results table ---------------------------------------------------------------

# column header -> the key in the metric files the row cites
RESULT_COLUMNS = {"steps": "steps", "nats/char": "nats_per_char", "BPC": "bpc",
                  "perplexity": "perplexity", "accuracy": "accuracy"}
TEXT_COLUMNS = {"run", "CPU", "metric files"}


def section(path: Path, title: str) -> str:
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{rel(path)} has no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[dict[str, str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    assert len(lines) >= 3, "no table with a row"

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip("|").split("|")]

    header = cells(lines[0])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[2:]]


def number_matches(cell: str, value: float) -> bool:
    """`cell` as the table shows it ('**1.5011**', '55.16%', '1,375') is `value` rounded to
    the digits shown."""
    text = cell.replace("*", "").replace(",", "").strip()
    if text.endswith("%"):
        text, value = text[:-1], value * 100
    assert re.fullmatch(r"-?\d+(\.\d+)?", text), f"not a number: {cell!r}"
    decimals = len(text.partition(".")[2])
    return f"{value:.{decimals}f}" == text


def committed(name: str) -> str:
    """The committed text of file `name` (what a link to it shows), which a machine of
    another CPU vendor's `dvc repro` rewrites with its own last digits; the working copy
    outside a git checkout."""
    shown = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=REPO, capture_output=True,
                           text=True)
    return shown.stdout if shown.returncode == 0 else (REPO / name).read_text()


def test_the_readme_results_equal_the_metric_files_they_cite():
    rows = table_rows(section(REPO / "README.md", "Results"))
    for row in rows:
        assert set(row) <= set(RESULT_COLUMNS) | TEXT_COLUMNS, \
            f"a results column this test does not know: {set(row) - set(RESULT_COLUMNS)}"
        cited = re.findall(r"\]\(((?:metrics|data)/[^)\s]+\.json)\)", row["metric files"])
        assert cited, f"the row {row['run']!r} cites no metric file"
        values: dict[str, float] = {}
        for name in cited:
            values = {**json.loads(committed(name)), **values}
        for column, key in RESULT_COLUMNS.items():
            if column in row:
                assert key in values, f"{key} is in none of {cited}"
                assert number_matches(row[column], values[key]), (
                    f"README results, {row['run']!r}, {column}: {row[column]} but "
                    f"{cited} say {values[key]}")


# A benchmark's results file (`--json`): the two step times a doc quotes, and the figure it
# derives from them, recomputed here rather than read from the doc.
BENCHMARK_FIGURES = {
    "kernels_speed": ("pinned_ms", "native_ms", lambda m: m["pinned_ms"] / m["native_ms"]),
    "optimizer_speed": ("muon_ms", "adamw_ms", lambda m: m["muon_ms"] / m["adamw_ms"]),
    "head_speed": ("bpe-chunked_ms", "char_ms", lambda m: m["bpe-chunked_ms"] / m["char_ms"]),
    "train_throughput": ("project_float32_ms", "reference_ms",
                         lambda m: m["tokens_per_step"] * m["mflop_per_token"] * 1e6
                         / (m["project_float32_ms"] / 1000) / (m["peak_tflops"] * 1e12)),
}
RESULTS_LINK = re.compile(r"\]\((results/[^)\s]+\.json)\)")


def quoted_results() -> list[tuple[Path, dict[str, str]]]:
    """Every table row of docs/ that cites a benchmark's results file in its `results`
    column."""
    rows = []
    for path in sorted((REPO / "docs").glob("*.md")):
        tables = re.findall(r"^\|.*(?:\n\|.*)*", path.read_text(encoding="utf-8"), re.M)
        for table in tables:
            if "| results |" in table.splitlines()[0]:
                rows += [(path, row) for row in table_rows(table)]
    return rows


def test_every_benchmark_figure_in_the_docs_equals_its_results_file():
    rows = quoted_results()
    assert len(rows) >= len(BENCHMARK_FIGURES), "the speed guide quotes no results file"
    for path, row in rows:
        (cited,) = RESULTS_LINK.findall(row["results"])
        record = json.loads((path.parent / cited).read_text())
        first, second, derive = BENCHMARK_FIGURES[record["benchmark"]]
        numbers = re.findall(r"[\d,]+\.\d+", row["measured"])
        where = f"{rel(path)}, {cited}"
        assert len(numbers) == 2, f"{where}: 'measured' is not two step times: {row['measured']}"
        for cell, key in zip(numbers, (first, second), strict=True):
            assert number_matches(cell, record["measured"][key]), \
                f"{where}: {key} is {record['measured'][key]}, the doc says {cell}"
        figure = row["figure"].split()[0].removesuffix("x")
        assert number_matches(figure, derive(record["measured"])), \
            f"{where}: the figure is {derive(record['measured'])}, the doc says {figure}"
        assert ("met" if record["met"] else "missed") in row["goal"], \
            f"{where}: the run {'met' if record['met'] else 'missed'} its goal"
        cpu = record["cpu"]["model"]
        assert re.search(r"family (\d+), model (\d+)", cpu).groups() == re.search(
            r"family (\d+), model (\d+)", row["CPU"]).groups(), f"{where}: ran on {cpu}"


GRID_ENTRY = "2026-12-08: the grid's last levers; the native kernels' gain"
GRID_RUNS = "docs/results/grid-2026-12-08.csv"  # `gptmini runs --match 'g-*' --csv`


def test_the_grid_in_the_log_equals_its_runs_file():
    import csv
    import math

    with open(REPO / GRID_RUNS, newline="") as f:
        runs = {row["run"]: row for row in csv.DictReader(f)}
    text = section(REPO / "docs/log.md", GRID_ENTRY)
    assert f"({GRID_RUNS.removeprefix('docs/')})" in text, f"the entry does not cite {GRID_RUNS}"
    (table,) = [t for t in re.findall(r"^\|.*(?:\n\|.*)*", text, re.M)
                if t.startswith("| experiment |")]
    rows = table_rows(table)
    assert {row["experiment"].strip("`*") for row in rows} == set(runs), \
        "the table's experiments are not the file's runs"
    for row in rows:
        run = runs[row["experiment"].strip("`*")]
        bpc, wall = float(run["val_bpc"]), float(run["wall_s"])
        assert number_matches(row["nats/char"], bpc * math.log(2)), row
        assert number_matches(row["BPC"], bpc), row
        assert number_matches(row["training wall s"].split()[0], wall), row
        for change in run["changes"].split():
            assert f"`{change}`" in row["changes"] or change == "train.kernels=native", row


# -- links, paths and cited tests -------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_every_relative_link_resolves():
    broken = []
    for path in PROSE:
        for number, line in enumerate(prose(path).splitlines(), 1):
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                linked = (path.parent / file_part).resolve() if file_part else path
                where = f"{rel(path)}:{number}: {target}"
                if not linked.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                    broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


PATH_IN_CODE = re.compile(r"^((?:src|tests|benchmarks|stages|docs|metrics|\.ci)/[\w./-]+)")


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for path in PROSE:
        texts = [(n, code) for n, line in enumerate(prose(path).splitlines(), 1)
                 for code in inline_code(line)]
        for number, code in texts:
            match = PATH_IN_CODE.match(code)
            if match and "*" not in code:
                name = match.group(1).rstrip(".")
                if not (REPO / name).exists():
                    missing.append(f"{rel(path)}:{number}: {name}")
    assert not missing, "paths the docs name that do not exist:\n" + "\n".join(missing)


CITATION = re.compile(r"(?:tests/)?(test_\w+\.py)(?:::(\w+))?|(?<![\w.])::(test_\w+)")


def test_every_cited_test_exists():
    missing, cited = [], 0
    for path in PROSE:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            current = None
            for match in CITATION.finditer(line):
                file_name, name, bare = match.groups()
                if file_name:
                    current = REPO / "tests" / file_name
                    if not current.is_file():
                        missing.append(f"{rel(path)}:{number}: tests/{file_name}")
                        continue
                name = name or bare
                if not name:
                    continue
                if current is None:
                    missing.append(f"{rel(path)}:{number}: ::{name} names no file before it")
                    continue
                cited += 1
                if not re.search(rf"^(async )?def {name}\(", current.read_text(), re.M):
                    missing.append(f"{rel(path)}:{number}: {rel(current)}::{name}")
    assert cited > 20, "the guarantees cite their tests: none found"
    assert not missing, "cited tests that do not exist:\n" + "\n".join(missing)


# -- what the docs talk about ---------------------------------------------------------------

def test_no_phrase_about_the_docs_own_writing():
    found = []
    for path in PROSE:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for phrase in FORBIDDEN:
                if phrase in line.lower():
                    found.append(f"{rel(path)}:{number}: {phrase!r}")
    assert not found, ("the docs speak of their own writing; state facts about the software "
                       "and the machine a figure came from:\n" + "\n".join(found))


def test_the_readme_stays_short_and_links_every_guide():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 120
    for guide in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{guide.name}" in readme, f"the README does not link docs/{guide.name}"
