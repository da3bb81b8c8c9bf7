"""Evaluation: per-class metrics with confidence intervals, thresholds, calibration, localisation, reports.

The face of the package: what the front-ends use, imported when first asked for (``evaluate_run`` brings the
model zoo and torch; ``cxr-tui thresholds show`` must not wait for them).
"""

from cxr_core._face import lazy

__getattr__, __all__ = lazy(__name__, {

    "Evaluation": "cxr_core.eval.evaluation",
    "evaluate_run": "cxr_core.eval.evaluation",
    "default_out": "cxr_core.eval.evaluation",
    "evaluation_command": "cxr_core.eval.evaluation",
    "launch_evaluation": "cxr_core.eval.evaluation",
    "evaluate": "cxr_core.eval.evaluate",
    "write_report": "cxr_core.eval.report",
    "overall_pointing": "cxr_core.eval.localisation",
    "roc_auc": "cxr_core.eval.metrics",
    "OperatingPoints": "cxr_core.eval.operating_points",
    "ThresholdStats": "cxr_core.eval.operating_points",
    "Mode": "cxr_core.eval.operating_points",
    "parse_mode": "cxr_core.eval.operating_points",
    "tune": "cxr_core.eval.operating_points",
    "ThresholdsFile": "cxr_core.eval.thresholds_file",
    "TunedOn": "cxr_core.eval.thresholds_file",
    "UNKNOWN_SPLIT": "cxr_core.eval.thresholds_file",
    "load_thresholds": "cxr_core.eval.thresholds_file",
    "save_review": "cxr_core.eval.thresholds_file",
    "save_tuning": "cxr_core.eval.thresholds_file",
    "thresholds_from_choices": "cxr_core.eval.thresholds_file",
    "split_check": "cxr_core.eval.thresholds_file",
    "threshold_values": "cxr_core.eval.thresholds_file",
    "threshold_mismatch": "cxr_core.eval.thresholds_file",
    "thresholds_path_for": "cxr_core.eval.thresholds_file",
    "tuning_choices": "cxr_core.eval.thresholds_file",
    "tuning_rows": "cxr_core.eval.thresholds_file",
    "Agreement": "cxr_core.eval.agreement",
    "ReaderAgreement": "cxr_core.eval.readers",
    "Disagreement": "cxr_core.eval.readers",
    "reader_agreement": "cxr_core.eval.readers",
    "disagreements": "cxr_core.eval.readers",
    "fleiss_kappa": "cxr_core.eval.readers",
    "ORDERS": "cxr_core.eval.uncertainty",
    "VIEW_ORDERS": "cxr_core.eval.uncertainty",
    "mutual_information": "cxr_core.eval.uncertainty",
    "informativeness": "cxr_core.eval.uncertainty",
    "review_order": "cxr_core.eval.uncertainty",
    "ALL_FINDINGS": "cxr_core.eval.readers:ALL",
    "ReviewedStudies": "cxr_core.eval.agreement",
})
