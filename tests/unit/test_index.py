from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest
from PIL import Image

from cxr_core.data.sources import SourceOptions
from cxr_core.errors import CxrError, DataError
from cxr_core.store.index import ScanCancelled, StudyIndex


def _png(path, value=100, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


def _labelled_folder(root, n=6):
    rows = ["image,labels,patient_id,view,age,sex"]
    for i in range(n):
        _png(root / "images" / f"im{i}.png", value=10 * i)
        labels = "Cardiomegaly|Effusion" if i % 3 == 0 else "No Finding"
        rows.append(f"images/im{i}.png,{labels},p{i // 2},PA,{40 + i},F")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture
def index(tmp_path):
    with StudyIndex(tmp_path / "db" / "index.sqlite") as idx:
        yield idx


def test_first_scan_counts_and_rescan_reads_nothing(tmp_path, index):
    root = tmp_path / "data"
    _labelled_folder(root)
    first = index.scan(root)
    r = first.report
    assert (r.format, r.studies, r.images, r.patients) == ("folder", 6, 6, 3)
    assert r.labels["Cardiomegaly"] == 2 and r.labels["No Finding"] == 4
    assert r.split_source.startswith("generated: by patient")
    assert sum(r.splits.values()) == 6
    assert first.changed and first.files_probed == 6
    again = index.scan(root)
    assert not again.changed and again.files_probed == 0 and again.files_reused == 6
    assert again.report == r


def test_only_changed_files_are_probed_again(tmp_path, index):
    root = tmp_path / "data"
    _labelled_folder(root)
    index.scan(root)
    _png(root / "images" / "im1.png", value=250)
    os.utime(root / "images" / "im1.png", ns=(1, 1))
    _png(root / "images" / "extra.png")
    result = index.scan(root)
    assert result.changed and result.files_probed == 2 and result.files_reused == 5
    assert result.report.images == 7  # the unlabelled extra image is kept as a study
    assert any("no row in the labels CSV" in p["reason"] for p in result.report.problems)
    (root / "images" / "im2.png").unlink()
    result = index.scan(root)
    assert result.report.images == 6 and result.report.images_missing == 1


def test_label_file_change_rereads_the_source(tmp_path, index):
    root = tmp_path / "data"
    _labelled_folder(root)
    index.scan(root)
    text = (root / "labels.csv").read_text().replace("No Finding", "Nodule", 1)
    (root / "labels.csv").write_text(text)
    result = index.scan(root)
    assert result.changed and result.files_probed == 0
    assert result.report.labels["Nodule"] == 1


def test_studies_and_space_read_back(tmp_path, index):
    root = tmp_path / "data"
    _labelled_folder(root)
    index.scan(root)
    studies = index.studies(root)
    assert [s.id for s in studies] == [f"im{i}" for i in range(6)]
    assert studies[0].images[0].path == "images/im0.png" and studies[0].meta["age"] == 40
    space = index.label_space(root)
    assert space.name == "nih" and space.positives(studies[0].labels) == ["Cardiomegaly", "Effusion"]
    splits = {s.split for s in studies}
    assert splits <= {"train", "val", "test"}
    for split in splits:
        assert all(s.split == split for s in index.studies(root, split=split))
    assert index.roots()[0][0] == str(root)


def test_database_is_owner_only(tmp_path, index):
    assert stat.S_IMODE(os.stat(index.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(index.path.parent).st_mode) == 0o700


def test_unknown_root_and_unindexed_root_are_clear_errors(tmp_path, index):
    with pytest.raises(DataError, match="no such file or directory"):
        index.scan(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no known data set layout. Looked for: synthetic"):
        index.scan(tmp_path / "empty")
    with pytest.raises(DataError, match="not indexed yet"):
        index.report(tmp_path / "empty")


def test_cancelled_scan_keeps_probes_for_next_time(tmp_path, index):
    root = tmp_path / "data"
    _labelled_folder(root, n=4)
    index.scan(root)
    for i in range(600):
        _png(root / "more" / f"m{i}.png", size=8)
    cancel = threading.Event()

    def progress(stage, done, total):
        if stage == "probing images" and done >= 256:
            cancel.set()

    with pytest.raises(ScanCancelled, match="scan cancelled"):
        index.scan(root, progress=progress, cancel=cancel)
    result = index.scan(root)
    assert result.files_probed < 600 and result.report.images == 604


def test_labels_csv_paths_outside_the_root_are_refused(tmp_path, index):
    root = tmp_path / "data"
    _labelled_folder(root, n=2)
    _png(tmp_path / "secret.png")
    with (root / "labels.csv").open("a") as fh:
        fh.write("../secret.png,Nodule,p9,PA,50,M\n")
    result = index.scan(root)
    assert any("outside the data root" in p["reason"] for p in result.report.problems)
    assert result.report.studies == 2
    allowed = index.scan(root, options=SourceOptions(allow_outside_root=True))
    assert allowed.report.studies == 3


def test_labels_csv_paths_through_symlinks_out_of_the_root_are_refused(tmp_path, index):
    root = tmp_path / "data"
    _labelled_folder(root, n=2)
    elsewhere = tmp_path / "elsewhere"
    _png(elsewhere / "private.png")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # as an archive from elsewhere might carry
    (root / "direct.png").symlink_to(elsewhere / "private.png")
    with (root / "labels.csv").open("a") as fh:
        fh.write("linked/private.png,Nodule,p9,PA,50,M\n")
        fh.write("direct.png,Mass,p8,PA,51,F\n")
    result = index.scan(root)
    refused = [p for p in result.report.problems if "through a symlink" in p["reason"]]
    assert len(refused) == 2 and result.report.studies == 2
    allowed = index.scan(root, options=SourceOptions(allow_outside_root=True))
    assert allowed.report.studies == 4


@pytest.mark.slow
def test_two_first_time_index_commands_on_one_root_both_succeed(tmp_path):
    """Two `data index` processes meeting on a root nobody indexed yet (was: UNIQUE constraint failed)."""
    import subprocess

    from tests.cli import SCRIPT

    for trial in range(3):
        root = tmp_path / f"root{trial}"
        root.mkdir()
        for i in range(40):
            Image.fromarray(np.full((32, 32), i, np.uint8)).save(root / f"i{i}.png")
        env = {**os.environ, "CXR_HOME": str(tmp_path / f"home{trial}"), "NO_COLOR": "1"}
        procs = [subprocess.Popen([str(SCRIPT), "data", "index", str(root)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
        with StudyIndex(tmp_path / f"home{trial}" / "index.sqlite") as index:
            assert len(index.studies(root)) == 40


def _folder(root, n=30, size=32):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size), i % 256, np.uint8)).save(root / f"i{i}.png")
    return root


@pytest.mark.slow
def test_another_process_holding_the_index_past_the_busy_timeout_is_one_line(tmp_path, monkeypatch):
    import subprocess
    import sys

    from cxr_core.store import db

    path = tmp_path / "index.sqlite"
    StudyIndex(path).close()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(30)"), str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 300)
        with StudyIndex(tmp_path / "." / "index.sqlite") as index:
            index._conn.execute("PRAGMA busy_timeout = 300")
            with pytest.raises(CxrError, match="index.sqlite: another process kept the database locked"):
                index.scan(_folder(tmp_path / "root"))
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_damaged_index_is_one_line_naming_the_file(tmp_path):
    from tests.cli import cxr

    home = tmp_path / "home"
    root = _folder(tmp_path / "root", n=200)
    assert cxr("data", "index", root, env={"CXR_HOME": str(home)}).returncode == 0
    index = home / "index.sqlite"
    data = bytearray(index.read_bytes())
    data[4096 * 2:4096 * 6] = b"\xa5" * (4096 * 4)  # pages in the middle, not the header
    index.write_bytes(bytes(data))
    (root / "new.png").write_bytes((root / "i0.png").read_bytes())
    out = cxr("data", "index", root, env={"CXR_HOME": str(home)})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "index.sqlite: the database file is damaged" in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.slow
def test_a_full_disk_is_said_as_a_full_disk(tmp_path):
    import subprocess

    from tests.cli import cxr

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        root = _folder(tmp_path / "root", n=2000, size=8)
        out = cxr("data", "index", root, env={"CXR_HOME": str(mount / "home")})
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert "the disk is full" in out.stderr and "cannot rollback" not in out.stderr
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
