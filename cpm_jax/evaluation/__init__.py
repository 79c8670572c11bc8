"""Evaluation: evaluators (training and `evaluate` both call them), decoding beliefs to joints,
the multi-scale test procedure, the single-person check, metrics, scoring against official
annotations, prediction files."""
