"""Screen 1, the worklist: every study of the root, what the model flags, sortable, filterable, searchable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Footer, Header, Input, ProgressBar, Static

from cxr_core.text import visible
from cxr_tui.dialogs import FolderPicker
from cxr_tui.messages import RootChosen
from cxr_tui.screens.base import CxrScreen
from cxr_tui.study_list import StudyList
from cxr_tui.widgets.worklist import WorklistTable

SORTS = (("max_prob", True, "max probability"), ("n_flagged", True, "number flagged"),
         ("uncertain", True, "most uncertain first (to learn from)"), ("entropy", True, "entropy"),
         ("disagreement", True, "disagreement across views (to learn from)"),
         ("study", False, "study id"))






class WorklistScreen(CxrScreen[None]):
    BINDINGS = [
        Binding("enter", "open", "Open study", show=False, id="worklist.open_study"),
        Binding("f", "toggle_flagged", "Flagged", id="worklist.flagged"),
        Binding("o", "cycle_sort", "Sort", show=False, id="worklist.sort"),
        Binding("d", "cycle_finding", "Sort by a finding", show=False, id="worklist.finding"),
        Binding("m", "toggle_missing", "Studies without image", show=False, id="worklist.missing"),
        Binding("B", "cycle_blind", "Blind reading", key_display="B", show=False, id="worklist.blind"),
        Binding("n", "next_informative", "Next to review", show=False, id="worklist.next_informative"),
        Binding("D", "adjudication", "Disagreements", key_display="D", show=False, id="worklist.adjudication"),
        Binding("r", "toggle_unreviewed", "Unreviewed", show=False, id="worklist.unreviewed"),
        Binding("v", "cycle_split", "Split", show=False, id="worklist.split"),
        Binding("slash", "search", "Search", key_display="/", id="worklist.search"),
        Binding("b", "browse", "Folder", show=False, id="worklist.browse"),
        Binding("escape", "clear", "Clear filters", show=False, id="worklist.clear"),
        Binding("t", "app.thresholds", "Thresholds", id="worklist.thresholds"),  # the app's keys, shown here
        Binding("g", "app.training", "Training", id="worklist.training"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.study_list = StudyList([])
        self.sort_index = 0
        self.flagged_only = False
        self.unreviewed_only = False
        self.finding: str | None = None
        self.split: str | None = None
        self.missing = 0
        self.hide_missing = False
        """Studies without an image are hidden (on by default when they are most of the rows)."""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="worklist-bar"):
            yield Static("", id="worklist-status", markup=False)
            yield ProgressBar(id="worklist-progress", show_eta=False)
        yield WorklistTable(self.study_list, id="worklist")
        yield Input(placeholder="study id (enter jumps to the first match, escape closes)", id="worklist-search")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#worklist-search", Input).display = False
        self.query_one("#worklist-progress", ProgressBar).display = False
        root = self.app.workspace.root
        self._status(f"indexing {root} …" if root else "no data set")
        if self.app.workspace.studies:
            self.studies_loaded()
            if self.app.workspace.predictions is not None:
                self.predictions_ready()
        app = self.app
        self.watch(app, "studies_version", lambda _: self.studies_loaded(), init=False)
        self.watch(app, "progress", self.prediction_progressed, init=False)
        self.watch(app, "predictions_version", lambda _: self.predictions_ready(), init=False)
        self.watch(app, "thresholds_version", lambda _: self.thresholds_changed(), init=False)
        self.watch(app, "reviewed", lambda event: self.review_changed(event[1]), init=False)
        self.watch(app, "blind_version", lambda _: self.blind_changed(), init=False)
        self.watch(app, "disagreement_version", lambda _: self.disagreement_measured(), init=False)
        self.query_one(WorklistTable).focus()

    # -- the workspace changed (watched on the app) -------------------------------------------------------------

    def studies_loaded(self) -> None:
        studies = list(self.app.workspace.studies.values())
        space = self.app.workspace.label_space
        self.study_list = StudyList.from_studies(studies, findings=space.labels if space is not None else None)
        missing = {s.id: "missing" for s in studies if not s.images}
        self.missing = len(missing)
        self.hide_missing = len(missing) > len(studies) / 2  # a partial download: show what can be read
        if missing:
            self.study_list.update_status(missing)
        self._refresh_reviews()
        self._apply()
        table = self.query_one(WorklistTable)
        table.blind = self.app.workspace.blind
        table.set_study_list(self.study_list)
        model = self.app.workspace.model
        self._status(f"{len(studies):,} studies" + (f" ({len(missing):,} without an image: ∅)" if missing else "")
                     + ("" if model else " · no model: press g to train one, or start with --model"))

    def prediction_progressed(self, progress: tuple[int, int]) -> None:
        done, total = progress
        bar = self.query_one("#worklist-progress", ProgressBar)
        bar.display = done < total
        bar.update(total=total, progress=done)

    def predictions_ready(self) -> None:
        workspace = self.app.workspace
        if workspace.study_probs is None:
            return
        self.query_one("#worklist-progress", ProgressBar).display = False
        self.study_list.update_predictions(workspace.study_probs, workspace.thresholds, workspace.predictions.labels)
        self._apply()
        if SORTS[self.sort_index][0] == "disagreement" and self.finding is None:
            self._measure_disagreement()
        self.query_one(WorklistTable).move_cursor(0)  # fresh predictions: start at the most suspicious study

    def disagreement_measured(self) -> None:
        information = self.app.workspace.study_disagreement
        shape = (self.study_list.total, len(self.study_list.labels))
        if information is None:  # reset (new predictions): the old measurement no longer orders anything
            information = np.full(shape, np.nan, dtype=np.float32)
        if information.shape != shape:
            return
        self.query_one("#worklist-progress", ProgressBar).display = False
        self.study_list.update_disagreement(information)
        self._apply()
        if SORTS[self.sort_index][0] == "disagreement":
            self.query_one(WorklistTable).move_cursor(0)  # the most disputed study

    def _measure_disagreement(self) -> bool:
        """Start measuring the studies' disagreement unless it is measured; False when it cannot be (no model)."""
        app = self.app
        if app.workspace.study_disagreement is not None:
            return True
        if app.workspace.model is None or app.predictions_file is not None:
            return False
        if app.predictor is not None and app.workspace.predictions is not None \
                and not any(w.group == "disagreement" and w.is_running for w in app.workers):
            app.measure_disagreement()
        return True

    def thresholds_changed(self) -> None:
        if self.app.workspace.predictions is not None:
            self.study_list.update_thresholds(self.app.workspace.thresholds)
            self._apply()

    def blind_changed(self) -> None:
        self.query_one(WorklistTable).set_blind(self.app.workspace.blind)
        self._status()

    def review_changed(self, study_id: str) -> None:
        self._refresh_reviews(study_id)
        self.query_one(WorklistTable).refresh_view()

    # -- filters and sort ---------------------------------------------------------------------------------------

    def _apply(self) -> None:
        if self.finding is not None and self.finding in self.study_list.labels:
            self.study_list.sort("finding", True, self.finding)
        else:
            key, descending, _ = SORTS[self.sort_index]
            self.study_list.sort(key, descending)
        self.study_list.filter(self.flagged_only, None, self.unreviewed_only, self.split, self.hide_missing)
        self.query_one(WorklistTable).refresh_view()
        self._status()

    def _status(self, text: str | None = None) -> None:
        if text is None:
            order = f"p({self.finding})" if self.finding else SORTS[self.sort_index][2]
            parts = [f"{len(self.study_list):,} of {self.study_list.total:,} studies", f"sorted by {order}"]
            if self.missing:
                parts.append(f"{self.missing:,} without an image " + ("hidden (m shows)" if self.hide_missing
                                                                       else "(∅; m hides)"))
            if self.flagged_only:
                parts.append("flagged only")
            if self.app.workspace.out_of_distribution:
                parts.insert(0, "⚠ OUT OF DISTRIBUTION")
            blind = self.app.workspace.blind
            if blind:
                parts.append("BLIND: labels hidden" + (", model hidden" if blind > 1 else ""))
            if self.unreviewed_only:
                parts.append("unreviewed")
            if self.split:
                parts.append(f"split {self.split}")
            if self.app.workspace.predictions is None and self.app.workspace.model is not None:
                parts.append("predicting…")
            elif SORTS[self.sort_index][0] == "disagreement" and not self.finding \
                    and self.app.workspace.study_disagreement is None:
                parts.append("measuring disagreement…")
            text = " · ".join(parts)
        self.query_one("#worklist-status", Static).update(visible(text))

    def _refresh_reviews(self, study: str | None = None) -> None:
        """Review status of every study, or of ``study`` alone after a decision on it (one row, not the root)."""
        root = self.app.workspace.root
        if root is None:
            return
        try:
            status = self.app.reviews.status_by_study(root, study=study, reviewer=self.app.workspace.reviewer)
        except Exception as err:  # a damaged reviews database must not block the worklist
            self.notify(f"reviews unavailable: {err}", severity="warning")
            return
        if study is not None:
            status = {study: status.get(study, "")}
        self.study_list.update_status(status)

    def action_toggle_flagged(self) -> None:
        self.flagged_only = not self.flagged_only
        self._apply()

    def action_toggle_unreviewed(self) -> None:
        self.unreviewed_only = not self.unreviewed_only
        self._apply()

    def action_cycle_sort(self) -> None:
        self.sort_index = (self.sort_index + 1) % len(SORTS)
        if SORTS[self.sort_index][0] == "disagreement" and not self._measure_disagreement():
            self.notify("disagreement runs the model on each study under several views: review with a model "
                        "(--model) to sort by it", timeout=4)
            self.sort_index = (self.sort_index + 1) % len(SORTS)
        self._apply()

    def action_cycle_finding(self) -> None:
        labels = self.study_list.labels
        if not labels:
            self.notify("no predictions yet", severity="warning")
            return
        options = [None, *labels]
        self.finding = options[(options.index(self.finding) + 1) % len(options)] if self.finding in options else None
        self._apply()
        self.query_one(WorklistTable).move_cursor(0)  # the most probable study for that finding

    def action_next_informative(self) -> None:
        """Open the unreviewed study the model is least sure of (its answer teaches the next model most)."""
        if self.app.workspace.predictions is None:
            self.notify("no predictions yet: the model's uncertainty orders what to review next", severity="warning")
            return
        order = "disagreement" if SORTS[self.sort_index][0] == "disagreement" and self.finding is None \
            and self.study_list.has_disagreement else "uncertain"
        study = self.study_list.most_informative(order)
        if study is None:
            self.notify("every study with an image is reviewed", timeout=3)
            return
        self._open(study)

    def action_adjudication(self) -> None:
        """Where readers disagree: each one's call, and the adjudicated decision."""
        from cxr_tui.screens.adjudication import AdjudicationScreen

        self.app.push_screen(AdjudicationScreen())

    def action_toggle_missing(self) -> None:
        self.hide_missing = not self.hide_missing
        self._apply()

    def action_cycle_blind(self) -> None:
        """Blind reading: hide the data set's labels, then the model's output too, then show all again."""
        self.app.set_blind((self.app.workspace.blind + 1) % 3)

    def action_cycle_split(self) -> None:
        options = [None, *self.study_list.splits]
        self.split = options[(options.index(self.split) + 1) % len(options)] if self.split in options else None
        self._apply()

    def action_clear(self) -> None:
        search = self.query_one("#worklist-search", Input)
        if search.display:
            search.display = False
            self.query_one(WorklistTable).focus()
            return
        self.flagged_only = self.unreviewed_only = False
        self.finding = self.split = None
        self._apply()

    def action_search(self) -> None:
        search = self.query_one("#worklist-search", Input)
        search.display = True
        search.value = ""
        search.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "worklist-search":
            return
        table = self.query_one(WorklistTable)
        position = self.study_list.search(event.value.strip()) if event.value.strip() else None
        event.input.display = False
        table.focus()
        if position is None:
            self.notify(f"no study id contains {event.value!r} in this view", severity="warning")
        else:
            table.move_cursor(position)

    def action_browse(self) -> None:
        start = self.app.workspace.root or Path.home()
        start = start if start.is_dir() else start.parent

        def chosen(path: Path | None) -> None:
            if path is not None:
                self.app.post_message(RootChosen(path))

        self.app.push_screen(FolderPicker(start.parent if start.parent != start else start), chosen)

    def action_open(self) -> None:
        table = self.query_one(WorklistTable)
        if table.study_id is not None:
            self._open(table.study_id)

    def on_worklist_table_study_opened(self, event: WorklistTable.StudyOpened) -> None:
        self._open(event.study_id)

    def _open(self, study_id: str) -> None:
        from cxr_tui.screens.study import StudyScreen

        self.app.push_screen(StudyScreen(study_id, self.neighbour))

    def neighbour(self, study_id: str, step: int, unreviewed: bool = False) -> str | None:
        """The study ``step`` rows away in the current view (the study screen's next / previous), or with
        ``unreviewed`` the first study after it (wrapping) that is not fully reviewed and has an image."""
        study_list = self.study_list
        position = study_list.position_of(study_id)
        if unreviewed:
            n = len(study_list)
            start = -1 if position is None else position
            target = next(((start + i) % n for i in range(1, n + 1)
                           if study_list.status_at((start + i) % n) in ("", "partial")
                           and study_list.study_at((start + i) % n) != study_id), None)
            if target is None:
                return None
        else:
            if position is None:
                return None
            target = position + step
            if not 0 <= target < len(study_list):
                return None
        self.query_one(WorklistTable).move_cursor(target)
        return study_list.study_at(target)
