"""Evaluation: per-class metrics (and, later, confidence intervals, thresholds, reports)."""
