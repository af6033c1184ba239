"""`gptmini app`: the web app (gptmini.app.page) on the export."""

from __future__ import annotations

import argparse
from typing import Any

from gptmini.cli.common import add_engine, add_export_dir, load, positive_int


def run(args: argparse.Namespace) -> int:
    from gptmini.app.page import serve

    serve(load(args), host=args.host, port=args.port, threads=args.threads)
    return 0


def add_parser(sub: Any) -> None:
    app = sub.add_parser("app", help="start the web app (Gradio)",
                         description="Serve the Gradio app on the export: generate, "
                         "evaluate, model. Binds 127.0.0.1 unless --host says otherwise.")
    app.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the "
                          "network)")
    app.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    app.add_argument("--threads", type=positive_int, default=1, metavar="N",
                     help="torch threads per request (default 1)")
    add_engine(app)
    add_export_dir(app)
    app.set_defaults(func=run)
