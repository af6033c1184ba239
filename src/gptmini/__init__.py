"""GPT-Mini: a small, reproducible GPT trained on Tiny Shakespeare.

The library by role: `core` (config, paths, atomic writes, devices, numerics, hashing, the
stage runner), `data` (download, tokenizers, token files), `model`, `training` (trainer,
Muon, resume state, checkpoint, MLflow tracking, logs), `evaluation` (exact metrics,
scoring any text), `export` (writing the export, the registry), `inference` (loading
it, the engines, generation), `app`, `cli` (the gptmini command, the runs table) and
`report` (how metrics and models are written for people). Nothing heavy is imported here,
so a stage loads only what it runs.
"""

from gptmini.core.numerics import pin_kernel_paths

# Before torch computes anything: the same float32 bits on every x86 CPU (core/numerics.py).
pin_kernel_paths()

__version__ = "0.1.0"
