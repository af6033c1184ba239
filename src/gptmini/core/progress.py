"""Progress of long work: a live tqdm bar on a terminal, a few plain lines in a log.

Under CI or ``dvc repro > log`` stderr is no terminal, and a bar would write thousands of
carriage-return updates into the log; there the same bar prints about `LOG_LINES` whole
lines instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

LOG_LINES = 10


class _Lines:
    """A file for tqdm that turns each refresh into one line of its own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None,
                 desc: str, disable: bool = False, stream: TextIO | None = None,
                 **kwargs: Any) -> tqdm:
    """A tqdm bar (over `iterable`, or updated by hand): live on a terminal; elsewhere
    about LOG_LINES lines over the whole job."""
    stream = stream or sys.stderr
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if disable or stream.isatty():
        return tqdm(iterable, total=total, desc=desc, disable=disable, file=stream, **kwargs)
    every = max(1, total // LOG_LINES) if total else 1
    # position 0: another bar open in the process must not turn these lines into cursor moves
    return tqdm(iterable, total=total, desc=desc, file=_Lines(stream), miniters=every,
                mininterval=0, maxinterval=float("inf"), ascii=True, position=0, **kwargs)
