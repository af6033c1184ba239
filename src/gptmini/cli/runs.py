"""`gptmini runs`: the MLflow runs of an experiment as one table (tokenizer, key params,
validation metrics and wall time, through `mlflow.search_runs` and pandas), as CSV, or as a
plot against the recipe of params.yaml."""

from __future__ import annotations

import argparse
import os
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from gptmini.cli.common import positive_int

# table column -> the search_runs column it comes from (numbers are converted)
COLUMNS = {
    "run": "tags.mlflow.runName",  # a `dvc exp run -n NAME` run is NAME: `dvc exp show`'s
    "run_id": "run_id",            # MLflow's id, shortened (`mlflow runs describe`)
    "code": "tags.code.src_sha256",  # the sources it imported, shortened; * when dirty
    "started": "start_time",
    "status": "status",
    "tokenizer": None,  # kind, and the encoding for BPE
    "layers": "params.model.n_layer",
    "embd": "params.model.n_embd",
    "heads": "params.model.n_head",
    "context": "params.model.block_size",
    "params": "params.model.parameters",
    "steps": "params.train.steps",  # what budget_chars bought (max_steps in older runs)
    "batch": "params.train.batch_size",
    "optimizer": "params.train.optimizer",
    "lr": "params.train.learning_rate",
    "dropout": "params.model.dropout",
    "val_bpc": "metrics.bpc",
    "perplexity": "metrics.perplexity",
    "accuracy": "metrics.accuracy",
    "wall_s": None,  # training wall time, else the run's own duration
}
NUMERIC = ["layers", "embd", "heads", "context", "params", "steps", "batch", "lr", "dropout",
           "val_bpc",
           "perplexity", "accuracy", "wall_s"]


class RunsError(RuntimeError):
    """No store, no such experiment: said in one line."""


def _column(frame: Any, name: str) -> Any:
    import pandas as pd

    return frame[name] if name in frame.columns else pd.Series([None] * len(frame),
                                                               index=frame.index, dtype=object)


def _tokenizer(frame: Any) -> Any:
    kind = _column(frame, "params.tokenizer.kind").fillna(_column(frame, "tags.tokenizer"))
    encoding = _column(frame, "params.tokenizer.encoding")
    return [f"bpe:{enc}" if k == "bpe" and isinstance(enc, str) else k
            for k, enc in zip(kind, encoding, strict=True)]


def _wall_seconds(frame: Any) -> Any:
    import pandas as pd

    duration = (pd.to_datetime(_column(frame, "end_time"))
                - pd.to_datetime(_column(frame, "start_time"))).dt.total_seconds()
    return pd.to_numeric(_column(frame, "metrics.train.wall_seconds"),
                         errors="coerce").fillna(duration)


def check_store(tracking_uri: str) -> None:
    """A missing SQLite file would be created empty by MLflow; say so instead."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise RunsError(f"no MLflow store at {path}: run the pipeline first (dvc repro), "
                            "or set MLFLOW_TRACKING_URI / --tracking-uri")


def runs_table(tracking_uri: str, experiment: str, sort_by: str = "val_bpc",
               descending: bool = False, recipe: Any = None) -> Any:
    """One row per run of `experiment`, sorted by `sort_by` (runs without it last); with
    `recipe` (a Params), a `default` column says which runs trained exactly that."""
    import mlflow
    import pandas as pd

    if sort_by not in COLUMNS:
        raise RunsError(f"cannot sort by {sort_by!r}: choose one of {', '.join(COLUMNS)}")
    check_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        names = [e.name for e in mlflow.search_experiments()]
        raise RunsError(f"no experiment {experiment!r} in {tracking_uri}; there are: "
                        f"{', '.join(names) or 'none'}")
    frame = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    table = pd.DataFrame(index=frame.index)
    for column, source in COLUMNS.items():
        if column == "tokenizer":
            table[column] = _tokenizer(frame)
        elif column == "wall_s":
            table[column] = _wall_seconds(frame)
        elif column == "optimizer":  # runs from before train.optimizer used AdamW
            table[column] = _column(frame, source).fillna("adamw")
        elif column in ("run_id", "code"):
            table[column] = _column(frame, source).map(
                lambda v: v[:8] if isinstance(v, str) else None)
        elif column == "steps":
            table[column] = _column(frame, source).fillna(
                _column(frame, "params.train.max_steps"))
        else:
            table[column] = _column(frame, source)
    for column in NUMERIC:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    if recipe is not None:
        table["default"] = is_recipe(frame, recipe)
        table["changes"] = recipe_changes(frame, recipe)
    # the CPUs the runs trained on, for a figure's title (wall times compare only on one)
    table.attrs["cpus"] = sorted(_column(frame, "tags.cpu.model").dropna().unique())
    dirty = _column(frame, "tags.git.dirty") == "true"
    table.loc[dirty & table["code"].notna(), "code"] += "*"
    if len(table):
        table["started"] = pd.to_datetime(table["started"]).dt.strftime("%Y-%m-%d %H:%M")
    table = table.sort_values(sort_by, ascending=not descending, na_position="last",
                              kind="stable")
    return table.reset_index(drop=True)


def is_recipe(frame: Any, params: Any) -> Any:
    """Which runs of a `search_runs` frame recorded exactly `params`' recipe (every param
    the training stage logs from params.yaml, as MLflow stores them: str())."""
    import pandas as pd

    from gptmini.tracking.tags import flatten

    match = pd.Series(True, index=frame.index)
    for key, value in flatten(params.recipe()).items():
        match &= _column(frame, f"params.{key}") == str(value)
    return match


def recipe_changes(frame: Any, params: Any) -> list[str]:
    """Per run, the recipe params it recorded with another value than `params`' (a grid's
    `-S` overrides), as 'train.weight_decay=0.3 model.dropout=0.15'; params a run did not
    record (an older run's) are not guessed at."""
    from gptmini.tracking.tags import flatten

    recipe = {key: str(value) for key, value in flatten(params.recipe()).items()}
    recorded = {key: _column(frame, f"params.{key}") for key in recipe}
    return [" ".join(f"{key}={recorded[key][i]}" for key in recipe
                     if isinstance(recorded[key][i], str) and recorded[key][i] != recipe[key])
            for i in frame.index]


def plot_runs(table: Any, path: str | Path, title: str) -> None:
    """Validation nats per character against training wall time, one point a run, the runs
    of the current recipe (the `default` column) as stars."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gptmini.core.atomic import atomic_path

    shown = table.dropna(subset=["val_bpc", "wall_s"])
    if shown.empty:
        raise RunsError("no run has both a validation BPC and a wall time to plot")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for default, marker, label in ((False, "o", "run"), (True, "*", "the default recipe")):
        part = shown[shown["default"] == default]
        if len(part):
            ax.scatter(part["wall_s"], part["val_bpc"] * math.log(2), marker=marker,
                       s=160 if default else 40, label=label, zorder=3)
    for row in shown.itertuples():
        ax.annotate(row.run, (row.wall_s, row.val_bpc * math.log(2)), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def ui_url(tracking_uri: str, experiment: str) -> str:
    """The MLflow UI page of `experiment`'s training runs. MLflow 3.17's UI opens every
    experiment on its GenAI overview (traces) unless the address asks for the model-training
    view (`workflowType=machine_learning`); the experiment's kind tag does not decide it.
    A file store has no UI of its own: the address is where `mlflow ui` serves by default."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) \
        else "http://127.0.0.1:5000"
    page = f"#/experiments/{found.experiment_id}/runs" if found else "#/experiments"
    return f"{base.rstrip('/')}/{page}?workflowType=machine_learning"


def format_table(table: Any) -> str:
    """The table as aligned text: metrics as `gptmini.report` writes them, integers as
    integers."""
    from gptmini.report import format_number

    if table.empty:
        return "no runs"
    shown = table.copy()
    for column in ("layers", "embd", "heads", "context", "params", "steps", "batch"):
        shown[column] = shown[column].map(lambda v: "" if v != v else f"{int(v):,}")
    for column, key in (("val_bpc", "bpc"), ("perplexity", "perplexity"),
                        ("accuracy", "accuracy")):
        shown[column] = shown[column].map(lambda v, k=key: "" if v != v else format_number(k, v))
    for column in ("lr", "dropout"):
        shown[column] = shown[column].map(lambda v: "" if v != v else f"{v:g}")
    shown["wall_s"] = shown["wall_s"].map(lambda v: "" if v != v else f"{v:.0f}")
    return shown.fillna("").to_string(index=False)


def run(args: argparse.Namespace) -> int:
    """`gptmini runs`: the table, optionally as CSV or a plot, and where to compare them."""
    from gptmini.core.config import load_params
    from gptmini.tracking.store import DEFAULT_EXPERIMENT, EXPERIMENT_ENV, tracking_uri

    experiment = args.experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    uri = args.tracking_uri or tracking_uri()
    # the recipe the runs are compared with: --plot's stars, the `changes` column
    recipe = load_params(args.params) if args.plot or Path(args.params).is_file() else None
    table = runs_table(uri, experiment, args.sort, args.descending, recipe)
    if args.match:
        table = table[[fnmatch(str(name), args.match) for name in table["run"]]]
    if args.limit:
        table = table.head(args.limit)
    if args.plot:
        cpus = " / ".join(table.attrs["cpus"]) or "CPU not recorded"
        plot_runs(table, args.plot, f"{experiment}: {len(table)} runs on {cpus}")
        print(f"wrote {args.plot}: the default recipe is {args.params}'s")
    if args.csv:
        sys.stdout.write(table.to_csv(index=False))
        return 0
    print(format_table(table))
    print(f"\ncompare them in the MLflow UI: {ui_url(uri, experiment)}")
    if not uri.startswith(("http://", "https://")):
        print(f"(after: mlflow ui --backend-store-uri {uri})")
    return 0


def add_parser(sub: Any) -> None:
    runs = sub.add_parser("runs", help="the MLflow runs as a table",
                          description="Every run of the MLflow experiment: tokenizer, key "
                          "params, validation BPC, perplexity, accuracy and training wall time.")
    runs.add_argument("--sort", default="val_bpc", choices=list(COLUMNS), metavar="COLUMN",
                      help=f"sort by this column (default val_bpc): {', '.join(COLUMNS)}")
    runs.add_argument("--descending", action="store_true", help="largest first")
    runs.add_argument("--limit", type=positive_int, default=None, metavar="N",
                      help="show the first N rows")
    runs.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    runs.add_argument("--match", default=None, metavar="GLOB",
                      help="only the runs whose name matches, e.g. 'g-*' for a grid queued "
                           "with -n g-...")
    runs.add_argument("--plot", default=None, metavar="PNG",
                      help="also draw validation nats/char against training wall time, one "
                           "point a run, the runs of the current params.yaml as stars")
    runs.add_argument("--params", default="params.yaml", metavar="YAML",
                      help="the recipe the runs are compared with: their `changes` column "
                           "and --plot's stars (default params.yaml)")
    runs.add_argument("--experiment", default=None,
                      help="experiment name (default: $MLFLOW_EXPERIMENT_NAME, else gptmini)")
    runs.add_argument("--tracking-uri", default=None, metavar="URI",
                      help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                           "sqlite:///<project>/mlflow.db)")
    runs.set_defaults(func=run)
