"""GPT-Mini: a small, reproducible GPT trained on Tiny Shakespeare.

The library by role: `core` (config, paths, atomic writes, devices, hashing, the stage
runner), `data` (download, tokenizers, token files), `model`, `training` (trainer, resume
state, checkpoint, MLflow tracking, logs), `evaluation` (exact metrics, scoring any text),
`serving` (export, generation, the CLI, the app, the runs table) and `report` (how metrics
and models are written for people). Nothing is imported here, so a stage loads only what
it runs.
"""

__version__ = "0.1.0"
