"""Measuring restoration quality: synthetic degradations, metrics, evaluation runs and their report.

See docs/quality.md. Nothing here is needed to serve requests; the learned metrics need the `eval` extra.
"""
