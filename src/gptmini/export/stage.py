"""The pipeline's export stage: the checkpoint exported (gptmini.export.writer), then logged
to the pipeline's MLflow run and published to the registry (gptmini.export.registry)."""

from __future__ import annotations

from typing import Any

from gptmini.export.layout import METRICS_FILE, MLFLOW_ARTIFACT
from gptmini.export.registry import publish
from gptmini.export.writer import export


def export_stage(params: Any = None) -> dict[str, Any]:
    """The pipeline's export stage: export the checkpoint with the evaluate stage's metrics
    and the training logs to data/export/ (`gptmini.export.writer`), log
    evaluation_metrics.json and the export to the pipeline's MLflow run, then `publish` the
    export as an MLflow Model. Nothing of MLflow's (run id, model version) goes into
    data/export/. `params` (the stage runner's) is not needed."""
    import mlflow

    from gptmini.core import paths
    from gptmini.report import describe_model
    from gptmini.tracking.runs import pipeline_run

    record = export(paths.CHECKPOINT, paths.EVALUATE_METRICS, paths.EXPORT_DIR,
                    train_log=paths.TRAIN_LOG, eval_log=paths.EVAL_LOG)
    with pipeline_run("export"):
        mlflow.log_artifact(str(paths.EXPORT_DIR / METRICS_FILE))
        mlflow.log_artifacts(str(paths.EXPORT_DIR), artifact_path=MLFLOW_ARTIFACT)
        published = publish(paths.EXPORT_DIR, record)
    print(f"exported to {paths.EXPORT_DIR}/: {describe_model(record)}")
    print(published.summary())
    return record
