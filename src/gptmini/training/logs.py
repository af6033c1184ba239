"""The loss-curve picture and the per-step CSV logs that DVC plots read."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from gptmini.core.atomic import atomic_open, atomic_path


def write_csv(path: str | Path, rows: Sequence[dict[str, float]]) -> None:
    with atomic_open(path) as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def loss_curve(path: str | Path, steps: Sequence[dict[str, float]],
               evals: Sequence[dict[str, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.6, alpha=0.4,
            label="train (batch)")
    ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", ms=3,
            label="train (estimate)")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", ms=3,
            label="validation (estimate)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
