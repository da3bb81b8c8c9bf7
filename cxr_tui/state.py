"""What the app is working on: one data set root, its studies, one model, its thresholds, its predictions.

Screens read this (``self.app.workspace``) and change it only by posting messages to the app
(:mod:`cxr_tui.messages`), which updates it in one place and bumps one of its reactive versions
(``studies_version``, ``predictions_version``, ``thresholds_version``, ``reviewed``); screens ``watch`` those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_core.atomic import atomic_write_text
from cxr_core.data import Study
from cxr_core.labels import LabelSpace
from cxr_core.paths import data_dir
from cxr_core.predictions import Predictions
from cxr_core.users import current_user

if TYPE_CHECKING:
    from cxr_tui.messages import PredictionsReady

SESSION_FILE = "tui-session.json"


@dataclass
class Workspace:
    root: Path | None = None
    model: Path | None = None  # checkpoint file (resolved) or None
    thresholds_path: Path | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    predictions: Predictions | None = None  # one row per image of the root
    errors: dict[str, str] = field(default_factory=dict)  # unreadable images: relpath -> reason
    reviewer: str = field(default_factory=current_user)
    runs_dir: Path | None = None
    show_phi: bool = False
    studies: dict[str, Study] = field(default_factory=dict)  # the root's studies (images present), by id
    study_order: list[str] = field(default_factory=list)  # the index's order
    label_space: LabelSpace | None = None
    study_probs: np.ndarray | None = None  # (n studies, K) in study_order: each study's score (max over images)
    image_rows: dict[str, list[int]] = field(default_factory=dict)  # study -> its rows of predictions
    study_disagreement: np.ndarray | None = None  # (n studies, K) in study_order: mutual information under views
    last_load: PredictionsReady | None = None  # how the last predictions came (cache / computed)
    blind: int = 0  # blind reading: 1 hides the data set's labels, 2 the model's output as well
    out_of_distribution: str | None = None  # the warning when the root's films lie far from the model's training images

    def study_probabilities(self, study_id: str) -> np.ndarray | None:
        """(n images, K) probabilities of a study's images, or None before predictions arrive."""
        if self.predictions is None or study_id not in self.image_rows:
            return None
        return self.predictions.probs[self.image_rows[study_id]]

    def prior_of(self, study_id: str) -> Study | None:
        """The same patient's study just before this one (by follow-up number, else by id), with an image."""
        study = self.studies.get(study_id)
        if study is None:
            return None
        same = [s for s in self.studies.values() if s.patient_id == study.patient_id and s.images]
        if study not in same:
            same.append(study)

        def order(s: Study) -> tuple[int, str]:
            follow_up = (s.meta or {}).get("follow_up")
            return (follow_up if isinstance(follow_up, int) else -1, s.id)

        same.sort(key=order)
        position = same.index(study)
        return same[position - 1] if position > 0 else None

    def earlier_studies(self, study_id: str) -> int:
        """How many studies of the same patient come before this one (by follow-up number, else by id), with an
        image or not (a partial download keeps their rows, not their files)."""
        study = self.studies.get(study_id)
        if study is None:
            return 0

        def order(s: Study) -> tuple[int, str]:
            follow_up = (s.meta or {}).get("follow_up")
            return (follow_up if isinstance(follow_up, int) else -1, s.id)

        mine = order(study)
        return sum(1 for s in self.studies.values() if s.patient_id == study.patient_id and order(s) < mine)

    def threshold(self, label: str) -> float:
        return float(self.thresholds.get(label, 0.5))


def load_session() -> dict:
    """The last root / model / thresholds used (``cxr-tui`` with no arguments reopens them)."""
    try:
        return json.loads((data_dir() / SESSION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def remembered_model(root: Path) -> Path | None:
    """The model last used on ``root`` (when its file still exists)."""
    models = load_session().get("models")
    model = models.get(str(root)) if isinstance(models, dict) else None
    return Path(model) if isinstance(model, str) and Path(model).is_file() else None


def save_session(workspace: Workspace) -> None:
    models = load_session().get("models")
    models = dict(models) if isinstance(models, dict) else {}
    if workspace.root is not None and workspace.model is not None:
        models[str(workspace.root)] = str(workspace.model)
    data = {"root": str(workspace.root) if workspace.root else None,
            "model": str(workspace.model) if workspace.model else None,
            "thresholds": str(workspace.thresholds_path) if workspace.thresholds_path else None,
            "models": dict(list(models.items())[-50:])}  # the last model of each of the last 50 roots
    try:
        atomic_write_text(data_dir() / SESSION_FILE, json.dumps(data) + "\n")
    except OSError:
        pass  # remembering the session is a convenience; never fail the app for it
