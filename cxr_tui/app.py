"""CxrApp: the worklist, study, thresholds and training screens over one data set root and one model.

State lives in :class:`~cxr_tui.state.Workspace` and changes in one place, here, on messages
(:mod:`cxr_tui.messages`); each change bumps a reactive version that screens ``watch``, so no screen calls
another. Blocking work — indexing, predicting, Grad-CAM — runs in thread workers that call one ``cxr_core``
function each and post a message; predictions come from the SQLite cache when the same
images were seen by the same model, so reopening a folder is instant. With a predictions file instead of a
model (``--predictions``, review on a machine without a GPU) the worker reads the file after indexing and
nothing imports torch. Worker errors are shown in one place (:meth:`on_worker_state_changed`), as one line.
"""

from __future__ import annotations

import gc
import threading
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.reactive import var
from textual.worker import Worker, WorkerState, get_current_worker

import cxr_tui.widgets.xray  # noqa: F401 - asks the terminal about images before the app owns it (see there)
from cxr_core.data import Study

if TYPE_CHECKING:
    from cxr_core.store import IndexedRoot
from cxr_core.errors import CxrError, error_text
from cxr_core.text import visible
from cxr_tui.messages import (
    ModelChosen,
    PredictionProgressed,
    PredictionsReady,
    ReviewRecorded,
    RootChosen,
    ThresholdsChanged,
)
from cxr_tui.state import Workspace, remembered_model, save_session


class ScreenCommands(Provider):
    """The one command palette provider: the current screen's key bindings and its extra
    :meth:`~cxr_tui.screens.base.CxrScreen.palette_commands`, then the app's bindings (posting's habit)."""

    def _commands(self) -> list[tuple[str, str, object]]:
        from cxr_tui.screens.base import CxrScreen

        app = self.app
        screen = self.screen  # the screen the palette was opened over (app.screen is the palette now)
        out = []
        seen = set()
        for node in (screen, app):
            for binding in getattr(node, "BINDINGS", []):
                if not isinstance(binding, Binding) or not binding.description or binding.action in seen:
                    continue
                seen.add(binding.action)
                out.append((binding.description, f"key {binding.key_display or binding.key}",
                            partial(app.run_action, binding.action, node)))
            if node is screen and isinstance(screen, CxrScreen):
                out.extend((command.name, command.help, partial(app.run_action, command.action, screen))
                           for command in screen.palette_commands())
        return out

    async def discover(self) -> Hits:
        for name, help_text, callback in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, help_text, callback in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class CxrApp(App):
    TITLE = "cxr"
    SUB_TITLE = "chest X-ray workbench"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {ScreenCommands}
    studies_version: var[int] = var(0)
    """Bumped when the root's studies are (re)loaded into the workspace."""
    predictions_version: var[int] = var(0)
    """Bumped when new predictions (and study scores) are in the workspace."""
    thresholds_version: var[int] = var(0)
    """Bumped when the workspace's thresholds changed."""
    progress: var[tuple[int, int]] = var((0, 0))
    """(done, total) of the running prediction."""
    blind_version: var[int] = var(0)
    """Bumped when blind reading changes (Workspace.blind)."""
    disagreement_version: var[int] = var(0)
    """Bumped when the studies' disagreement under the model's views is in the workspace (or was reset)."""
    reviewed: var[tuple[int, str]] = var((0, ""))
    """(count, study) of the latest recorded decision: the worklist re-reads that study's status."""

    BINDINGS = [
        Binding("q", "quit", "Quit", id="app.quit"),
        Binding("question_mark", "help", "Help", key_display="?", id="app.help"),
        Binding("t", "thresholds", "Thresholds", show=False, id="app.thresholds"),
        Binding("g", "training", "Training", show=False, id="app.training"),
    ]

    def __init__(self, root: Path | None = None, model: Path | None = None, thresholds: Path | None = None, *,
                 image_protocol: str = "auto", show_phi: bool = False, runs_dir: Path | None = None,
                 use_cache: bool = True, reader: str | None = None, predictions: Path | None = None) -> None:
        """``predictions``: review a predictions file (``cxr-tui predict --out``) instead of predicting with a
        model: the worklist and study view without torch; no Grad-CAM. Not with ``model``."""
        super().__init__()
        if predictions is not None and model is not None:
            raise ValueError("a predictions file or a model, not both")
        if root is not None and model is None and predictions is None:
            model = remembered_model(root)  # `cxr-tui ROOT` reviews with the model last used on that root
        self.workspace = Workspace(root=root, model=model, thresholds_path=thresholds, show_phi=show_phi,
                                   runs_dir=runs_dir)
        if reader is not None:
            self.workspace.reviewer = reader
        self.image_protocol = image_protocol
        self.use_cache = use_cache
        # Resources, not state: the loaded model (shared with Grad-CAM under model_lock) and the reviews store.
        self.predictor = None
        self.model_name: str | None = None  # the loaded model's run id (or file name), recorded with decisions
        self.model_lock = threading.Lock()
        self._reviews = None  # ReviewStore, opened on first use (see `reviews`)
        self.predictions_file = predictions
        self.file_fingerprint: str | None = None  # the model that made the predictions file (its meta), if it says
        self.startup_error: str | None = None
        """Why the app left at once (the predictions file does not fit the root): the CLI prints it as one line."""
        self._first_load = True

    # -- start -------------------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        from cxr_tui.screens.welcome import WelcomeScreen
        from cxr_tui.screens.worklist import WorklistScreen

        self.sub_title = visible(f"reader {self.workspace.reviewer}")
        if self.workspace.root is None:
            self.push_screen(WelcomeScreen())
            return
        self.push_screen(WorklistScreen())
        self.load_root()

    def open_root(self, root: Path, model: Path | None = None) -> None:
        from cxr_tui.screens.worklist import WorklistScreen

        self.workspace.root = root
        if model is not None:
            self.workspace.model = model
        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(WorklistScreen())
        self.load_root()

    # -- workers -----------------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load_root(self) -> None:
        """Index the root, show its studies, then predict them with the model (cache first)."""
        from cxr_core.store import StudyIndex

        workspace = self.workspace
        worker = get_current_worker()
        first, self._first_load = self._first_load, False
        with StudyIndex() as index:
            indexed = index.load(workspace.root, cancel=worker.cancelled_event)
        self.call_from_thread(self._studies_loaded, indexed.root, indexed.studies, indexed.space)
        if worker.is_cancelled:
            return
        if self.predictions_file is not None:
            try:
                self._read_predictions(indexed)
            except CxrError as err:
                if not first:
                    raise  # a root opened later from the app: a notification, the app stays
                self.startup_error = str(err)  # the root it was started on: one line from the CLI, not an empty list
                self.call_from_thread(self.exit, None, 1)
            return
        if workspace.model is None:
            return
        self._predict(worker.cancelled_event, indexed)

    def _read_predictions(self, indexed: IndexedRoot) -> None:
        """The predictions file laid over the root's studies (no model, no torch): say how its rows matched."""
        from cxr_core.data import image_base
        from cxr_core.predictions import Predictions, match_root

        start = time.perf_counter()
        path = self.predictions_file
        match = match_root(Predictions.read(path), indexed.studies, image_base(indexed.root), source=path,
                           root=indexed.root)
        preds = match.predictions
        meta = preds.meta
        fingerprint = meta.get("fingerprint") if isinstance(meta.get("fingerprint"), str) else None
        model = meta.get("model") if isinstance(meta.get("model"), str) else None
        name = meta.get("model_name") if isinstance(meta.get("model_name"), str) else None
        self.call_from_thread(self._file_loaded, path, fingerprint, model, name)
        self._load_file_thresholds(model, fingerprint)
        errors = {item["path"]: item["reason"] for item in indexed.scan.report.unreadable_files}
        self.post_message(PredictionsReady(preds, errors, 0, 0, time.perf_counter() - start,
                                           source=match.summary(path, indexed.root)))

    def _file_loaded(self, path: Path, fingerprint: str | None, model: str | None, name: str | None) -> None:
        """The header names the predictions file and the model that made it (its run id or file), when it says."""
        from cxr_core.runs import RunDir

        if name is None and model is not None:
            run = RunDir.of_checkpoint(model)
            name = run.id if run is not None else Path(model).name
        self.model_name, self.file_fingerprint = name, fingerprint
        made_by = " · ".join(part for part in (f"model {name}" if name else "",
                                               fingerprint[:8] if fingerprint else "") if part)
        self.sub_title = visible(f"predictions {path.name}" + (f" · {made_by}" if made_by else "")
                                 + f" · reader {self.workspace.reviewer}")

    def _load_file_thresholds(self, model: str | None, fingerprint: str | None) -> None:
        """--thresholds, else the thresholds saved for the model that made the file (as with that model loaded),
        else those saved by fingerprint (where the thresholds screen saves them without a model)."""
        from cxr_core.eval import load_thresholds, thresholds_path_for

        workspace = self.workspace
        if workspace.thresholds_path is None and (model or fingerprint):
            candidates = [thresholds_path_for(model or "unnamed", fingerprint),
                          thresholds_path_for("unnamed", fingerprint)]
            workspace.thresholds_path = next((c for c in candidates if c.is_file()), None)
        if workspace.thresholds_path is not None and workspace.thresholds_path.is_file():
            workspace.thresholds = dict(load_thresholds(workspace.thresholds_path).thresholds)

    def recorded_model(self) -> tuple[str | None, str | None]:
        """(fingerprint, name) a decision is recorded with: the loaded model's, else the one that made the
        predictions file under review (its meta), else (None, None)."""
        if self.predictor is not None:
            return self.predictor.fingerprint, self.model_name
        if self.predictions_file is not None:
            return self.file_fingerprint, self.model_name
        return None, None

    def _predict(self, cancel: threading.Event, indexed: IndexedRoot) -> None:
        from cxr_core.infer import Predictor, load_model, predict_root, resolve_checkpoint

        workspace = self.workspace
        path = resolve_checkpoint(workspace.model)
        if self.predictor is None or self.predictor.loaded.path != path:
            self.predictor = Predictor(load_model(path), device="auto", cache=self.use_cache, processes=False)
        self.call_from_thread(self._model_loaded, path, self.predictor.fingerprint)
        self._load_thresholds(path, self.predictor.fingerprint)
        with self.model_lock:
            result = predict_root(self.predictor, indexed, cancel=cancel, use_cache=self.use_cache,
                                  progress=lambda done, total: self.post_message(PredictionProgressed(done, total)))
        if result.cancelled:
            return
        self.post_message(PredictionsReady(result.predictions, result.errors, result.cached, result.computed,
                                           result.seconds))

    @work(thread=True, exclusive=True, group="disagreement", exit_on_error=False)
    def measure_disagreement(self) -> None:
        """Run the model on every predicted study under several views (and MC-dropout samples when it has dropout)
        for the worklist's disagreement order; progress as a prediction's. Needs the model (not a predictions file)."""
        from cxr_core.data import image_base
        from cxr_core.infer import study_disagreement

        workspace, predictor = self.workspace, self.predictor
        preds, root, order = workspace.predictions, workspace.root, list(workspace.study_order)
        if predictor is None or preds is None or root is None:
            return
        worker = get_current_worker()
        information, errors = study_disagreement(  # the model lock a batch at a time: Grad-CAM waits a batch
            predictor, preds, order, image_base(root), cancel=worker.cancelled_event, lock=self.model_lock,
            progress=lambda done, total: self.post_message(PredictionProgressed(done, total)))
        if not worker.is_cancelled:
            self.call_from_thread(self._disagreement_measured, preds, information, len(errors))

    def _disagreement_measured(self, preds, information, unreadable: int) -> None:
        import numpy as np

        workspace = self.workspace
        if workspace.predictions is not preds:  # other predictions arrived meanwhile: this is not about them
            return
        workspace.study_disagreement = information
        self.notify(f"disagreement measured for {int((~np.isnan(information).all(axis=1)).sum()):,} studies"
                    + (f"; {unreadable} images unreadable" if unreadable else ""), timeout=4)
        self.disagreement_version += 1

    def _model_loaded(self, checkpoint: Path, fingerprint: str) -> None:
        """The header names the model every screen is showing: its run id (or file) and fingerprint."""
        from cxr_core.runs import RunDir

        run = RunDir.of_checkpoint(checkpoint)
        self.model_name = run.id if run is not None else checkpoint.name
        self.sub_title = visible(f"model {'run ' if run is not None else ''}{self.model_name} · {fingerprint[:8]} · "
                                 f"reader {self.workspace.reviewer}")

    def set_blind(self, level: int) -> None:
        """Blind reading for every screen: 1 hides the data set's labels, 2 the model's output as well."""
        self.workspace.blind = level
        self.blind_version += 1

    def _load_thresholds(self, checkpoint: Path, fingerprint: str) -> None:
        from cxr_core.eval import load_thresholds, thresholds_path_for

        workspace = self.workspace
        if workspace.thresholds_path is None:
            candidate = thresholds_path_for(checkpoint, fingerprint)  # where the thresholds screen saves them
            if candidate.is_file():
                workspace.thresholds_path = candidate
        if workspace.thresholds_path is not None and workspace.thresholds_path.is_file():
            workspace.thresholds = dict(load_thresholds(workspace.thresholds_path).thresholds)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The TUI's error boundary: a failed worker is one notification naming the file and the cause."""
        if event.state is WorkerState.ERROR:
            self.notify(error_text(event.worker.error), title="error", severity="error", timeout=10)

    # -- state changes -----------------------------------------------------------------------------------------

    def _studies_loaded(self, root: Path, studies: list[Study], space) -> None:
        workspace = self.workspace
        workspace.root = root
        workspace.studies = {s.id: s for s in studies}
        workspace.study_order = [s.id for s in studies]
        workspace.label_space = space
        save_session(workspace)
        self.studies_version += 1
        # Long-lived objects (Textual's ~80k, the studies) out of the collector's way: full collections
        # walking them were the p99 of a worklist key press (benchmarks/tui_worklist.py: 119 -> 56 ms).
        gc.freeze()

    def on_prediction_progressed(self, message: PredictionProgressed) -> None:
        self.progress = (message.done, message.total)

    def on_predictions_ready(self, message: PredictionsReady) -> None:
        workspace = self.workspace
        preds = message.predictions
        workspace.last_load = message
        workspace.predictions = preds
        workspace.errors = message.errors
        for label in preds.labels:
            workspace.thresholds.setdefault(label, 0.5)
        workspace.study_probs = preds.study_scores(workspace.study_order)
        self.workers.cancel_group(self, "disagreement")  # measured (or being measured) for other predictions
        if workspace.study_disagreement is not None:
            workspace.study_disagreement = None
            self.disagreement_version += 1
        workspace.image_rows = preds.rows_by_study()
        save_session(workspace)
        note = message.source or f"{len(preds):,} images: {message.cached:,} from the cache, {message.computed:,} computed"
        if message.errors:
            note += f"; {len(message.errors)} unreadable"
        self.notify(note, timeout=4)
        ood = preds.meta.get("ood") if isinstance(preds.meta.get("ood"), dict) else None
        workspace.out_of_distribution = ood.get("message") if ood and ood.get("far") else None
        if workspace.out_of_distribution:  # the model was not trained on films like these: say so, and keep saying it
            self.notify(workspace.out_of_distribution, title="out of distribution", severity="warning", timeout=15)
            if "OUT OF DISTRIBUTION" not in self.sub_title:
                self.sub_title = "⚠ OUT OF DISTRIBUTION · " + self.sub_title
        self.predictions_version += 1

    def on_thresholds_changed(self, message: ThresholdsChanged) -> None:
        self.workspace.thresholds.update(message.thresholds)
        if message.saved_to is not None:
            self.workspace.thresholds_path = message.saved_to
            save_session(self.workspace)
        self.thresholds_version += 1

    def on_review_recorded(self, message: ReviewRecorded) -> None:
        self.reviewed = (self.reviewed[0] + 1, message.study)

    def on_model_chosen(self, message: ModelChosen) -> None:
        self.predictions_file = None  # a model now predicts: the file's rows give way to its own
        self.file_fingerprint = self.model_name = None
        self.workspace.model = message.path
        self.workspace.thresholds_path = None
        self.workspace.thresholds = {}
        self.notify(f"reviewing with {message.path}")
        if self.workspace.root is not None:
            self.open_root(self.workspace.root)

    def on_root_chosen(self, message: RootChosen) -> None:
        self.open_root(message.path)

    def notify(self, message: str, *, title: str = "", severity: str = "information", timeout: float | None = None,
               markup: bool = True) -> None:
        """Every notification (screens' included: ``Widget.notify`` lands here) is plain text with outside text
        made visible: an error naming a file called ``[/]`` or ``\x1b]0;...`` shows the name, never acts on it."""
        super().notify(visible(message, lines=True), title=visible(title), severity=severity, timeout=timeout,
                       markup=False)

    # -- what screens ask of the app ---------------------------------------------------------------------------

    @property
    def reviews(self):
        """The reviews database, opened once for the app (every decision is still its own committed transaction)."""
        if self._reviews is None:
            from cxr_core.store import ReviewStore

            self._reviews = ReviewStore()
        return self._reviews

    def on_unmount(self) -> None:
        if self._reviews is not None:
            self._reviews.close()

    # -- actions -----------------------------------------------------------------------------------------------

    def action_help(self) -> None:
        from cxr_tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_thresholds(self) -> None:
        from cxr_tui.screens.thresholds import ThresholdsScreen

        if isinstance(self.screen, ThresholdsScreen):
            return
        if self.workspace.predictions is None:
            self.notify("no predictions yet: open a data set with a model (or --predictions FILE) first",
                        severity="warning")
            return
        self.push_screen(ThresholdsScreen())

    def action_training(self) -> None:
        from cxr_tui.screens.training import TrainingScreen

        if not isinstance(self.screen, TrainingScreen):
            self.push_screen(TrainingScreen())
