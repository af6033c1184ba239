"""The team setup on real servers (docs/team.md): PostgreSQL as MLflow's backend store, an
S3 endpoint for MLflow's artifacts and the DVC remote, and `mlflow server` with basic-auth
in front of both. `stack` starts and stops the local stand-in (moto's S3 server); the
pipeline's stages never import this package: they only see MLFLOW_TRACKING_URI."""
