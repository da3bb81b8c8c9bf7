"""Property-based fuzzing of every reader of untrusted bytes: images (PNG, JPEG, DICOM) and label tables.

The property, for every target: damaged or random input ends in a *result* (a sane 2-D image, or a scan
whose report lists the problems) or in the typed error (``ImageReadError`` for images, ``CxrError`` for a
data set) with a one-line message that names the file. Any other exception is a bug.

Inputs start from small *valid* seeds built here (so every mutation is near a real file and reaches the
deep parts of the parser) and are damaged by stacked byte flips, overwrites with boundary integers,
insertions, deletions, duplications and truncations; some examples are plain random bytes or text.

The examples are derandomized, so CI runs the same bounded set every time (a few hundred per target,
well under a minute for the file). For a longer, randomized run::

    CXR_FUZZ_EXAMPLES=5000 CXR_FUZZ_RANDOM=1 python -m pytest tests/unit/test_fuzz.py -q -p no:cacheprovider

or ``python tests/fuzz_long.py --minutes 10`` which does the same with a time budget per target.
``CXR_FUZZ_EXAMPLES=N`` sets the examples per target; ``CXR_FUZZ_RANDOM=1`` draws a fresh random seed
(hypothesis prints the falsifying input and a ``@reproduce_failure`` blob when something breaks).
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import struct
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import RLELossless

from cxr_core.errors import CxrError, ImageReadError
from cxr_core.images import probe_xray, read_xray
from cxr_core.labels import get_space
from cxr_core.store.index import ScanResult, StudyIndex
from tests.malformed import PLANTED_IDENTIFIERS, gradient, image_bytes, jpeg_bytes, write_dicom

EXAMPLES = int(os.environ.get("CXR_FUZZ_EXAMPLES", "0") or 0)
RANDOM = bool(os.environ.get("CXR_FUZZ_RANDOM"))
MAX_SIDE = 1 << 16


def fuzz_settings(ci_examples: int) -> settings:
    return settings(
        max_examples=EXAMPLES or ci_examples,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@pytest.fixture(autouse=True)
def _quiet_and_default_limits(monkeypatch):
    monkeypatch.delenv("CXR_MAX_PIXELS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom and Pillow warn about every odd value they meet
        yield


_counter = itertools.count()
RAN: Counter[str] = Counter()  # examples run per target (tmp_path name), printed at the end with ``-s``


@pytest.fixture(scope="module", autouse=True)
def _print_example_counts():
    yield
    if EXAMPLES:
        for target, n in sorted(RAN.items()):
            print(f"\nfuzz examples run: {n:6d}  {target}")
        print(f"fuzz examples run: {sum(RAN.values()):6d}  in all")


def fresh_dir(parent: Path) -> Path:
    RAN[parent.name] += 1
    path = parent / f"case{next(_counter)}"
    path.mkdir()
    return path


# -- mutation strategies ---------------------------------------------------------------------------

BOUNDARY_INTS = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
TEXT_TOKENS = [
    b",",
    b'"',
    b"\n",
    b"\r\n",
    b"\r",
    b"|",
    b";",
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"<",
    b">",
    b"&",
    b"&#0;",
    b"]]>",
    b"<!--",
    b"\t",
    b"-1.0",
    b"1.0",
    b"nan",
    b"1e999",
    b"..",
    b"/",
    b"\\",
    b"../../etc/passwd",
    b"/abs/path.png",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"x" * 300,
    b"," * 40,
]


@st.composite
def mutated(draw, seed: bytes, *, tokens: list[bytes] | None = None, max_ops: int = 5) -> bytes:
    """``seed`` damaged by 1..max_ops stacked edits, positions biased towards the header."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        n = len(data)
        pos = draw(st.one_of(st.integers(0, min(n, 160)), st.integers(0, n)))
        op = draw(
            st.sampled_from(
                ["flip", "set", "int", "insert", "delete", "duplicate", "truncate", "token"]
                if tokens
                else ["flip", "set", "int", "insert", "delete", "duplicate", "truncate"]
            )
        )
        if op == "flip" and pos < n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and pos < n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            value = draw(st.sampled_from(BOUNDARY_INTS))
            width, order = draw(st.sampled_from([(2, "<"), (2, ">"), (4, "<"), (4, ">")]))
            packed = struct.pack(order + ("H" if width == 2 else "I"), value & ((1 << 8 * width) - 1))
            data[pos : pos + width] = packed
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "duplicate":
            length = draw(st.integers(1, 256))
            data[pos:pos] = data[pos : pos + length]
        elif op == "truncate":
            del data[pos:]
        elif op == "token":
            token = draw(st.sampled_from(tokens))
            if draw(st.booleans()):
                data[pos:pos] = token
            else:
                data[pos : pos + len(token)] = token
    return bytes(data)


def damaged(
    seeds: list[bytes], *, tokens: list[bytes] | None = None, random_size: int = 800, text: bool = False
) -> st.SearchStrategy[bytes]:
    """Mostly mutated seeds, sometimes random bytes (or random text, for text formats)."""
    options = [st.sampled_from(seeds).flatmap(lambda s: mutated(s, tokens=tokens)), st.binary(max_size=random_size)]
    if text:
        options.append(st.text(max_size=random_size).map(lambda t: t.encode("utf-8", "surrogatepass")))
    return st.one_of(*options) if len(seeds) else options[1]


# -- seeds -------------------------------------------------------------------------------------------


def _image_seeds() -> dict[str, list[bytes]]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dicoms = [
            write_dicom(
                folder / "a.dcm", gradient(8, 8, np.uint16) >> 4, bits_stored=12, rescale=(1.5, -10.0), window=(100, 50)
            ),
            write_dicom(folder / "b.dcm", gradient(6, 10, np.uint8), photometric="MONOCHROME1"),
            write_dicom(folder / "c.dcm", gradient(8, 8, np.uint16), transfer_syntax=RLELossless),
            write_dicom(folder / "d.dcm", np.stack([gradient(4, 4, np.uint8)] * 2)),
        ]
        dicom_bytes = [p.read_bytes() for p in dicoms]
    rgb = np.stack([gradient(8, 8), gradient(8, 8)[::-1], gradient(8, 8).T], axis=-1)
    return {
        "png": [
            image_bytes(Image.fromarray(gradient(8, 8)), "PNG"),
            image_bytes(Image.fromarray(gradient(8, 8, np.uint16)), "PNG"),
            image_bytes(Image.fromarray(rgb), "PNG"),
            image_bytes(Image.fromarray(gradient(8, 8)).convert("P"), "PNG"),
        ],
        "jpeg": [
            jpeg_bytes(gradient(8, 8)),
            jpeg_bytes(rgb, quality=50),
            image_bytes(Image.fromarray(gradient(16, 16)), "JPEG", progressive=True),
        ],
        "dicom": dicom_bytes,
    }


IMAGE_SEEDS = _image_seeds()
SUFFIXES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom", "", ".bin", ".123"]


def _check_image_result(path: Path) -> None:
    for function in (probe_xray, read_xray):
        try:
            result = function(path)
        except ImageReadError as err:
            message = str(err)
            assert message.startswith(f"{path}: "), message
            assert "\n" not in message, message
            for value in PLANTED_IDENTIFIERS.values():
                assert value not in message, message
            continue
        if function is probe_xray:
            assert 0 < result.width <= MAX_SIDE and 0 < result.height <= MAX_SIDE, result
        else:
            pixels = result.pixels
            assert pixels.ndim == 2 and pixels.dtype in (np.uint8, np.uint16), (pixels.shape, pixels.dtype)
            assert 0 < pixels.shape[0] <= MAX_SIDE and 0 < pixels.shape[1] <= MAX_SIDE, pixels.shape
            assert pixels.shape == (result.info.height, result.info.width), (pixels.shape, result.info)


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_damaged_images_read_or_raise_image_read_error(kind, tmp_path):
    @fuzz_settings(150)
    @given(content=damaged(IMAGE_SEEDS[kind]), suffix=st.sampled_from(SUFFIXES))
    def check(content, suffix):
        path = fresh_dir(tmp_path) / f"x{suffix}"
        path.write_bytes(content)
        _check_image_result(path)

    check()


def test_seeds_under_the_wrong_suffix_and_random_bytes(tmp_path):
    every = [s for seeds in IMAGE_SEEDS.values() for s in seeds]

    @fuzz_settings(60)
    @given(content=st.one_of(st.sampled_from(every), st.binary(max_size=2000)), suffix=st.sampled_from(SUFFIXES))
    def check(content, suffix):
        path = fresh_dir(tmp_path) / f"x{suffix}"
        path.write_bytes(content)
        _check_image_result(path)

    check()


# -- data sets through the index -------------------------------------------------------------------


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(Image.fromarray(np.full((8, 8), value, np.uint8)), "PNG"))


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


NIH_HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]
NIH_ROWS = [
    ["00000001_000.png", "Cardiomegaly", "0", "1", "57", "M", "PA", "2682", "2749", "0.143", "0.143"],
    ["00000001_001.png", "Cardiomegaly|Emphysema", "1", "1", "058Y", "M", "PA", "2894", "2729", "0.1", "0.1"],
    ["00000002_000.png", "No Finding", "0", "2", "80", "F", "AP", "2500", "2048", "0.171", "0.171"],
]
NIH_TABLE = _csv([NIH_HEADER, *NIH_ROWS])
SAMPLE_TABLE = NIH_TABLE.replace(
    b"OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]",
    b"OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,OriginalImagePixelSpacing_y",
)


def _nih(root: Path, name: str, content: bytes) -> None:
    for i, row in enumerate(NIH_ROWS[:2]):
        _png(root / "images_001" / "images" / row[0], 40 * i)
    (root / name).write_bytes(content)
    (root / "test_list.txt").write_text("00000002_000.png\n")


def _iu_report(n: int, mesh: str = "normal") -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/><uId id="CXR{n}"/>'
        f'<MedlineCitation><Article><Abstract><AbstractText Label="FINDINGS">Lungs are clear.</AbstractText>'
        f'<AbstractText Label="IMPRESSION">No acute disease.</AbstractText></Abstract></Article>'
        f"</MedlineCitation><MeSH><major>{mesh}</major><automatic>x</automatic></MeSH>"
        f'<parentImage id="CXR{n}_IM-0001-1001"><figureId>F1</figureId><caption>Chest PA</caption>'
        f'<panel type="single"><url>/x/CXR{n}_IM-0001-1001.jpg</url></panel></parentImage>'
        f'<parentImage id="CXR{n}_IM-0001-2001"><caption>Lateral</caption></parentImage>'
        f"</eCitation>"
    ).encode()


def _iu_xml(root: Path, content: bytes) -> None:
    reports = root / "ecgen-radiology"
    reports.mkdir()
    (reports / "1.xml").write_bytes(content)
    (reports / "2.xml").write_bytes(_iu_report(2, "Cardiomegaly/borderline"))
    _png(root / "CXR1_IM-0001-1001.png")
    _png(root / "CXR2_IM-0001-1001.png", 30)


IU_REPORTS = _csv(
    [
        ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"],
        ["1", "normal", "normal", "Xray Chest PA and Lateral", "Routine.", "None.", "Clear.", "Normal."],
        [
            "2",
            "Cardiomegaly/borderline;Pulmonary Artery/enlarged",
            "Cardiomegaly",
            "Chest, 2 views",
            "Pre-op.",
            "",
            "Borderline heart.",
            "No acute.",
        ],
    ]
)
IU_PROJECTIONS = _csv(
    [
        ["uid", "filename", "projection"],
        ["1", "1_IM-0001-4001.dcm.png", "Frontal"],
        ["1", "1_IM-0001-3001.dcm.png", "Lateral"],
        ["2", "2_IM-0652-1001.dcm.png", "Frontal"],
    ]
)


def _iu_kaggle(root: Path, reports: bytes, projections: bytes) -> None:
    (root / "indiana_reports.csv").write_bytes(reports)
    (root / "indiana_projections.csv").write_bytes(projections)
    _png(root / "images" / "images_normalized" / "1_IM-0001-4001.dcm.png")
    _png(root / "images" / "images_normalized" / "2_IM-0652-1001.dcm.png", 30)


CHEXPERT_LABELS = list(get_space("chexpert").labels)
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]


def _chexpert_row(path: str, frontal: bool, values: dict[str, str]) -> list[str]:
    return [
        path,
        "Male",
        "68",
        "Frontal" if frontal else "Lateral",
        "AP" if frontal else "",
        *(values.get(label, "") for label in CHEXPERT_LABELS),
    ]


CHEXPERT_TRAIN = _csv(
    [
        CHEXPERT_HEADER,
        _chexpert_row(
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            True,
            {"Edema": "1.0", "Atelectasis": "-1.0", "Pneumothorax": "0.0"},
        ),
        _chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", False, {"Edema": "1.0"}),
        _chexpert_row("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", True, {"No Finding": "1.0"}),
    ]
)
CHEXPERT_VALID = _csv(
    [
        CHEXPERT_HEADER,
        _chexpert_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", True, {"Edema": "0.0"}),
    ]
)


def _chexpert(root: Path, name: str, content: bytes) -> None:
    base = root / "CheXpert-v1.0-small"
    base.mkdir()
    tables = {"train.csv": CHEXPERT_TRAIN, "valid.csv": CHEXPERT_VALID, name: content}
    for table, data in tables.items():
        (base / table).write_bytes(data)
    frontal = base / "train" / "patient00001" / "study1" / "view1_frontal.jpg"
    frontal.parent.mkdir(parents=True)
    frontal.write_bytes(jpeg_bytes(gradient(8, 8)))


FOLDER_LABELS = _csv(
    [
        ["image", "labels", "patient_id", "view", "age", "sex"],
        ["images/im0.png", "Cardiomegaly|Effusion", "p0", "PA", "40", "F"],
        ["images/im1.png", "No Finding", "p0", "AP", "41", "F"],
        ["images/im2.png", "Mass", "p1", "PA", "", "M"],
    ]
)


def _folder(root: Path, content: bytes) -> None:
    for i in range(2):
        _png(root / "images" / f"im{i}.png", 50 * i)
    (root / "labels.csv").write_bytes(content)


def _folder_image(root: Path, content: bytes) -> None:
    _png(root / "good.png")
    (root / "damaged.dcm").write_bytes(content)


# name -> (format passed to scan, seeds, the damaged file's name, builder)
DATASETS = {
    "nih-data-entry": ("nih", [NIH_TABLE], "Data_Entry_2017.csv", lambda r, c: _nih(r, "Data_Entry_2017.csv", c)),
    "nih-sample-labels": ("nih", [SAMPLE_TABLE], "sample_labels.csv", lambda r, c: _nih(r, "sample_labels.csv", c)),
    "iu-xml": ("iu", [_iu_report(1)], "1.xml", _iu_xml),
    "iu-kaggle-reports": ("iu", [IU_REPORTS], "indiana_reports.csv", lambda r, c: _iu_kaggle(r, c, IU_PROJECTIONS)),
    "iu-kaggle-projections": (
        "iu",
        [IU_PROJECTIONS],
        "indiana_projections.csv",
        lambda r, c: _iu_kaggle(r, IU_REPORTS, c),
    ),
    "chexpert-train": ("chexpert", [CHEXPERT_TRAIN], "train.csv", lambda r, c: _chexpert(r, "train.csv", c)),
    "folder-labels": ("folder", [FOLDER_LABELS], "labels.csv", _folder),
    "folder-dicom": ("folder", IMAGE_SEEDS["dicom"], "damaged.dcm", _folder_image),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_damaged_data_sets_scan_or_raise_a_one_line_cxr_error(name, tmp_path):
    fmt, seeds, damaged_name, build = DATASETS[name]
    text = fmt != "folder" or name == "folder-labels"
    index = StudyIndex(tmp_path / "index.sqlite")

    @fuzz_settings(40)
    @given(content=damaged(seeds, tokens=TEXT_TOKENS if text else None, text=text), detect=st.booleans())
    def check(content, detect):
        root = fresh_dir(tmp_path)
        build(root, content)
        try:
            result = index.scan(root, None if detect else fmt)
        except CxrError as err:
            message = str(err)
            assert "\n" not in message.strip(), message
            assert str(root) in message, message  # names the data set (the file itself, or its root)
            return
        assert isinstance(result, ScanResult) and result.report.studies >= 0
        again = index.scan(root, None if detect else fmt)  # the stored report must round-trip
        assert not again.changed and again.report == result.report

    try:
        check()
    finally:
        index.close()


# -- regressions: inputs the fuzzing found, kept as plain tests ------------------------------------


def test_dicom_transfer_syntax_swallowing_the_dataset_is_refused_without_identifiers(tmp_path):
    """A (0002,0010) length running past the element made the 'unknown transfer syntax' reason quote the
    whole dataset, planted patient name included."""
    raw = bytearray(write_dicom(tmp_path / "seed.dcm", gradient(8, 8, np.uint16)).read_bytes())
    at = raw.index(b"\x02\x00\x10\x00UI")  # explicit VR: tag, VR, 2-byte length
    raw[at + 6 : at + 8] = struct.pack("<H", 0x2000)
    path = tmp_path / "runaway.dcm"
    path.write_bytes(raw)
    _check_image_result(path)


@pytest.mark.parametrize("name", ["iu-kaggle-reports", "iu-kaggle-projections", "chexpert-train"])
def test_csv_rows_longer_than_their_header_do_not_crash_the_scan(name, tmp_path):
    """csv.DictReader files extra cells under the key None as a list; ``.strip()`` on it raised AttributeError."""
    fmt, seeds, _, build = DATASETS[name]
    header, first, rest = seeds[0].split(b"\n", 2)
    root = tmp_path / "data"
    root.mkdir()
    build(root, b"\n".join([header, first + b",one cell too many", rest]))
    with StudyIndex(tmp_path / "index.sqlite") as index:
        try:
            result = index.scan(root, fmt)
        except CxrError as err:
            assert str(root) in str(err) and "\n" not in str(err)
        else:
            assert result.report.studies >= 0
