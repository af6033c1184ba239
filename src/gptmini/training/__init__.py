"""Training: the trainer, its resume state, the final checkpoint, MLflow tracking, logs,
and `run.train`, the train stage as one function."""
