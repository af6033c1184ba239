"""The `gptmini` command: generate text, evaluate a file, list the MLflow runs, describe the
export, start the app. Expected failures (no export, a bad flag, a prompt the model cannot
take) are one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXPORT_ENV = "GPTMINI_EXPORT_DIR"


class CliError(RuntimeError):
    """A failure of the command line, reported as one line."""


def default_export_dir() -> Path:
    """$GPTMINI_EXPORT_DIR, else data/export of the project the working directory is in."""
    if os.environ.get(EXPORT_ENV):
        return Path(os.environ[EXPORT_ENV])
    from gptmini.core.env import project_root

    return project_root() / "data" / "export"


def _positive_int(text: str) -> int:
    """For the flags that are not sampling values (threads, port, batch size, limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _add_export_dir(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--export-dir", type=Path, default=None, metavar="DIR",
                       help=f"the export directory (default: ${EXPORT_ENV}, else data/export "
                            "of the project you are in)")
    where.add_argument("--model", default=None, metavar="URI",
                       help="an MLflow model instead, e.g. models:/gptmini@champion, on "
                            "$MLFLOW_TRACKING_URI (else the project's mlflow.db)")


def _add_engine(parser: argparse.ArgumentParser) -> None:
    from gptmini.serving.engines import CHOICES

    parser.add_argument("--engine", choices=CHOICES, default="auto",
                        help="what generates: onnx (ONNX Runtime), aoti (the torch.export "
                             "programs compiled here, once: `gptmini compile`), torchscript "
                             "(model.ts), export (torch.export programs), eager; default "
                             "auto, the fastest the export and the installed packages allow")


def _load(args: argparse.Namespace):
    from dataclasses import replace

    from gptmini.serving.aoti_engine import is_built
    from gptmini.serving.registry import load_model

    exported = load_model(args.model or args.export_dir or default_export_dir())
    engine = getattr(args, "engine", "auto")
    if engine == "aoti" and not is_built(exported.directory):
        print("note: compiling the export's programs for this CPU with AOTInductor (once; "
              "a minute or more)", file=sys.stderr)
    return replace(exported, engine=engine)


# -- compile --------------------------------------------------------------------------------

def cmd_compile(args: argparse.Namespace) -> int:
    from gptmini.serving.aoti_engine import built_dir

    args.engine = "aoti"
    start = time.perf_counter()
    exported = _load(args)
    exported.generation_model  # noqa: B018 (builds the compiled programs, or loads them)
    print(f"compiled programs in {built_dir(exported.directory)}/ "
          f"({time.perf_counter() - start:.0f} s); `--engine aoti` runs them, and `auto` "
          "where ONNX Runtime is absent")
    return 0


# -- generate -------------------------------------------------------------------------------

def _stdin_text() -> str:
    """The prompt piped in, which must be UTF-8 (a terminal's text is)."""
    from gptmini.data.text import InputError

    if not hasattr(sys.stdin, "buffer"):  # already text (an embedding program's stdin)
        return sys.stdin.read()
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the prompt is not UTF-8 text: byte 0x{data[exc.start]:02x} at "
                         f"offset {exc.start}") from None


def cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from gptmini.data.text import printable
    from gptmini.serving.generation import Sampling, prepare_prompt, random_seed, stream

    torch.set_num_threads(args.threads)
    prompt_text = _stdin_text() if args.prompt == "-" else args.prompt
    exported = _load(args)
    model = exported.generation_model  # a broken engine file fails before any output
    sampling = Sampling.from_user(length=args.length, temperature=args.temperature,
                                  top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                  stop=args.stop, vocab_size=exported.tokenizer.vocab_size)
    prompt = prepare_prompt(prompt_text, exported.tokenizer, exported.block_size)
    if sampling.seed is None:
        sampling = replace(sampling, seed=random_seed())
    for notice in prompt.notices:
        print(f"note: {notice}", file=sys.stderr)
    out = sys.stdout
    if args.echo and prompt.text:
        out.write(printable(prompt.text))
        out.flush()
    start, n_chars = time.perf_counter(), 0
    for piece in stream(model, exported.tokenizer, prompt, sampling):
        out.write(printable(piece))
        out.flush()
        n_chars += len(piece)
    seconds = time.perf_counter() - start
    out.write("\n")
    out.flush()
    if not args.quiet:
        print(f"[{n_chars:,} chars in {seconds:.2f} s: {n_chars / max(seconds, 1e-9):,.0f} "
              f"chars/s; seed {sampling.seed}]", file=sys.stderr)
    return 0


# -- evaluate -------------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> int:
    from gptmini.evaluation.metrics import encode_text, score
    from gptmini.report import metrics_text

    if args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CliError(f"{args.file}: no such file") from None
        except IsADirectoryError:
            raise CliError(f"{args.file}: is a directory, not a text file") from None
        except UnicodeDecodeError as exc:
            raise CliError(f"{args.file}: not UTF-8 text ({exc.reason} at byte "
                           f"{exc.start})") from None
        except OSError as exc:
            raise CliError(f"{args.file}: {exc.strerror}") from None
    exported = _load(args)
    encoded = encode_text(text, exported.tokenizer)
    metrics = score(exported.model, encoded, batch_size=args.batch_size,
                    progress=not args.quiet)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return 0
    print(f"{args.file}:")
    print(metrics_text(metrics))
    return 0


# -- runs -----------------------------------------------------------------------------------

def cmd_runs(args: argparse.Namespace) -> int:
    from gptmini.core.config import load_params
    from gptmini.serving.runs import format_table, plot_runs, runs_table, ui_url
    from gptmini.tracking.store import DEFAULT_EXPERIMENT, EXPERIMENT_ENV, tracking_uri

    experiment = args.experiment or os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    uri = args.tracking_uri or tracking_uri()
    # the recipe the runs are compared with: --plot's stars, the `changes` column
    recipe = load_params(args.params) if args.plot or Path(args.params).is_file() else None
    table = runs_table(uri, experiment, args.sort, args.descending, recipe)
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


def cmd_mlflow_sync(args: argparse.Namespace) -> int:
    from gptmini.core import paths
    from gptmini.core.env import project_root
    from gptmini.core.errors import first_line
    from gptmini.tracking.outbox import Outbox
    from gptmini.tracking.store import bound_http_requests, unreachable_errors

    outbox = Outbox(args.outbox or project_root() / paths.MLFLOW_OUTBOX)
    if not outbox.path.exists():
        print(f"nothing to deliver: no {outbox.path}")
        return 0
    kept = outbox.describe()
    bound_http_requests()
    try:
        delivered = outbox.deliver()
    except unreachable_errors() as exc:
        raise CliError(f"the tracking store is still unreachable ({first_line(exc)}); "
                       f"kept in {outbox.path}: {outbox.describe()}") from None
    print(f"delivered {kept} ({delivered:,} metrics) from {outbox.path}")
    return 0


# -- info -----------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    from gptmini.serving.export import describe

    exported = _load(args)
    if args.json:
        print(json.dumps(exported.record, indent=2, sort_keys=True))
    else:
        print(describe(exported))
    return 0


# -- app ------------------------------------------------------------------------------------

def cmd_app(args: argparse.Namespace) -> int:
    from gptmini.serving.app import serve

    serve(_load(args), host=args.host, port=args.port, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptmini", description="Use the exported GPT-Mini model: generate text, "
        "evaluate text, compare the MLflow runs, describe the export, start the web app.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate text from a prompt, streamed to stdout",
                         description="Sample text after PROMPT with the export's KV-cache "
                         "generation; the text streams to stdout, notes and speed to stderr.")
    gen.add_argument("prompt", nargs="?", default="",
                     help="the text to continue ('-' reads stdin; empty starts from a "
                          "newline; only the last context-length tokens are used)")
    # Sampling values are parsed as numbers here and checked by Sampling.from_user, the
    # same check as the app's.
    gen.add_argument("-n", "--length", type=int, default=500, metavar="N",
                     help="tokens to generate (characters for a char model; default 500)")
    gen.add_argument("-t", "--temperature", type=float, default=0.8,
                     help="sampling temperature, >= 0; 0 is greedy (default 0.8)")
    gen.add_argument("--top-k", type=int, default=None, metavar="K",
                     help="sample among the K most likely tokens, 1..vocabulary size "
                          "(default: all)")
    gen.add_argument("--top-p", type=float, default=1.0, metavar="P",
                     help="nucleus sampling: the most likely tokens up to mass P, in (0, 1] "
                          "(default 1: off)")
    gen.add_argument("--seed", type=int, default=None,
                     help="seed for repeatable output (default: random, printed at the end)")
    gen.add_argument("--stop", default=None, metavar="TEXT",
                     help="stop before this text appears (it is not printed)")
    gen.add_argument("--no-echo", dest="echo", action="store_false",
                     help="print only the generated text, not the prompt before it")
    gen.add_argument("-q", "--quiet", action="store_true", help="no speed line on stderr")
    gen.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                     help="torch threads (default 1: one token at a time is too small a job "
                          "to split)")
    _add_engine(gen)
    _add_export_dir(gen)
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="NLL, perplexity, accuracy and BPC of a text file",
                        description="Score FILE with the exported model, every token after "
                        "the first predicted once (the same metrics as the evaluate stage).")
    ev.add_argument("file", metavar="FILE", help="a UTF-8 text file ('-' reads stdin)")
    ev.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                    help="windows per forward pass (default 32)")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_export_dir(ev)
    ev.set_defaults(func=cmd_evaluate)

    from gptmini.serving.runs import COLUMNS

    runs = sub.add_parser("runs", help="the MLflow runs as a table",
                          description="Every run of the MLflow experiment: tokenizer, key "
                          "params, validation BPC, perplexity, accuracy and training wall time.")
    runs.add_argument("--sort", default="val_bpc", choices=list(COLUMNS), metavar="COLUMN",
                      help=f"sort by this column (default val_bpc): {', '.join(COLUMNS)}")
    runs.add_argument("--descending", action="store_true", help="largest first")
    runs.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                      help="show the first N rows")
    runs.add_argument("--csv", action="store_true", help="print CSV instead of a table")
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
    runs.set_defaults(func=cmd_runs)

    sync = sub.add_parser("mlflow-sync", help="deliver what the tracking server missed",
                          description="Send the step metrics, artifacts and final run "
                          "statuses that training kept in data/volatile/mlflow_outbox.json "
                          "while the MLflow tracking server was unreachable, to the store "
                          "each run belongs to.")
    sync.add_argument("--outbox", type=Path, default=None, metavar="FILE",
                      help="the outbox file (default: data/volatile/mlflow_outbox.json of the "
                           "project you are in)")
    sync.set_defaults(func=cmd_mlflow_sync)

    comp = sub.add_parser("compile", help="compile the export's programs for this CPU "
                          "(AOTInductor)", description="Compile prefill.pt2 and decode.pt2 "
                          "with AOTInductor into this machine's cache (once per export, "
                          "torch version and CPU; needs a C++ compiler): the `aoti` engine.")
    _add_export_dir(comp)
    comp.set_defaults(func=cmd_compile)

    info = sub.add_parser("info", help="what the export holds",
                          description="The export's files, model, tokenizer and metrics.")
    info.add_argument("--json", action="store_true",
                      help="print evaluation_metrics.json as it is")
    _add_export_dir(info)
    info.set_defaults(func=cmd_info)

    app = sub.add_parser("app", help="start the web app (Gradio)",
                         description="Serve the Gradio app on the export: generate, "
                         "evaluate, model. Binds 127.0.0.1 unless --host says otherwise.")
    app.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the "
                          "network)")
    app.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    app.add_argument("--threads", type=_positive_int, default=1, metavar="N",
                     help="torch threads per request (default 1)")
    _add_engine(app)
    _add_export_dir(app)
    app.set_defaults(func=cmd_app)

    from gptmini.team.cli import add_parser as add_team_parser

    add_team_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from gptmini.core.env import resolve_path_variables

    resolve_path_variables()
    args = build_parser().parse_args(argv)
    from gptmini.core.config import ConfigError
    from gptmini.data.text import InputError
    from gptmini.serving.engines import EngineError
    from gptmini.serving.export import ExportError
    from gptmini.serving.runs import RunsError
    from gptmini.team.stack import TeamError

    try:
        return args.func(args)
    except (CliError, ConfigError, EngineError, ExportError, InputError, RunsError,
            TeamError) as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, like other command-line tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
