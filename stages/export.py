"""Stage export: TorchScript and torch.export models, tokenizer, evaluation_metrics.json and
the training logs, for torch alone."""

import mlflow

from gptmini import paths
from gptmini.config import Params
from gptmini.export import METRICS_FILE, export
from gptmini.stage import run
from gptmini.tracking import mlflow_run, provenance_tags, read_run_id


def main(params: Params) -> None:
    export(paths.CHECKPOINT, paths.EVALUATE_METRICS, paths.EXPORT_DIR,
           train_log=paths.TRAIN_LOG, eval_log=paths.EVAL_LOG)
    with mlflow_run(read_run_id(paths.RUN_JSON), run_name="export", tags=provenance_tags()):
        mlflow.log_artifact(str(paths.EXPORT_DIR / METRICS_FILE))
        mlflow.log_artifacts(str(paths.EXPORT_DIR), artifact_path="export")
    print(f"exported to {paths.EXPORT_DIR}/")


if __name__ == "__main__":
    run(main)
