"""Stage evaluate: exact metrics over the whole validation split, logged to the run."""

from gptmini.core.stage import run
from gptmini.evaluation.stage import evaluate

if __name__ == "__main__":
    run(evaluate)
