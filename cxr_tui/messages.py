"""App-wide messages, named in the past tense: what happened, posted by workers and screens to the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual.message import Message

from cxr_core.predictions import Predictions


@dataclass
class PredictionProgressed(Message):
    """A worker predicted ``done`` of ``total`` images (bursty: a newer one replaces an older one in the queue)."""

    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PredictionProgressed)


@dataclass
class PredictionsReady(Message):
    """Predictions for the current root and model (per image) are available."""

    predictions: Predictions
    errors: dict[str, str]
    cached: int
    computed: int
    seconds: float
    source: str | None = None
    """Read from a predictions file rather than predicted: how its rows matched the root, in one line."""


@dataclass
class ThresholdsChanged(Message):
    """The working thresholds changed (label -> value); ``saved_to`` when they were written to a file."""

    thresholds: dict[str, float]
    saved_to: Path | None = None

    def can_replace(self, message: Message) -> bool:  # a held arrow key: only the latest values matter
        return isinstance(message, ThresholdsChanged) and message.saved_to is None and self.saved_to is None


@dataclass
class ModelChosen(Message):
    """The user picked a model (checkpoint file or run directory) to review with."""

    path: Path


@dataclass
class RootChosen(Message):
    """The user picked a data set root to review."""

    path: Path


@dataclass
class ReviewRecorded(Message):
    """A reviewer decision was committed for (study, finding)."""

    study: str
    finding: str
    decision: str
