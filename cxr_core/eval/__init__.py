"""Evaluation: per-class metrics with confidence intervals, thresholds, calibration, localisation, reports."""
