"""Where each stage reads and writes, relative to the project root (DVC's working dir)."""

from pathlib import Path

CORPUS = Path("data/raw/input.txt")
TOKENS_DIR = Path("data/tokens")
TOKENIZER_JSON = TOKENS_DIR / "tokenizer.json"
COUNTS_JSON = TOKENS_DIR / "counts.json"
MODEL_DIR = Path("data/model")
CHECKPOINT = MODEL_DIR / "ckpt.pt"
EXPORT_DIR = Path("data/export")
METRICS_DIR = Path("metrics")
TOKENIZE_METRICS = METRICS_DIR / "tokenize.json"
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_LOG = METRICS_DIR / "train_log.csv"
EVAL_LOG = METRICS_DIR / "eval_log.csv"
LOSS_CURVE = METRICS_DIR / "loss_curve.png"
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"
# Neither is a DVC output, and nothing depends on them (see data/README.md):
RESUME_DIR = Path("data/train_state")  # the crash-safe resume state: gptmini.training.resume
VOLATILE_DIR = Path("data/volatile")   # what differs between two identical runs:
RUN_JSON = VOLATILE_DIR / "mlflow_run.json"  # the MLflow run that evaluate and export reopen
TIMINGS_JSON = VOLATILE_DIR / "timings.json"  # wall seconds and tokens/s of the last training
MLFLOW_OUTBOX = VOLATILE_DIR / "mlflow_outbox.json"  # what the tracking store missed
