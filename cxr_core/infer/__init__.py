"""Inference: load a checkpoint, predict batches of images (cached in SQLite), explain them with Grad-CAM.

``Predictor.from_checkpoint(path).predict(paths)`` is the whole API for most callers; ``predict_root``
predicts the studies of an indexed data set (what `predict`, `eval` and the TUI worklist use).
"""

from cxr_core._face import lazy

__getattr__, __all__ = lazy(__name__, {
    "Predictor": "cxr_core.infer.engine",
    "LoadedModel": "cxr_core.infer.loading",
    "load_model": "cxr_core.infer.loading",
    "resolve_checkpoint": "cxr_core.infer.loading",
    "predict_root": "cxr_core.infer.studies",
    "predict_root_loading": "cxr_core.infer.overlap",
    "view_probabilities": "cxr_core.infer.disagreement",
    "study_disagreement": "cxr_core.infer.disagreement",
    "RootPredictions": "cxr_core.infer.studies",
    "cam_for_image": "cxr_core.infer.cam",
    "cam_is_empty": "cxr_core.infer.cam",
    "class_index": "cxr_core.infer.cam",
    "overlay": "cxr_core.infer.cam",
    "save_overlay": "cxr_core.infer.cam",
})
