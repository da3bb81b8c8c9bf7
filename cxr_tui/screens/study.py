"""Screen 2, one study: the image inline with the Grad-CAM of the selected finding, and the findings to review.

Every decision (accept / reject / uncertain) and note is committed to the reviews database before the
screen shows it: a killed terminal loses nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Input, Static

from cxr_core.errors import CxrError
from cxr_core.text import name_text, visible
from cxr_tui.messages import ReviewRecorded
from cxr_tui.screens.base import CxrScreen
from cxr_tui.widgets.xray import XRayView

DECISION_GLYPH = {"accept": "✓ accept", "reject": "✗ reject", "uncertain": "? unsure", "clear": "", None: ""}
"""Decisions as the findings table shows them (at most 8 cells, 10 with the note mark: nothing clipped at 100
columns with NIH's longest finding name)."""
STUDY_READS = {
    "normal": "normal: every finding rejected",
    "agree": "agreed with the model: flags accepted, the rest rejected",
    "rest": "every finding still undecided rejected",
}
"""Study-level reads (one key each) and how the screen reports them."""
Neighbour = Callable[[str, int, bool], "str | None"]
BAR = 8


def probability_cell(prob: float, threshold: float) -> Text:
    """``0.83 ████████▏·`` with the threshold's position marked, flagged values in bold."""
    if np.isnan(prob):
        return Text("—")
    filled = int(round(prob * BAR))
    mark = min(BAR - 1, int(threshold * BAR))
    cells = ["█" if i < filled else "·" for i in range(BAR)]
    cells[mark] = "│" if cells[mark] == "·" else "┃"
    flagged = prob >= threshold
    return Text(f"{prob:4.2f} " + "".join(cells), style="bold" if flagged else "")


class StudyScreen(CxrScreen[None]):
    BINDINGS = [
        Binding("escape", "back", "Back", show=False, id="study.back"),
        Binding("n", "next_study", "Next", show=False, id="study.next"),
        Binding("p", "previous_study", "Previous", show=False, id="study.previous"),
        Binding("N", "next_unreviewed", "Next unread", key_display="N", id="study.next_unreviewed"),
        Binding("a", "decide('accept')", "Accept", id="study.accept"),
        Binding("x", "decide('reject')", "Reject", id="study.reject"),
        Binding("u", "decide('uncertain')", "Unsure", id="study.uncertain"),
        Binding("0", "read_study('normal')", "Normal", id="study.normal"),
        Binding("A", "read_study('agree')", "Agree", key_display="A", id="study.agree"),
        Binding("X", "read_study('rest')", "Reject the rest", key_display="X", show=False, id="study.rest"),
        Binding("f", "next_flagged", "Next flag", show=False, id="study.next_flagged"),
        Binding("B", "cycle_blind", "Blind reading", key_display="B", show=False, id="study.blind"),
        Binding("e", "note", "Note", show=False, id="study.note"),
        Binding("c", "toggle_cam", "CAM", id="study.cam"),
        Binding("w", "window", "Window", show=False, id="study.window"),
        Binding("i", "invert", "Invert", show=False, id="study.invert"),
        Binding("plus,equals_sign", "zoom(1)", "Zoom in", key_display="+", show=False, id="study.zoom_in"),
        Binding("minus", "zoom(-1)", "Zoom out", key_display="-", show=False, id="study.zoom_out"),
        Binding("z", "reset_view", "Whole film", show=False, id="study.reset_view"),
        Binding("left_square_bracket", "adjust_window(-16, 0)", "Window narrower", show=False,
                id="study.window_narrower"),
        Binding("right_square_bracket", "adjust_window(16, 0)", "Window wider", show=False, id="study.window_wider"),
        Binding("left_curly_bracket", "adjust_window(0, -8)", "Level down", show=False, id="study.level_down"),
        Binding("right_curly_bracket", "adjust_window(0, 8)", "Level up", show=False, id="study.level_up"),
        Binding("F", "fullscreen", "Full screen", key_display="F", show=False, id="study.fullscreen"),
        Binding("shift+left", "pan(-1, 0)", "Pan left", show=False, id="study.pan_left"),
        Binding("shift+right", "pan(1, 0)", "Pan right", show=False, id="study.pan_right"),
        Binding("shift+up", "pan(0, -1)", "Pan up", show=False, id="study.pan_up"),
        Binding("shift+down", "pan(0, 1)", "Pan down", show=False, id="study.pan_down"),
        Binding("j", "finding(1)", "Next finding", show=False, id="study.finding_down"),
        Binding("k", "finding(-1)", "Previous finding", show=False, id="study.finding_up"),
        Binding("m", "next_image", "Next image", show=False, id="study.image"),
        Binding("b", "toggle_prior", "Prior study", show=False, id="study.prior"),
    ]

    def __init__(self, study_id: str, neighbour: Neighbour | None = None) -> None:
        """``neighbour(study, step, unreviewed)``: the study ``step`` places away in the worklist's order (n / p),
        or with ``unreviewed`` the next one not yet fully reviewed (N, and after a study-level read)."""
        super().__init__()
        self.study_id = study_id
        self.neighbour = neighbour
        self.image_index = 0
        self.pixels: np.ndarray | None = None
        self.cams: dict[tuple[str, int, str], np.ndarray] = {}
        self.decisions: dict[str, object] = {}
        self.dicom_fields: dict[str, str] = {}  # non-identifying header fields only (cxr_core.images.dicom.SAFE_FIELDS)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="study-body"):
            yield XRayView(self.app.image_protocol, id="study-image")
            yield XRayView(self.app.image_protocol, id="study-prior")
            with Vertical(id="study-side"):
                yield Static("", id="study-title")
                yield DataTable(id="findings", cursor_type="row", zebra_stripes=False)
                yield Input(placeholder="note for the selected finding (enter saves, escape cancels)", id="study-note")
                with VerticalScroll(id="study-info-scroll"):
                    yield Static("", id="study-info")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#findings", DataTable)
        table.add_columns("finding", "p", "flag", "review")
        self.query_one("#study-note", Input).display = False
        self.query_one("#study-prior", XRayView).display = False
        self.load_study()
        table.focus()
        self.watch(self.app, "predictions_version", lambda _: self._fill_findings(), init=False)
        self.watch(self.app, "thresholds_version", lambda _: self._fill_findings(), init=False)
        self.watch(self.app, "blind_version", lambda _: self.load_study(), init=False)

    # -- content ------------------------------------------------------------------------------------------------

    @property
    def study(self):
        return self.app.workspace.studies.get(self.study_id)

    def load_study(self) -> None:
        study = self.study
        if study is None:
            self.query_one("#study-title", Static).update(Text(f"{name_text(self.study_id)}: not in this data set"))
            return
        self.image_index = min(self.image_index, max(0, len(study.images) - 1))
        self.dicom_fields = {}
        self._load_decisions()
        self._fill_findings()
        self._cursor_to(self._top_flag())
        self._fill_info()
        self.pixels = None
        if self.query_one("#study-prior", XRayView).display:
            self._show_prior()
        if not study.images:
            self.query_one("#study-image", XRayView).show(None, "no image on disk for this study (labels only: a "
                                                                "partial download?)")
            return
        self.query_one("#study-image", XRayView).show(None, "loading image…")
        self.load_image(self.study_id, self.image_index)

    def _labels(self) -> list[str]:
        preds = self.app.workspace.predictions
        if preds is not None:
            return list(preds.labels)
        space = self.app.workspace.label_space
        return list(space.findings) if space is not None else []

    @property
    def model_hidden(self) -> bool:
        """Blind reading at level 2: the model's output is not shown (nor used by a study-level read)."""
        return self.app.workspace.blind >= 2

    def _probs(self) -> np.ndarray | None:
        if self.model_hidden:
            return None
        rows = self.app.workspace.study_probabilities(self.study_id)
        if rows is None or not len(rows):
            return None
        return rows[min(self.image_index, len(rows) - 1)]

    def _study_scores(self) -> np.ndarray | None:
        """The study's score per finding (max over its images; what the worklist flags), or None."""
        if self.model_hidden:
            return None
        rows = self.app.workspace.study_probabilities(self.study_id)
        if rows is None or not len(rows):
            return None
        return np.fmax.reduce(rows, axis=0)

    def _flagged(self) -> list[str]:
        """Findings the model flags on the image shown, highest probability first."""
        probs = self._probs()
        if probs is None:
            return []
        workspace = self.app.workspace
        pairs = [(float(probs[k]), label) for k, label in enumerate(self._labels())
                 if not np.isnan(probs[k]) and probs[k] >= workspace.threshold(label)]
        return [label for _, label in sorted(pairs, key=lambda pair: -pair[0])]

    def _top_flag(self) -> str | None:
        """Where a study opens: its most probable flagged finding, else its most probable finding."""
        flagged = self._flagged()
        if flagged:
            return flagged[0]
        probs = self._probs()
        if probs is None or np.isnan(probs).all():
            return None
        return self._labels()[int(np.nanargmax(probs))]

    def _cursor_to(self, label: str | None) -> None:
        labels = self._labels()
        if label in labels:
            self.query_one("#findings", DataTable).move_cursor(row=labels.index(label))

    def _fill_findings(self) -> None:
        table = self.query_one("#findings", DataTable)
        keep = table.cursor_row
        table.clear()
        probs = self._probs()
        labels = self._labels()
        workspace = self.app.workspace
        for k, label in enumerate(labels):
            prob = float(probs[k]) if probs is not None else float("nan")
            threshold = workspace.threshold(label)
            flagged = probs is not None and prob >= threshold
            review = self.decisions.get(label)
            decision = getattr(review, "decision", None)
            note = " ✎" if getattr(review, "note", None) else ""
            table.add_row(Text(visible(label)), probability_cell(prob, threshold), " ●" if flagged else "",
                          Text(DECISION_GLYPH.get(decision, decision or "") + note), key=label)
        if labels:
            table.move_cursor(row=min(max(keep, 0), len(labels) - 1))

    def _fill_info(self) -> None:
        study = self.study
        title = Text.assemble((name_text(study.id), "bold"),
                              f"  patient {name_text(study.patient_id)}  {visible(study.view or '')}  "
                              f"{visible(study.split or '')}")
        if len(study.images) > 1:
            title.append(f"  image {self.image_index + 1}/{len(study.images)} (m: next)")
        space = self.app.workspace.label_space
        if self.app.workspace.blind:
            title.append("\nBLIND" + (": labels and model hidden" if self.model_hidden else ": labels hidden"),
                         style="bold")
        elif space is not None and "1" in (study.labels or ""):
            known = [name for name, state in zip(space.labels, study.labels, strict=False) if state == "1"]
            title.append("\nknown: " + ", ".join(visible(name) for name in known), style="italic")
        self.query_one("#study-title", Static).update(title)
        info = Text()

        def line(*parts: str | tuple[str, str]) -> None:
            if info:
                info.append("\n")
            info.append_text(Text.assemble(*parts))

        meta = study.meta or {}
        for key in ("age", "sex"):
            if meta.get(key) not in (None, ""):
                line(f"{key}: {visible(meta[key])}")
        report = meta.get("report") if isinstance(meta.get("report"), dict) else None
        sections = report or {k: meta[k] for k in ("indication", "comparison", "findings", "impression") if meta.get(k)}
        for name, text in sections.items():
            if text:  # report text keeps its line breaks; anything else in it is shown, never acted on
                line("\n", (visible(name).upper(), "bold"), "\n", visible(text, lines=True))
        notes = [(label, review.note) for label, review in self.decisions.items() if getattr(review, "note", None)]
        if notes:
            line("\n", ("NOTES", "bold"))
            for label, note in notes:
                line(f"✎ {visible(label)}: ", visible(note, lines=True))
        image = study.images[self.image_index] if study.images else None
        if self.dicom_fields:
            line("\n", ("DICOM", "bold"))
            for k, v in self.dicom_fields.items():
                line(f"{visible(k)}: {visible(v)}")
        if self.app.workspace.show_phi and image is not None and str(image.path).lower().endswith((".dcm", ".dicom")):
            for text in self._phi(image.path):
                line(text)
        error = self.app.workspace.errors.get(image.path) if image is not None else None
        if error:
            line("\n", (f"unreadable: {visible(error)}", "red"))
        self.query_one("#study-info", Static).update(info if info else Text("no report for this study", style="dim"))

    def _phi(self, relpath: str) -> list[str]:
        from cxr_core.data import image_base
        from cxr_core.images import dicom_identifiers

        try:
            fields = dicom_identifiers(image_base(self.app.workspace.root) / relpath)
        except CxrError as err:
            return [f"identifiers unreadable: {err}"]
        return ["\nidentifiers (--show-phi)", *(f"{visible(k)}: {visible(v)}" for k, v in fields.items())]

    def _load_decisions(self) -> None:
        try:
            latest = self.app.reviews.latest(self.app.workspace.root, self.study_id, reviewer=self.app.workspace.reviewer)
        except CxrError as err:
            self.notify(str(err), severity="error")
            latest = {}
        self.decisions = {finding: review for (_, finding), review in latest.items()}

    @work(thread=True, exclusive=True, group="study-image", exit_on_error=False)
    def load_image(self, study_id: str, index: int) -> None:
        from cxr_core.data import image_base
        from cxr_core.images import read_xray

        study = self.app.workspace.studies[study_id]
        path = image_base(self.app.workspace.root) / study.images[index].path
        try:
            xray = read_xray(path)
        except CxrError as err:
            self.app.call_from_thread(self._image_failed, study_id, str(err))
            return
        self.app.call_from_thread(self._image_loaded, study_id, index, xray.as_uint8(), dict(xray.info.dicom))

    def _image_loaded(self, study_id: str, index: int, pixels: np.ndarray, dicom: dict[str, str]) -> None:
        if (study_id, index) != (self.study_id, self.image_index):
            return  # the user moved on
        self.pixels = pixels
        if dicom:
            self.dicom_fields = dicom
            self._fill_info()
        view = self.query_one("#study-image", XRayView)
        view.show(pixels)
        if view.state.cam:
            self._request_cam()

    # -- the prior study of the same patient, side by side ---------------------------------------------------------

    def action_toggle_prior(self) -> None:
        view = self.query_one("#study-prior", XRayView)
        view.display = not view.display
        if view.display:
            self._show_prior()

    def _show_prior(self) -> None:
        view = self.query_one("#study-prior", XRayView)
        prior = self.app.workspace.prior_of(self.study_id)
        if prior is None:
            view.caption_extra = ""
            earlier = self.app.workspace.earlier_studies(self.study_id)
            view.show(None, f"{earlier} earlier stud{'ies' if earlier != 1 else 'y'} of this patient, none with an "
                            "image present (not downloaded?)" if earlier else
                            "no earlier study of this patient in this data set")
            return
        follow_up = (prior.meta or {}).get("follow_up")
        view.caption_extra = f"prior {prior.id}" + (f" (follow-up {follow_up})" if follow_up is not None else "")
        view.show(None, f"loading prior study {prior.id}…")
        self.load_prior(self.study_id, prior.id)

    @work(thread=True, exclusive=True, group="study-prior", exit_on_error=False)
    def load_prior(self, study_id: str, prior_id: str) -> None:
        from cxr_core.data import image_base
        from cxr_core.images import read_xray

        prior = self.app.workspace.studies[prior_id]
        try:
            pixels = read_xray(image_base(self.app.workspace.root) / prior.images[0].path).as_uint8()
        except CxrError as err:
            self.app.call_from_thread(self._prior_loaded, study_id, None, str(err))
            return
        self.app.call_from_thread(self._prior_loaded, study_id, pixels, "")

    def _prior_loaded(self, study_id: str, pixels: np.ndarray | None, message: str) -> None:
        if study_id == self.study_id:
            self.query_one("#study-prior", XRayView).show(pixels, message)

    def _image_failed(self, study_id: str, message: str) -> None:
        if study_id == self.study_id:
            self.pixels = None
            self.query_one("#study-image", XRayView).show(None, message)

    # -- Grad-CAM -----------------------------------------------------------------------------------------------

    def selected_finding(self) -> str | None:
        table = self.query_one("#findings", DataTable)
        labels = self._labels()
        if not labels or table.cursor_row < 0:
            return None
        return labels[min(table.cursor_row, len(labels) - 1)]

    def _request_cam(self) -> None:
        view = self.query_one("#study-image", XRayView)
        label = self.selected_finding()
        if self.pixels is None or label is None:
            return
        if self.model_hidden:
            self.notify("blind reading hides the model's output, Grad-CAM included (B on the worklist)", timeout=3)
            view.update_state(cam=False)  # no map will come: the caption must not say "computing"
            return
        if self.app.predictor is None:
            view.update_state(cam=False)
            if self.app.predictions_file is not None:
                self.notify(f"Grad-CAM needs a model: these predictions come from {self.app.predictions_file.name} "
                            "(start with --model instead of --predictions on a machine that has it)",
                            severity="warning")
            else:
                self.notify("Grad-CAM needs a model (start with --model, or pick one on the training screen)",
                            severity="warning")
            return
        key = (self.study_id, self.image_index, label)
        if key in self.cams:
            view.set_cam(self.cams[key], label)
            return
        view.set_cam(None, label)
        self.compute_cam(key, self.pixels)

    @work(thread=True, exclusive=True, group="study-cam", exit_on_error=False)
    def compute_cam(self, key: tuple[str, int, str], pixels: np.ndarray) -> None:
        from cxr_core.infer import cam_for_image

        predictor = self.app.predictor
        with self.app.model_lock:
            cam = cam_for_image(predictor.model, predictor.config, pixels, key[2])
        self.app.call_from_thread(self._cam_ready, key, cam)

    def _cam_ready(self, key: tuple[str, int, str], cam: np.ndarray) -> None:
        self.cams[key] = cam
        if key == (self.study_id, self.image_index, self.selected_finding()):
            self.query_one("#study-image", XRayView).set_cam(cam, key[2])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.query_one("#study-image", XRayView).state.cam:
            self._request_cam()

    # -- actions ------------------------------------------------------------------------------------------------

    def action_back(self) -> None:
        view = self.query_one("#study-image", XRayView)
        if view.fullscreen:  # escape leaves full screen first
            view.toggle_fullscreen()
            return
        note = self.query_one("#study-note", Input)
        if note.display:
            note.display = False
            self.query_one("#findings", DataTable).focus()
            return
        self.app.pop_screen()

    def _go(self, step: int, unreviewed: bool = False) -> bool:
        if self.neighbour is None:
            return False
        target = self.neighbour(self.study_id, step, unreviewed)
        if target is None:
            self.notify("every study in the worklist's view is reviewed" if unreviewed
                        else "no more studies in this direction of the worklist", timeout=3)
            return False
        self.study_id, self.image_index = target, 0
        self.load_study()
        return True

    def action_next_study(self) -> None:
        self._go(1)

    def action_previous_study(self) -> None:
        self._go(-1)

    def action_cycle_blind(self) -> None:
        self.app.set_blind((self.app.workspace.blind + 1) % 3)

    def action_next_unreviewed(self) -> None:
        self._go(1, unreviewed=True)

    def action_next_flagged(self) -> None:
        """Move to the next flagged finding (highest probability first, wrapping)."""
        flagged = self._flagged()
        if not flagged:
            self.notify("the model flags nothing on this image", timeout=2)
            return
        current = self.selected_finding()
        position = flagged.index(current) + 1 if current in flagged else 0
        self._cursor_to(flagged[position % len(flagged)])

    def action_read_study(self, read: str) -> None:
        """One key for the whole study: ``normal`` rejects every finding; ``agree`` accepts what the model flags
        (at the thresholds in force, on the study's score) and rejects the rest; ``rest`` rejects every finding
        not yet decided (after accepting the true ones). Stored in one transaction, then the next unreviewed
        study opens."""
        labels = self._labels()
        scores = self._study_scores()
        if not labels:
            return
        if read == "agree" and scores is None:
            self.notify("the model's output is hidden (blind reading)" if self.model_hidden
                        else "no predictions for this study: nothing to agree with", severity="warning")
            return
        workspace = self.app.workspace
        decisions: dict[str, tuple[str, float | None, bool | None]] = {}
        for k, label in enumerate(labels):
            score = None if scores is None or np.isnan(scores[k]) else float(scores[k])
            flagged = None if score is None else score >= workspace.threshold(label)
            if read == "rest" and getattr(self.decisions.get(label), "decision", None) not in (None, "clear"):
                continue  # decided already: kept as it is
            decision = "accept" if read == "agree" and flagged else "reject"
            decisions[label] = (decision, score, flagged)
        fingerprint, model_name = self.app.recorded_model()  # the model's, or the predictions file's
        if not decisions:
            self._go(1, unreviewed=True)
            return
        try:
            reviews = self.app.reviews.record_study(workspace.root, self.study_id, decisions,
                                                    reviewer=workspace.reviewer, model=fingerprint,
                                                    model_name=model_name)
        except CxrError as err:
            self.notify(str(err), severity="error")
            return
        for review in reviews:
            self.decisions[review.finding] = review
        self._fill_findings()
        self.app.post_message(ReviewRecorded(self.study_id, labels[0], read))  # the worklist follows
        accepted = sum(decision == "accept" for decision, _, _ in decisions.values())
        self.notify(f"{name_text(self.study_id)}: {STUDY_READS[read]}" + (f" ({accepted} accepted)" if accepted else ""),
                    timeout=2)
        self._go(1, unreviewed=True)

    def action_next_image(self) -> None:
        study = self.study
        if study is not None and len(study.images) > 1:
            self.image_index = (self.image_index + 1) % len(study.images)
            self.load_study()

    def action_finding(self, step: int) -> None:
        table = self.query_one("#findings", DataTable)
        if table.row_count:
            table.move_cursor(row=max(0, min(table.row_count - 1, table.cursor_row + step)))

    def action_decide(self, decision: str) -> None:
        label = self.selected_finding()
        if label is None:
            return
        if self._record(label, decision):
            def waiting(name: str) -> bool:
                return getattr(self.decisions.get(name), "decision", None) in (None, "clear")

            undecided = [flag for flag in self._flagged() if waiting(flag)]
            if undecided:  # on to the next flag still waiting for a decision
                self._cursor_to(undecided[0])
                return
            labels = self._labels()  # no flag waits (or none is flagged): the next undecided finding below
            below = [name for name in labels[labels.index(label) + 1:] if waiting(name)]
            if below:
                self._cursor_to(below[0])

    def _record(self, label: str, decision: str | None = None, note: str | None = None) -> bool:
        workspace = self.app.workspace
        probs = self._probs()
        k = self._labels().index(label)
        prob = float(probs[k]) if probs is not None and not np.isnan(probs[k]) else None
        try:
            store = self.app.reviews
            fingerprint, model_name = self.app.recorded_model()  # the model's, or the predictions file's
            if decision is None:
                review = store.set_note(workspace.root, self.study_id, label, note or "", reviewer=workspace.reviewer)
            else:
                review = store.record(workspace.root, self.study_id, label, decision, note=note,
                                      reviewer=workspace.reviewer, probability=prob,
                                      flagged=None if prob is None else prob >= workspace.threshold(label),
                                      model=fingerprint, model_name=model_name)
        except CxrError as err:
            self.notify(str(err), severity="error")
            return False
        self.decisions[label] = review
        self._fill_findings()
        if note is not None:
            self._fill_info()
        self.app.post_message(ReviewRecorded(self.study_id, label, review.decision))  # the worklist follows
        return True

    def action_note(self) -> None:
        label = self.selected_finding()
        if label is None:
            return
        note = self.query_one("#study-note", Input)
        note.display = True
        current = self.decisions.get(label)
        note.value = getattr(current, "note", None) or ""
        note.placeholder = f"note on {label} (enter saves, esc cancels)"
        note.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "study-note":
            return
        label = self.selected_finding()
        event.input.display = False
        self.query_one("#findings", DataTable).focus()
        if label is not None:
            self._record(label, None, event.value)

    def action_toggle_cam(self) -> None:
        if self.query_one("#study-image", XRayView).toggle_cam():
            self._request_cam()

    def action_window(self) -> None:
        self.query_one("#study-image", XRayView).next_window()

    def action_invert(self) -> None:
        self.query_one("#study-image", XRayView).toggle_invert()

    def action_zoom(self, direction: int) -> None:
        view = self.query_one("#study-image", XRayView)
        view.zoom_in() if direction > 0 else view.zoom_out()

    def action_reset_view(self) -> None:
        self.query_one("#study-image", XRayView).reset_view()

    def action_adjust_window(self, d_width: float, d_level: float) -> None:
        self.query_one("#study-image", XRayView).adjust_window(d_width, d_level)

    def action_fullscreen(self) -> None:
        self.query_one("#study-image", XRayView).toggle_fullscreen()

    def action_pan(self, dx: int, dy: int) -> None:
        self.query_one("#study-image", XRayView).pan(dx, dy)

    # -- from the app -------------------------------------------------------------------------------------------

