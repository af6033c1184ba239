"""Stage train: train GPT-Mini on the token files, save the checkpoint, log the MLflow run.

Resumes after a crash; runs on `train.processes` processes under torchrun when that is
above 1 (see gptmini.training.stage)."""

from gptmini.core.stage import run
from gptmini.training.stage import train

if __name__ == "__main__":
    run(train)
