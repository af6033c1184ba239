"""Stage export: TorchScript and torch.export models, tokenizer, evaluation_metrics.json and
the training logs, usable with torch alone; logged as an MLflow Model and registered."""

from gptmini.core.stage import run
from gptmini.export.stage import export_stage

if __name__ == "__main__":
    run(export_stage)
