"""Phantom generator: determinism, ground truth that marks what was drawn, the on-disk set, prevalence."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_core.data.sources.synthetic import SyntheticSource
from cxr_core.errors import DataError
from cxr_core.labels import get_space
from cxr_core.phantoms import FINDINGS, GenerationCancelled, render_phantom, write_phantoms
from cxr_core.phantoms.anatomy import Chest
from cxr_core.phantoms.findings import REGISTRY, lesion_plan
from cxr_core.phantoms.spec import make_spec
from cxr_core.phantoms.writer import BOX_HEADER, png_bytes

SPACE = get_space("phantom")


def test_findings_are_the_phantom_label_space():
    assert FINDINGS == SPACE.findings
    assert set(REGISTRY) == set(FINDINGS)


def test_render_is_deterministic_and_seeded():
    a = render_phantom(3, 7, 96)
    render_phantom(3, 8, 64)  # other indices and sizes leave no state behind
    b = render_phantom(3, 7, 96)
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.findings, a.boxes, a.patient_id, a.view, a.age, a.sex) == (b.findings, b.boxes, b.patient_id, b.view, b.age, b.sex)
    assert render_phantom(4, 7, 96).image.tobytes() != a.image.tobytes()
    assert render_phantom(3, 9, 96).image.tobytes() != a.image.tobytes()


@pytest.mark.parametrize("size", [32, 97, 128])
def test_image_is_square_uint8_with_a_full_range(size):
    ph = render_phantom(0, 4, size)
    assert ph.image.shape == (size, size)
    assert ph.image.dtype == np.uint8
    assert ph.image.min() < 40 and ph.image.max() > 180  # dark background/lungs, bright mediastinum
    assert ph.view in ("PA", "AP") and ph.sex in ("M", "F") and 18 <= ph.age <= 92


def test_too_small_size_is_refused():
    with pytest.raises(ValueError):
        render_phantom(0, 0, 16)


def test_same_phantom_at_every_size():
    small, large = render_phantom(1, 11, 128), render_phantom(1, 11, 256)
    assert (small.findings, small.patient_id, small.view, small.age) == (large.findings, large.patient_id, large.view, large.age)
    for a, b in zip(small.boxes, large.boxes, strict=True):
        assert a.label == b.label
        assert np.allclose([2 * a.x, 2 * a.y, 2 * a.w, 2 * a.h], [b.x, b.y, b.w, b.h], atol=1.0)


def test_boxes_lie_inside_the_image_and_cover_every_finding():
    size = 64
    for index in range(300):
        ph = render_phantom(0, index, size)
        assert set(b.label for b in ph.boxes) == set(ph.findings)
        assert list(ph.findings) == [name for name in FINDINGS if name in ph.findings]
        for b in ph.boxes:
            assert b.w >= 1 and b.h >= 1
            assert 0 <= b.x and b.x + b.w <= size + 1e-6 and 0 <= b.y and b.y + b.h <= size + 1e-6


def _box_mean(image: np.ndarray, box) -> float:
    x0, y0 = int(box.x), int(box.y)
    return float(image[y0 : int(np.ceil(box.y + box.h)), x0 : int(np.ceil(box.x + box.w))].astype(float).mean())


@pytest.mark.parametrize("name", FINDINGS)
def test_box_marks_where_the_finding_was_drawn(name):
    """Forcing a finding on a patient changes the image inside its box: denser, or lucent for pneumothorax."""
    darker = name == "Pneumothorax"
    diffs = []
    for index in range(6):
        plain = render_phantom(2, index, 128, findings=())
        sick = render_phantom(2, index, 128, findings=[name])
        assert sick.findings == (name,) and plain.findings == ()
        for box in sick.boxes:
            diff = _box_mean(sick.image, box) - _box_mean(plain.image, box)
            diffs.append(-diff if darker else diff)
    assert np.median(diffs) > 2.0, diffs


@pytest.mark.parametrize("name", ["Nodule", "Mass"])
def test_focal_lesions_change_nothing_outside_their_box(name):
    for index in range(4):
        plain = render_phantom(5, index, 128, findings=())
        sick = render_phantom(5, index, 128, findings=[name])
        (box,) = sick.boxes
        changed = np.argwhere(sick.image != plain.image)
        assert len(changed) > 0
        ys, xs = changed[:, 0], changed[:, 1]
        assert xs.min() >= box.x - 2 and xs.max() <= box.x + box.w + 2
        assert ys.min() >= box.y - 2 and ys.max() <= box.y + box.h + 2


def test_cardiothoracic_ratio_separates_cardiomegaly():
    for index in range(20):
        spec = make_spec(0, index)
        normal = Chest(spec.anatomy, spec.setup)
        plan = lesion_plan(spec, "Cardiomegaly")
        big = Chest(REGISTRY["Cardiomegaly"].adjust(spec.anatomy, plan), spec.setup)
        ratio = lambda chest: (chest.heart_rect[1] - chest.heart_rect[0]) / (2 * chest.thorax)  # noqa: E731
        assert ratio(normal) < 0.5 < 0.515 < ratio(big)


def test_unknown_finding_is_refused_and_aliases_work():
    with pytest.raises(ValueError, match="not a phantom finding"):
        render_phantom(0, 0, 64, findings=["Fracture"])
    assert render_phantom(0, 0, 64, findings=["Pleural Effusion"]).findings == ("Effusion",)


def test_prevalence_is_roughly_as_designed():
    findings = [make_spec(7, index).findings for index in range(400)]
    normal = sum(1 for f in findings if not f) / len(findings)
    counts = Counter(name for f in findings for name in f)
    assert 0.3 <= normal <= 0.5
    for name in FINDINGS:
        assert 0.04 <= counts[name] / len(findings) <= 0.22, (name, counts[name])
    assert any(len(f) > 1 for f in findings)  # some co-occurrence


def test_images_of_a_patient_share_anatomy():
    by_patient = defaultdict(list)
    for index in range(60):
        ph = render_phantom(0, index, 32)
        by_patient[ph.patient_id].append((index, ph))
    sizes = Counter(len(v) for v in by_patient.values())
    assert set(sizes) <= {1, 2, 3} and len(sizes) > 1
    for patient, items in by_patient.items():
        indices = [i for i, _ in items]
        assert indices == list(range(indices[0], indices[0] + len(indices)))  # consecutive
        assert patient == f"ph{indices[0]:05d}"
        assert [ph.image_id for _, ph in items] == [f"{patient}_{k:03d}" for k in range(len(items))]
        assert len({(ph.age, ph.sex) for _, ph in items}) == 1


def test_png_encoder_round_trips():
    for size in (33, 64):
        image = render_phantom(0, 1, size).image
        decoded = np.asarray(Image.open(io.BytesIO(png_bytes(image))))
        assert decoded.dtype == np.uint8 and np.array_equal(decoded, image)


def _read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_write_phantoms_writes_a_consistent_set(tmp_path):
    out = tmp_path / "set"
    calls = []
    result = write_phantoms(out, 40, size=64, seed=3, progress=lambda done, n: calls.append((done, n)))
    assert calls == [(k, 40) for k in range(1, 41)]
    assert (result.out, result.n, result.size, result.seed) == (out, 40, 64, 3)

    rows = _read_csv(out / "labels.csv")
    assert rows[0] == ["image", "labels", "patient_id", "view", "age", "sex"]
    assert len(rows) == 41
    labels = {}
    for name, cell, patient, view, age, sex in rows[1:]:
        ph = render_phantom(3, len(labels), 64)
        assert name == f"{ph.image_id}.png" and patient == ph.patient_id and view == ph.view
        assert (int(age), sex) == (ph.age, ph.sex)
        assert cell.split("|") == (list(ph.findings) or ["No Finding"])
        png = np.asarray(Image.open(out / "images" / name))
        assert np.array_equal(png, ph.image)
        labels[name] = set(cell.split("|"))

    box_lines = (out / "BBox_List.csv").read_text(encoding="utf-8").splitlines()
    assert box_lines[0] == BOX_HEADER == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    boxed = Counter()
    for line in box_lines[1:]:
        name, label, *xywh = line.split(",")
        assert len(xywh) == 4 and all(float(v) >= 0 for v in xywh)
        assert label in labels[name]  # every boxed image carries that label
        boxed[label] += 1
    assert sum(boxed.values()) >= sum(len(v - {"No Finding"}) for v in labels.values())

    manifest = json.loads((out / "phantoms.json").read_text(encoding="utf-8"))
    tally = Counter(label for v in labels.values() for label in v)
    assert manifest["generator"] == "cxr.phantoms" and isinstance(manifest["version"], int)
    assert (manifest["n"], manifest["size"], manifest["seed"], manifest["label_space"]) == (40, 64, 3, "phantom")
    assert manifest["labels"] == list(SPACE.labels)
    assert manifest["counts"] == {label: tally.get(label, 0) for label in SPACE.labels} == result.counts
    assert SyntheticSource.detect(out)


def test_overwriting_an_earlier_set_leaves_no_stale_images(tmp_path):
    write_phantoms(tmp_path / "set", 12, size=32)
    write_phantoms(tmp_path / "set", 4, size=32, seed=1)
    assert len(list((tmp_path / "set" / "images").iterdir())) == 4
    assert json.loads((tmp_path / "set" / "phantoms.json").read_text())["n"] == 4


def test_refuses_a_non_empty_directory_that_is_not_a_phantom_set(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError) as err:
        write_phantoms(tmp_path, 2, size=32)
    message = str(err.value)
    assert str(tmp_path) in message and "not a phantom set" in message and "\n" not in message
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError):
        write_phantoms(tmp_path / "file", 2, size=32)


def test_cancelled_set_has_no_manifest_and_can_be_rewritten(tmp_path):
    cancel = threading.Event()
    out = tmp_path / "set"

    def progress(done: int, n: int) -> None:
        if done == 3:
            cancel.set()

    with pytest.raises(GenerationCancelled):
        write_phantoms(out, 10, size=32, progress=progress, cancel=cancel)
    assert not (out / "phantoms.json").exists()
    assert len(list((out / "images").iterdir())) == 3
    write_phantoms(out, 5, size=32)
    assert json.loads((out / "phantoms.json").read_text())["n"] == 5


def test_bad_arguments_are_one_line_data_errors(tmp_path):
    for kwargs in ({"n": -1}, {"n": 2, "size": 8}):
        with pytest.raises(DataError):
            write_phantoms(tmp_path / "set", **kwargs)
    assert not (tmp_path / "set").exists()
