"""Inference: load a checkpoint, predict batches of images (cached in SQLite), explain them with Grad-CAM.

``Predictor.from_checkpoint(path).predict(paths)`` is the whole API for most callers; ``predict_root``
predicts the studies of an indexed data set (what `predict`, `eval` and the TUI worklist use).
"""
