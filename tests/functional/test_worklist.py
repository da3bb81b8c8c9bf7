"""The worklist's model (sort, filters, search, flags against brute force) and its table widget under Pilot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from textual import on
from textual.app import App, ComposeResult

from cxr_tui.study_list import LEARNING_ORDERS, NOT_PREDICTED, SORT_KEYS, StudyList
from cxr_tui.widgets.worklist import WorklistTable, column_layout, probability_bar

LABELS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule"]
THRESHOLDS = {"Atelectasis": 0.7, "Cardiomegaly": 0.8, "Effusion": 0.6, "Infiltration": 0.75, "Mass": 0.9,
              "Nodule": None}


def make_model(n: int = 30, seed: int = 0, predicted: bool = True) -> tuple[StudyList, np.ndarray]:
    """``n`` NIH-like studies (three per patient, mixed views and splits, two without predictions)."""
    rng = np.random.default_rng(seed)
    ids = [f"{i // 3 + 1:08d}_{i % 3:03d}.png" for i in range(n)]
    patients = [f"{i // 3 + 1:05d}" for i in range(n)]
    views = ["PA" if i % 4 else "AP" for i in range(n)]
    splits = ["test" if i % 5 == 0 else "train_val" for i in range(n)]
    order = rng.permutation(n)  # rows not in id order, so sorting by study is tested
    model = StudyList([ids[i] for i in order], [patients[i] for i in order], [views[i] for i in order],
                          [splits[i] for i in order], LABELS)
    probs = rng.random((n, len(LABELS)), dtype=np.float32)
    probs[3] = np.nan
    probs[7] = np.nan
    probs[11, 2] = np.float32(0.6)  # exactly at Effusion's threshold: flagged (>=)
    if predicted:
        model.update_predictions(probs, THRESHOLDS)
    return model, probs


def brute_flags(probs: np.ndarray) -> list[list[str]]:
    """Flagged labels per row, one comparison at a time."""
    rows = []
    for row in probs:
        flagged = []
        for label, p in zip(LABELS, row, strict=True):
            t = THRESHOLDS[label]
            if t is not None and not math.isnan(p) and p >= np.float32(t):
                flagged.append(label)
        rows.append(flagged)
    return rows


def view_ids(model: StudyList) -> list[str]:
    return [model.study_at(pos) for pos in range(len(model))]


# -- model ----------------------------------------------------------------------------------------------------


def test_update_predictions_matches_brute_force() -> None:
    model, probs = make_model()
    flags = brute_flags(probs)
    assert model.flags.tolist() == [[label in f for label in LABELS] for f in flags]
    assert model.n_flagged.tolist() == [len(f) for f in flags]
    assert list(model.findings) == [", ".join(f) for f in flags]
    for i, row in enumerate(probs):
        values = [p for p in row if not math.isnan(p)]
        if values:
            assert model.max_prob[i] == max(values)
        else:
            assert math.isnan(model.max_prob[i])
    assert model.flags[11, 2]  # prob == threshold flags
    assert not model.flags[:, LABELS.index("Nodule")].any()  # threshold None flags nothing
    row = model.row(model.position_of(model.study_at(0)) or 0)
    assert row.max_prob != NOT_PREDICTED


def test_threshold_change_reflags_without_new_probabilities() -> None:
    model, probs = make_model()
    model.update_thresholds({label: 0.0 for label in LABELS})
    predicted = ~np.isnan(probs).all(axis=1)
    assert (model.n_flagged[predicted] == len(LABELS)).all()
    assert (model.n_flagged[~predicted] == 0).all()


def test_unpredicted_rows_show_a_dash_and_sort_last_both_ways() -> None:
    model, probs = make_model()
    unpredicted = {model.study_at(pos) for pos in range(len(model)) if model.row(pos).max_prob == NOT_PREDICTED}
    assert len(unpredicted) == 2
    for key in ("max_prob", "n_flagged"):
        for descending in (False, True):
            model.sort(key, descending)
            assert set(view_ids(model)[-2:]) == unpredicted


@pytest.mark.parametrize("key", [key for key in SORT_KEYS if key != "finding" and key not in LEARNING_ORDERS])
@pytest.mark.parametrize("descending", [False, True])
def test_sort_matches_python_sorted(key: str, descending: bool) -> None:
    model, _ = make_model()
    model.update_status({model.study_at(0): "reviewed", model.study_at(1): "partial"})
    rows = [model.row(pos) for pos in range(len(model))]
    probs = {r.study: model.max_prob_at(pos) for pos, r in enumerate(rows)}
    statuses = ["", "partial", "reviewed"]

    def value(r):  # noqa: ANN001, ANN202 - a sort key
        if key in ("max_prob", "n_flagged"):
            if math.isnan(probs[r.study]):
                return (1, 0.0)
            number = probs[r.study] if key == "max_prob" else int(r.n_flagged)
            return (0, -number if descending else number)
        if key == "status":
            code = statuses.index(r.status)
            return (0, -code if descending else code)
        text = r.study if key == "study" else getattr(r, key)
        distinct = sorted({getattr(x, key) for x in rows})
        rank = distinct.index(text)
        return (0, -rank if descending else rank)

    expected = [r.study for r in sorted(rows, key=lambda r: (value(r), r.study))]
    if key == "study" and descending:
        expected = sorted((r.study for r in rows), reverse=True)
    model.sort(key, descending)
    assert view_ids(model) == expected
    assert model.sort_key == key and model.descending == descending


def test_sort_by_one_finding_shows_and_orders_its_probability() -> None:
    model, probs = make_model()
    k = LABELS.index("Effusion")
    model.sort("finding", True, "Effusion")
    shown = [model.shown_prob_at(pos) for pos in range(len(model))]
    predicted = [p for p in shown if not math.isnan(p)]
    assert predicted == sorted(predicted, reverse=True)
    assert all(math.isnan(p) for p in shown[len(predicted):])  # unpredicted rows last
    assert sorted(predicted) == sorted(float(p) for p in probs[:, k] if not math.isnan(p))
    assert model.row(0).max_prob == f"{shown[0]:.2f}"  # the probability column shows Effusion's
    assert model.sort_finding == "Effusion"
    with pytest.raises(ValueError):
        model.sort("finding", True, "Nope")
    model.sort("max_prob", True)
    assert model.sort_finding is None
    assert model.row(0).max_prob == f"{model.max_prob_at(0):.2f}"


@pytest.mark.parametrize("order", ["uncertain", "entropy"])
def test_uncertainty_orders_match_the_core_ordering_the_cli_uses(order: str) -> None:
    from cxr_core.eval import review_order

    model, probs = make_model()
    model.sort(order, True)
    ids = [model.row_index(s) for s in view_ids(model)]
    studies = [str(model._ids[i]) for i in range(len(model._ids))]
    expected = [study for study, _ in review_order(studies, probs, LABELS, THRESHOLDS, order)]
    assert view_ids(model) == expected, ids
    assert model.most_informative(order) == expected[0]
    model.update_status({expected[0]: "reviewed"})
    assert model.most_informative(order) == expected[1]


def test_disagreement_order_is_the_core_ordering_once_measured() -> None:
    from cxr_core.eval import review_order

    model, probs = make_model()
    model.sort("disagreement", True)
    assert not model.has_disagreement and view_ids(model) == sorted(view_ids(model))  # nothing measured: by id
    info = np.random.default_rng(3).random(probs.shape).astype(np.float32) * 0.3
    info[[3, 7]] = np.nan  # not measured (not predicted either)
    model.update_disagreement(info)  # re-sorts: the key is disagreement
    studies = [str(model._ids[i]) for i in range(len(model._ids))]
    expected = [s for s, _ in review_order(studies, probs, LABELS, THRESHOLDS, "disagreement", info)]
    assert model.has_disagreement and view_ids(model) == expected
    assert model.most_informative("disagreement") == expected[0]
    with pytest.raises(ValueError, match="shape"):
        model.update_disagreement(info[:, :2])
    model.update_predictions(probs[:, :3], THRESHOLDS, LABELS[:3])  # other findings: the measurement no longer applies
    assert not model.has_disagreement


def test_studies_without_an_image_can_be_hidden_and_known_labels_shown() -> None:
    ids = ["a", "b", "c"]
    model = StudyList(ids, labels=LABELS, known=["Effusion", "", "Mass, Nodule"])
    model.update_status({"b": "missing"})
    model.filter(with_image_only=True)
    assert view_ids(model) == ["a", "c"]
    model.filter()
    assert len(model) == 3
    assert model.has_known and model.row(model.position_of("c")).known == "Mass, Nodule"
    assert not StudyList(ids).has_known


def test_column_layout_shows_known_labels_and_hides_the_model_when_blind() -> None:
    keys = [c.key for c in column_layout(120, known=True)]
    assert keys[-2:] == ["findings", "known"]
    blind_labels = [c.key for c in column_layout(120, known=False)]
    assert "known" not in blind_labels and "findings" in blind_labels
    blind_model = [c.key for c in column_layout(120, known=False, model=False)]
    assert not {"findings", "max_prob", "n_flagged", "bar", "known"} & set(blind_model)


def test_filters_match_python_and_keep_the_sort() -> None:
    model, probs = make_model()
    model.update_status({model.study_at(2): "reviewed", model.study_at(4): "partial"})
    model.sort("max_prob", descending=True)
    everything = view_ids(model)
    rows = {model.study_at(pos): model.row(pos) for pos in range(len(model))}
    flags = {model.study_at(pos): model.flags[model.row_index(model.study_at(pos))] for pos in range(len(model))}
    cases = [
        ({"flagged_only": True}, lambda s: rows[s].n_flagged not in ("0", NOT_PREDICTED)),
        ({"finding": "Effusion"}, lambda s: flags[s][LABELS.index("Effusion")]),
        ({"unreviewed_only": True}, lambda s: rows[s].status != "reviewed"),
        ({"split": "test"}, lambda s: rows[s].split == "test"),
        ({"split": "no-such-split"}, lambda s: False),
        ({"flagged_only": True, "split": "train_val", "unreviewed_only": True},
         lambda s: rows[s].n_flagged not in ("0", NOT_PREDICTED) and rows[s].split == "train_val"
         and rows[s].status != "reviewed"),
    ]
    for kwargs, keep in cases:
        model.filter(**kwargs)
        assert view_ids(model) == [s for s in everything if keep(s)], kwargs
    model.filter()
    assert view_ids(model) == everything
    with pytest.raises(ValueError, match="unknown finding"):
        model.filter(finding="Fracture")


def test_search_prefers_prefix_then_substring_and_wraps() -> None:
    model, _ = make_model(predicted=False)
    model.sort("study")
    assert model.search("00000004") == view_ids(model).index("00000004_000.png")
    assert model.search("00000004", start=12) == view_ids(model).index("00000004_000.png")  # wraps to the top
    assert model.search("_002") == view_ids(model).index("00000001_002.png")  # substring fallback
    assert model.search("_002", start=3) == view_ids(model).index("00000002_002.png")
    assert model.search("00000004_001.PNG") == view_ids(model).index("00000004_001.png")  # case-insensitive
    assert model.search("zzz") is None
    assert model.search("") is None
    model.filter(split="test")
    found = model.search("00000001")
    assert found is not None and model.study_at(found).startswith("00000001")


def test_positions_and_rows() -> None:
    model, _ = make_model(predicted=False)
    model.sort("study", descending=True)
    assert model.position_of("00000010_002.png") == 0
    assert model.study_at(-1) == "00000001_000.png"
    assert model.position_of("missing.png") is None
    model.filter(split="test")
    assert model.position_of("00000001_001.png") is None  # filtered out
    assert model.row_index("00000001_001.png") is not None
    with pytest.raises(IndexError):
        model.study_at(len(model))
    row = model.row(0)
    assert (row.n_flagged, row.max_prob, row.findings, row.status) == (NOT_PREDICTED, NOT_PREDICTED, "", "")
    assert model.total == 30 and model.splits == ["test", "train_val"]


def test_update_status_single_mapping_and_unreviewed_filter() -> None:
    model, _ = make_model()
    model.filter(unreviewed_only=True)
    first = model.study_at(0)
    assert model.update_status(first, "reviewed") == 1
    assert model.position_of(first) is None  # the filter is re-applied
    assert model.update_status({first: "partial", "not-in-model.png": "reviewed"}) == 1
    assert model.position_of(first) is not None and model.status_at(model.position_of(first)) == "partial"
    assert model.update_status({first: "partial"}) == 0
    with pytest.raises(ValueError, match="review status"):
        model.update_status(first, "done")


def test_update_predictions_checks_shape_and_handles_many_labels() -> None:
    model, probs = make_model()
    with pytest.raises(ValueError, match="shape"):
        model.update_predictions(probs[:, :3], THRESHOLDS)
    labels = [f"finding {k}" for k in range(70)]  # more than 64 labels: the other pattern path
    probs = np.random.default_rng(1).random((30, 70), dtype=np.float32)
    model.update_predictions(probs, {label: 0.95 for label in labels}, labels)
    expected = [", ".join(label for label, p in zip(labels, row, strict=True) if p >= np.float32(0.95))
                for row in probs]
    assert list(model.findings) == expected


def test_empty_model() -> None:
    model = StudyList([])
    model.sort("max_prob", descending=True)
    model.filter(flagged_only=True)
    assert len(model) == 0 and model.search("x") is None and model.position_of("x") is None
    assert model.update_status({"x": "reviewed"}) == 0
    with pytest.raises(ValueError, match="unique"):
        StudyList(["a", "b", "a"])


def test_column_layout_adapts_to_width() -> None:
    at_80 = {c.key: c for c in column_layout(79, 16, 5, 9)}
    assert set(at_80) == {"status", "study", "patient", "view", "split", "n_flagged", "max_prob", "bar", "findings"}
    assert at_80["findings"].width >= 12
    narrow = {c.key for c in column_layout(60, 16, 5, 9)}
    assert "patient" not in narrow and "findings" in narrow
    wide = {c.key: c for c in column_layout(200, 16, 5, 9)}
    assert wide["bar"].width == 16
    for width in (20, 40, 79, 120, 200):
        columns = column_layout(width, 16, 5, 9)
        assert columns[-1].x + columns[-1].width <= max(width, columns[-1].x)
    assert probability_bar(1.0, 4) == "████"
    assert probability_bar(0.5, 4) == "██  "
    assert probability_bar(float("nan"), 3) == "   "


# -- widget ---------------------------------------------------------------------------------------------------


class WorklistApp(App[None]):
    """The table alone, recording the messages it posts."""

    def __init__(self, model: StudyList) -> None:
        super().__init__()
        self.model = model
        self.opened: list[str] = []
        self.highlighted: list[str] = []

    def compose(self) -> ComposeResult:
        yield WorklistTable(self.model)

    @on(WorklistTable.StudyOpened)
    def record_open(self, message: WorklistTable.StudyOpened) -> None:
        self.opened.append(message.study_id)

    @on(WorklistTable.StudyHighlighted)
    def record_highlight(self, message: WorklistTable.StudyHighlighted) -> None:
        self.highlighted.append(message.study_id)


def sorted_model(n: int = 30) -> StudyList:
    model, _ = make_model(n)
    model.sort("max_prob", descending=True)
    return model


async def test_keys_move_the_cursor() -> None:
    model = sorted_model(200)
    app = WorklistApp(model)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(WorklistTable)
        body = 24 - 1
        assert app.focused is table and table.cursor_position == 0
        await pilot.press("j", "down", "j")
        assert table.cursor_position == 3
        await pilot.press("k", "up")
        assert table.cursor_position == 1
        await pilot.press("pagedown")
        assert table.cursor_position == 1 + body
        assert table.scroll_y > 0
        await pilot.press("pageup")
        assert table.cursor_position == 1
        await pilot.press("end")
        assert table.cursor_position == 199
        assert round(table.scroll_y) + body > 199  # the last row is on screen
        await pilot.press("down")
        assert table.cursor_position == 199  # clamped
        await pilot.press("home", "up")
        assert table.cursor_position == 0 and table.scroll_y == 0
        await pilot.pause()
        assert app.highlighted[-1] == model.study_at(0)


async def test_enter_posts_study_opened() -> None:
    model = sorted_model()
    app = WorklistApp(model)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("j", "j", "enter")
        await pilot.pause()
        assert app.opened == [model.study_at(2)]
        table = app.query_one(WorklistTable)
        await pilot.click(WorklistTable, offset=(5, 6))  # screen line 6: view position 5
        assert table.cursor_position == 5
        await pilot.click(WorklistTable, offset=(5, 6), times=2)
        await pilot.pause()
        assert app.opened[-1] == model.study_at(5)


async def test_filter_keeps_the_cursor_on_its_study() -> None:
    model = sorted_model()
    app = WorklistApp(model)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(WorklistTable)
        flagged = [pos for pos in range(len(model)) if model.row(pos).n_flagged not in ("0", NOT_PREDICTED)]
        target = flagged[3]
        table.move_cursor(target)
        await pilot.pause()
        study = table.study_id
        model.filter(flagged_only=True)
        table.refresh_view()
        await pilot.pause()
        assert table.study_id == study and table.cursor_position == 3
        model.sort("study")
        table.refresh_view()
        assert table.study_id == study
        # The study leaves the view: the cursor stays at its position, on the next study.
        position = table.cursor_position
        model.update_status(study, "reviewed")
        model.filter(flagged_only=True, unreviewed_only=True)
        table.refresh_view()
        await pilot.pause()
        assert table.cursor_position == min(position, len(model) - 1)
        assert table.study_id != study
        assert app.highlighted[-1] == table.study_id
        await pilot.press("end")
        model.filter(split="test")  # a short view while scrolled to the bottom of a long one
        table.refresh_view()
        await pilot.pause()
        assert table.scroll_y == 0 and model.study_at(0) in table.render_line(1).text
        model.filter(finding="Mass", split="no-such-split")
        table.refresh_view()
        await pilot.pause()
        assert table.study_id is None and table.cursor_position == 0
        assert "No studies match" in table.render_line(1).text


async def test_renders_at_80x24_and_narrower() -> None:
    model = sorted_model()
    app = WorklistApp(model)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(WorklistTable)
        await pilot.pause()
        lines = [table.render_line(y).text for y in range(table.size.height)]
        assert "Study" in lines[0] and "Findings" in lines[0] and "▼" in lines[0]
        assert model.study_at(0) in lines[1]
        assert all(len(line) == table.scrollable_content_region.width for line in lines)
        await pilot.resize_terminal(50, 12)
        await pilot.pause()
        lines = [table.render_line(y).text for y in range(table.size.height)]
        assert model.study_at(0) in lines[1] and "Patient" not in lines[0]


async def test_set_model_replaces_the_rows() -> None:
    app = WorklistApp(StudyList([]))
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(WorklistTable)
        assert table.study_id is None and "No studies." in table.render_line(1).text
        await pilot.press("enter", "j")
        assert app.opened == []
        model = sorted_model()
        table.set_study_list(model)
        await pilot.pause()
        assert table.study_list is model and table.study_id == model.study_at(0)
        assert table.virtual_size.height == len(model) + 1


def test_snapshot_80x24(snap_compare) -> None:  # noqa: ANN001 - pytest-textual-snapshot's fixture
    model = sorted_model()
    model.update_status({model.study_at(0): "reviewed", model.study_at(2): "partial"})
    assert snap_compare(WorklistApp(model), press=["j", "j", "j"], terminal_size=(80, 24))
