"""Evaluation: evaluators (training and `evaluate` both call them), decoding beliefs to joints,
the multi-scale test procedure, metrics, scoring against official annotations, prediction files."""
