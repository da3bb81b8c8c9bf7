"""RocChart: one disease's ROC curve with the current threshold's point, or its score histogram without truth.

The numbers come from :class:`~cxr_core.eval.OperatingPoints` (curve and AUC, the same as ``eval``'s); the
chart only draws them, and keeps each disease's downsampled curve and histogram so moving a threshold redraws
one point, not the curve.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from textual_plotext import PlotextPlot

from cxr_core.eval import OperatingPoints
from cxr_core.text import visible

CURVE_POINTS = 200
HISTOGRAM_BINS = 40


class RocChart(PlotextPlot):
    """The ROC curve of the selected disease (x: 1 - specificity, y: sensitivity), or its scores' histogram."""

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.points: OperatingPoints | None = None
        self._probs: np.ndarray | None = None
        self._curves: dict[str, tuple[Any, float | None]] = {}
        self._histograms: dict[str, tuple[list[float], list[int]]] = {}
        self.shown: tuple[str, str] | None = None
        """What is drawn: (``roc`` or ``scores``, disease), for tests and the screen's status."""

    def set_data(self, points: OperatingPoints | None, probs: np.ndarray | None) -> None:
        """New predictions: forget the cached curves."""
        self.points, self._probs = points, probs
        self._curves.clear()
        self._histograms.clear()
        self.clear()

    def clear(self) -> None:
        self.plt.clear_data()
        self.plt.clear_figure()
        self.shown = None
        self.refresh()

    def show(self, label: str, threshold: float, sensitivity: float, specificity: float, *,
             has_truth: bool) -> None:
        """Draw ``label``'s ROC curve with the point at ``threshold``; without positives and negatives, the
        distribution of its scores with the threshold as a line."""
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        points = self.points
        if points is None:
            self.clear()
            return
        k = points.index(label)
        if points.support[k] and points.negatives[k]:
            curve, auc = self._curve(label)
            plt.plot(curve.fpr.tolist(), curve.tpr.tolist(), marker="braille")
            plt.scatter([1.0 - specificity], [sensitivity], marker="●", color="red")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
            plt.title(f"ROC {visible(label)} · AUC {'—' if auc is None else f'{auc:.3f}'}")
            self.shown = ("roc", label)
        else:
            centres, counts = self._histogram(label)
            if counts:
                plt.bar(centres, counts, width=1 / HISTOGRAM_BINS, marker="sd")
                plt.vertical_line(threshold, color="red")
                plt.xlim(0, 1)
            why = "no labels" if not has_truth else "needs positives and negatives"
            plt.title(f"{visible(label)} scores ({why})")
            self.shown = ("scores", label)
        self.refresh()

    def _curve(self, label: str) -> tuple[Any, float | None]:
        """The curve to draw (at most CURVE_POINTS points) and the AUC of the full curve, cached per label."""
        if label not in self._curves:
            self._curves[label] = (self.points.curve(label, CURVE_POINTS), self.points.auc(label))
        return self._curves[label]

    def _histogram(self, label: str) -> tuple[list[float], list[int]]:
        if label not in self._histograms:
            scores = self._probs[:, self.points.index(label)] if self._probs is not None else np.empty(0)
            counts, edges = np.histogram(scores[~np.isnan(scores)], bins=HISTOGRAM_BINS, range=(0.0, 1.0))
            centres = ((edges[:-1] + edges[1:]) / 2).tolist()
            self._histograms[label] = (centres, counts.tolist() if counts.any() else [])
        return self._histograms[label]
