"""Evaluation: exact whole-split metrics and scoring any text (one module), and the
evaluate stage as one function."""
