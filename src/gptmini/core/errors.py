"""One-line error messages."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to
    200 characters: enough to say what failed, short enough for one line of a report."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:200]
