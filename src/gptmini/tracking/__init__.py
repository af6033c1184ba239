"""MLflow tracking, used by the train, evaluate and export stages and the CLI: where runs go
(`store`), what a run is tagged with (`tags`), opening and ending runs (`runs`), batched step
metrics (`metrics`), what a dead store could not take (`outbox`), and the run id the
pipeline's stages share (`run_id`).

The default store is SQLite at ``<project root>/mlflow.db``, an absolute path, so that
``dvc exp run`` temporary workspaces log into the same store as the main checkout.
``MLFLOW_TRACKING_URI`` overrides it (e.g. a running ``mlflow server``).

A tracking server that dies mid-run costs a few seconds per request
(`store.bound_http_requests`), never the run: what it could not take (step metrics,
artifacts, a run's final status) waits in ``data/volatile/mlflow_outbox.json``
(`outbox.Outbox`) and is delivered by the next flush, the next stage, or
``gptmini mlflow-sync``.
"""
