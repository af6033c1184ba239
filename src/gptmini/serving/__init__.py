"""Serving: the export, text generation, the `gptmini` command, the web app and the MLflow
runs table."""
