"""Reviewer decisions: stored per action, never lost or doubled (two writers, SIGKILL), exported, compared."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from cxr_core.errors import CxrError
from cxr_core.eval.agreement import Agreement, ReviewedStudies, agreement, agreement_by_finding
from cxr_core.predictions import Predictions
from cxr_core.store.reviews import (
    EXPORT_COLUMNS,
    PARTIAL,
    REVIEWED,
    UNCERTAIN_STUDY,
    UNREVIEWED,
    ReviewStore,
    root_key,
)
from cxr_tui.cli.reviews import app

ROOT = "/data/nih"


@pytest.fixture
def store(tmp_path: Path):
    with ReviewStore(tmp_path / "reviews.sqlite") as s:
        yield s


def _rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT action_id, study, finding, decision FROM actions ORDER BY id").fetchall()
    finally:
        conn.close()


# -- recording and reading ----------------------------------------------------------------------------

def test_record_latest_history(store: ReviewStore):
    first = store.record(ROOT, "s1", "Effusion", "accept", note="blunted angle", reviewer="ana",
                         probability=0.83, flagged=True, model="densenet121@abc")
    assert (first.study, first.finding, first.decision, first.note, first.reviewer) == ("s1", "Effusion", "accept",
                                                                                      "blunted angle", "ana")
    assert first.flagged is True and first.probability == 0.83 and first.model == "densenet121@abc"
    assert abs(first.at - time.time()) < 60 and first.root == root_key(ROOT)
    store.record(ROOT, "s1", "Mass", "uncertain", reviewer="ana")
    second = store.record(ROOT, "s1", "Effusion", "reject", reviewer="ana")  # note and model view carried over
    assert (second.decision, second.note, second.reviewer, second.probability, second.flagged) == (
        "reject", "blunted angle", "ana", 0.83, True)
    other = store.record(ROOT, "s1", "Effusion", "accept", reviewer="bo")  # another reader: their own reading
    assert (other.decision, other.note, other.probability) == ("accept", None, None)
    noted = store.set_note(ROOT, "s1", "Effusion", "small effusion after all?", reviewer="ana")
    assert (noted.kind, noted.decision, noted.note) == ("note", "reject", "small effusion after all?")
    store.record(ROOT, "s2", "Effusion", "ACCEPT ", reviewer="ana")  # case and spaces forgiven

    latest = store.latest(ROOT, reviewer="ana")
    assert set(latest) == {("s1", "Effusion"), ("s1", "Mass"), ("s2", "Effusion")}
    assert latest[("s1", "Effusion")] == noted
    assert store.latest(ROOT, reviewer="bo")[("s1", "Effusion")] == other  # ana's later note did not touch it
    assert set(store.latest(ROOT, "s1", reviewer="ana")) == {("s1", "Effusion"), ("s1", "Mass")}
    assert store.latest("/elsewhere", reviewer="ana") == {}
    assert [h.decision for h in store.history(ROOT, "s1", "Effusion")] == ["accept", "reject", "accept", "reject"]
    assert [h.kind for h in store.history(ROOT, "s1", "Effusion")] == ["decision", "decision", "decision", "note"]
    assert store.count() == 6 and store.roots() == [root_key(ROOT)]
    assert store.readers(ROOT) == ["ana", "bo"]
    assert len(store.reviews(ROOT)) == 4  # every reader's current decisions
    assert {r.reviewer for r in store.reviews(ROOT, reviewer="bo")} == {"bo"}


def test_clear_note_and_reviewer_default(store: ReviewStore):
    import getpass

    store.record(ROOT, "s1", "Mass", "accept", note="x")
    cleared = store.record(ROOT, "s1", "Mass", "clear", note="")
    assert cleared.decision == "clear" and cleared.note is None and cleared.reviewer == getpass.getuser()
    assert store.reviews(ROOT) == []  # current decisions leave cleared ones out
    assert [r.decision for r in store.reviews(ROOT, include_cleared=True)] == ["clear"]
    assert len(store.reviews(ROOT, history=True)) == 2
    only_note = store.set_note(ROOT, "s9", "Mass", "look again")  # a note before any decision
    assert only_note.decision == "clear" and store.status_by_study(ROOT) == {}


def test_status_by_study(store: ReviewStore):
    store.record(ROOT, "a", "Mass", "accept")
    store.record(ROOT, "a", "Effusion", "reject")
    store.record(ROOT, "b", "Mass", "accept")
    store.record(ROOT, "c", "Mass", "uncertain")
    store.record(ROOT, "d", "Mass", "accept")
    store.record(ROOT, "d", "Mass", "clear")
    store.record("/other", "e", "Mass", "accept")
    assert store.status_by_study(ROOT) == {"a": REVIEWED, "b": REVIEWED, "c": UNCERTAIN_STUDY}
    expected = {"a": ["Mass", "Effusion"], "b": ["Mass", "Nodule"], "c": ["Mass"], "d": ["Mass"]}
    status = store.status_by_study(ROOT, expected)
    assert status == {"a": REVIEWED, "b": PARTIAL, "c": UNCERTAIN_STUDY}
    assert status.get("d", UNREVIEWED) == UNREVIEWED


def test_user_errors_are_cxr_errors(store: ReviewStore, tmp_path: Path):
    with pytest.raises(CxrError, match="unknown review decision 'maybe'"):
        store.record(ROOT, "s1", "Mass", "maybe")
    with pytest.raises(CxrError, match="study is empty"):
        store.record(ROOT, " ", "Mass", "accept")
    with pytest.raises(CxrError, match="not between 0 and 1"):
        store.record(ROOT, "s1", "Mass", "accept", probability=float("nan"))
    with pytest.raises(CxrError, match="root is empty"):
        store.record("", "s1", "Mass", "accept")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CxrError, match="garbage.sqlite"):
        ReviewStore(garbage)
    with pytest.raises(CxrError, match="no such directory"):
        store.export_csv(tmp_path / "missing" / "out.csv")
    assert store.count() == 0


def test_files_are_owner_only(tmp_path: Path):
    path = tmp_path / "reviews.sqlite"
    with ReviewStore(path) as store:
        store.record(ROOT, "s1", "Mass", "accept")
        wal = Path(f"{path}-wal")
        assert wal.exists() and (wal.stat().st_mode & 0o777) == 0o600
    assert (path.stat().st_mode & 0o777) == 0o600


def test_default_path_is_in_the_data_dir(cxr_home: Path):
    with ReviewStore() as store:
        store.record(ROOT, "s1", "Mass", "reject")
    assert (cxr_home / "reviews.sqlite").exists()


# -- idempotency --------------------------------------------------------------------------------------

def test_retried_action_id_is_stored_once(store: ReviewStore):
    first = store.record(ROOT, "s1", "Mass", "accept", action_id="tui-1")
    again = store.record(ROOT, "s1", "Mass", "accept", action_id="tui-1")
    assert again == first and store.count() == 1
    note = store.set_note(ROOT, "s1", "Mass", "n", action_id="tui-2")
    assert store.set_note(ROOT, "s1", "Mass", "n", action_id="tui-2") == note and store.count() == 2
    with pytest.raises(CxrError, match="already used for a different action"):
        store.record(ROOT, "s1", "Mass", "reject", action_id="tui-1")
    assert store.count() == 2 and store.latest(ROOT)[("s1", "Mass")].note == "n"


# -- export -------------------------------------------------------------------------------------------

def test_export_csv(store: ReviewStore, tmp_path: Path):
    store.record(ROOT, "s1", "Mass", "accept", note='comma, "quote"\nnew line', reviewer="ana",
                 probability=0.1234567890123, flagged=False, model="m@1")
    store.record(ROOT, "s1", "Mass", "reject", reviewer="ana")
    store.record(ROOT, "s2", "Effusion", "uncertain", reviewer="bo")
    store.record(ROOT, "s3", "Effusion", "accept", reviewer="bo")
    store.record(ROOT, "s3", "Effusion", "clear", reviewer="bo")
    store.record("/other/root", "x1", "Mass", "accept", reviewer="cy")
    out = tmp_path / "reviews.csv"
    out.write_text("old")
    assert store.export_csv(out, ROOT) == 2
    assert (out.stat().st_mode & 0o777) == 0o644
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    assert [(r["study"], r["finding"], r["decision"], r["reviewer"]) for r in rows] == [
        ("s1", "Mass", "reject", "ana"), ("s2", "Effusion", "uncertain", "bo")]
    s1 = rows[0]
    assert s1["note"] == 'comma, "quote"\nnew line' and s1["flagged"] == "0" and s1["model"] == "m@1"
    assert float(s1["probability"]) == 0.1234567890123 and s1["root"] == root_key(ROOT)
    assert rows[1]["probability"] == rows[1]["flagged"] == rows[1]["model"] == rows[1]["note"] == ""
    when = datetime.fromisoformat(s1["at"])
    assert when.tzinfo is not None and abs(when.timestamp() - time.time()) < 60
    assert store.export_csv(out) == 3  # every root
    assert store.export_csv(out, history=True) == 6
    empty = tmp_path / "empty.csv"
    assert store.export_csv(empty, "/nothing/here") == 0
    assert empty.read_text().strip() == ",".join(f'"{c}"' for c in EXPORT_COLUMNS)


def test_export_csv_neutralises_spreadsheet_formulas(store: ReviewStore, tmp_path: Path):
    """A note or study id that Excel would evaluate is written as text; --raw-text keeps it byte for byte."""
    store.record(ROOT, "=HYPERLINK(\"http://x\")", "Mass", "accept", note="+ small effusion", reviewer="ana")
    store.record(ROOT, "s2", "Mass", "reject", note="@SUM(A1)", reviewer="ana")
    store.record(ROOT, "s3", "Mass", "reject", note="-ve, 2 = 2", reviewer="ana")
    store.record(ROOT, "s4", "Mass", "accept", note="no change; =ok later", reviewer="ana")  # quoted: ';' locales
    out = tmp_path / "reviews.csv"

    def read(**kwargs) -> dict[str, dict[str, str]]:
        store.export_csv(out, ROOT, **kwargs)
        with open(out, newline="", encoding="utf-8") as fh:
            return {r["note"]: r for r in csv.DictReader(fh)}

    safe = read()
    assert set(safe) == {"'+ small effusion", "'@SUM(A1)", "'-ve, 2 = 2", "no change; =ok later"}
    assert safe["'+ small effusion"]["study"] == "'=HYPERLINK(\"http://x\")"
    assert '"no change; =ok later"' in out.read_text()
    raw = read(raw_text=True)
    assert set(raw) == {"+ small effusion", "@SUM(A1)", "-ve, 2 = 2", "no change; =ok later"}
    assert raw["+ small effusion"]["study"] == '=HYPERLINK("http://x")'


# -- concurrency and crashes --------------------------------------------------------------------------

def _writer(path: str, worker: int, count: int, start, out) -> None:
    start.wait()
    try:
        with ReviewStore(Path(path)) as store:
            for i in range(count):
                store.record(ROOT, f"w{worker}-s{i}", "Mass", ("accept", "reject", "uncertain")[i % 3],
                             reviewer=f"r{worker}", action_id=f"w{worker}-{i}")
                if i % 50 == 0:
                    store.status_by_study(ROOT)  # reads in between, as a TUI does
        out.put("ok")
    except BaseException as exc:  # reported to the parent, which fails the test with it
        out.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_two_processes_record_concurrently(tmp_path: Path):
    path = tmp_path / "reviews.sqlite"
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(path), w, 500, start, out)) for w in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == ["ok", "ok"]
    rows = _rows(path)
    assert len(rows) == 1000 and len({r[0] for r in rows}) == 1000
    with ReviewStore(path) as store:
        assert len(store.reviews(ROOT)) == 1000
        assert len(store.latest(ROOT, reviewer="r0")) == len(store.latest(ROOT, reviewer="r1")) == 500
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_threads_share_one_store(store: ReviewStore):
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                store.record(ROOT, f"t{t}-{i}", "Mass", "accept")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.count() == 100


def _acknowledging_child(path: str, fd: int, prefix: str) -> None:
    """Record actions forever; announce each id before (B) and after the commit returned (A)."""
    with ReviewStore(Path(path)) as store:
        for i in range(100_000):
            action = f"{prefix}-{i}"
            os.write(fd, f"B {action}\n".encode())
            store.record(ROOT, f"{prefix}-s{i % 97}", ("Mass", "Effusion")[i % 2], ("accept", "reject")[i % 2],
                         note=f"note {i}", action_id=action)
            os.write(fd, f"A {action}\n".encode())


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.slow
def test_sigkill_mid_action_loses_nothing_acknowledged(tmp_path: Path):
    path = tmp_path / "reviews.sqlite"
    ctx = mp.get_context("fork")
    rng = random.Random(5)
    acked_all: list[str] = []
    for round_ in range(6):
        read_fd, write_fd = os.pipe()
        child = ctx.Process(target=_acknowledging_child, args=(str(path), write_fd, f"k{round_}"))
        child.start()
        os.close(write_fd)
        head = b""
        while head.count(b"\nA ") < 3:  # a few acknowledged actions, then a random moment
            head += os.read(read_fd, 4096)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        lines = (head.decode() + _read_all(read_fd)).splitlines()
        os.close(read_fd)
        begun = [line[2:] for line in lines if line.startswith("B ")]
        acked = [line[2:] for line in lines if line.startswith("A ")]
        stored = [r[0] for r in _rows(path) if r[0].startswith(f"k{round_}-")]
        assert stored == begun[:len(stored)]  # in order, no duplicates, nothing never begun
        assert acked == stored[:len(acked)] and len(stored) - len(acked) in (0, 1)  # at most the in-flight one
        acked_all += acked
        # The restarted client retries what it had begun without an acknowledgement: stored exactly once.
        unacked = begun[len(acked):]
        with ReviewStore(path) as store:
            for action in unacked:
                i = int(action.rsplit("-", 1)[1])
                store.record(ROOT, f"k{round_}-s{i % 97}", ("Mass", "Effusion")[i % 2], ("accept", "reject")[i % 2],
                             note=f"note {i}", action_id=action)
        stored = [r[0] for r in _rows(path) if r[0].startswith(f"k{round_}-")]
        assert stored == begun
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = [r[0] for r in conn.execute("SELECT action_id FROM actions")]
    conn.close()
    assert len(ids) == len(set(ids)) and set(acked_all) <= set(ids)


KILLS = 8
PLAN = 1000  # the size: one reviewer's 1,000 actions, applied across SIGKILLed sessions


def _plan_action(store: ReviewStore, i: int) -> None:
    store.record(ROOT, f"plan-s{i % 211}", ("Mass", "Effusion", "Nodule")[i % 3], ("accept", "reject", "uncertain")[i % 3],
                 note=f"n{i}", action_id=f"plan-{i}")


def _plan_child(path: str, fd: int, start: int) -> None:
    with ReviewStore(Path(path)) as store:
        for i in range(start, PLAN):
            os.write(fd, f"B {i}\n".encode())
            _plan_action(store, i)
            os.write(fd, f"A {i}\n".encode())


@pytest.mark.slow
def test_thousand_actions_survive_random_sigkills(tmp_path: Path):
    """The TUI's code path (ReviewStore.record) applying 1,000 actions, killed at random points until done."""
    path = tmp_path / "reviews.sqlite"
    ctx = mp.get_context("fork")
    rng = random.Random(11)
    acknowledged: set[int] = set()
    kills = 0
    while True:
        with ReviewStore(path) as store:
            stored = [int(r.action_id.split("-")[1]) for r in store.reviews(ROOT, history=True, include_cleared=True)]
        assert len(stored) == len(set(stored)) and sorted(stored) == list(range(len(stored)))  # no gap, no duplicate
        assert acknowledged <= set(stored)  # everything acknowledged before a kill survived it
        if len(stored) == PLAN:
            break
        read_fd, write_fd = os.pipe()
        child = ctx.Process(target=_plan_child, args=(str(path), write_fd, len(stored)))
        child.start()
        os.close(write_fd)
        head = b""
        if kills < KILLS:
            # Kill by progress, not by the clock: a fast machine would otherwise finish the plan before the
            # kills land. A random count of acknowledged actions, then a random moment inside the next ones.
            # Targets sum to at most 800 and the extra moment is <= 2 ms (~10 actions on tmpfs at 0.2 ms each),
            # so every kill lands before the plan's end even on a fast disk.
            target = rng.randint(20, (PLAN - 200) // KILLS)
            while head.count(b"A ") < target:
                chunk = os.read(read_fd, 4096)
                assert chunk, "the child ended before it was killed"
                head += chunk
            time.sleep(rng.uniform(0.0, 0.002))
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        child.join(120)
        assert child.exitcode == (-signal.SIGKILL if head else 0)
        acknowledged |= {int(line[2:]) for line in (head.decode() + _read_all(read_fd)).splitlines() if line.startswith("A ")}
        os.close(read_fd)
    assert kills == KILLS and len(acknowledged) >= PLAN - kills  # at most the in-flight action of each kill unacknowledged
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_lock_held_past_busy_timeout_is_retried(tmp_path: Path):
    path = tmp_path / "reviews.sqlite"
    with ReviewStore(path, retry_seconds=30) as store:
        store._conn.execute("PRAGMA busy_timeout = 20")  # make SQLite give up fast, so our retry loop is what waits
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.4, lambda: holder.execute("COMMIT"))
        release.start()
        started = time.monotonic()
        store.record(ROOT, "s1", "Mass", "accept")
        assert time.monotonic() - started >= 0.3 and store.count() == 1
        release.join()
        holder.close()


def test_lock_held_for_ever_is_one_clear_error(tmp_path: Path):
    path = tmp_path / "reviews.sqlite"
    with ReviewStore(path, retry_seconds=0.3) as store:
        store._conn.execute("PRAGMA busy_timeout = 20")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(CxrError, match="kept the reviews database locked"):
                store.record(ROOT, "s1", "Mass", "accept")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert store.count() == 0


# -- agreement ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_kappa_matches_sklearn(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    flags = rng.random(n) < rng.uniform(0.05, 0.95)
    truth = np.where(rng.random(n) < rng.uniform(0.5, 0.95), flags, ~flags)
    decisions = np.where(truth, "accept", "reject").astype(object)
    decisions[rng.random(n) < 0.1] = "uncertain"
    table = agreement(flags.tolist(), decisions.tolist(), "Mass")
    kept = decisions != "uncertain"
    model, reviewer = flags[kept].astype(int), (decisions[kept] == "accept").astype(int)
    assert table.n == int(kept.sum()) and table.excluded == int((~kept).sum())
    assert table.both_positive == int(((model == 1) & (reviewer == 1)).sum())
    assert table.model_only == int(((model == 1) & (reviewer == 0)).sum())
    assert table.reviewer_only == int(((model == 0) & (reviewer == 1)).sum())
    assert table.observed == pytest.approx(float((model == reviewer).mean()), abs=1e-12)
    if len(set(model) | set(reviewer)) > 1:
        assert table.kappa == pytest.approx(cohen_kappa_score(model, reviewer), abs=1e-12)


@pytest.mark.parametrize(("flags", "decisions", "kappa"), [
    ([True, True, True], ["accept", "reject", "accept"], "sklearn"),     # the model has one category
    ([True, False, True], ["reject", "reject", "reject"], "sklearn"),    # the reviewer has one category
    ([True, True], ["reject", "reject"], "sklearn"),                     # each its own single category
    ([True, True], ["accept", "accept"], None),                          # one shared category: undefined
    ([False], ["reject"], None),
    ([], [], None),
    ([True], ["uncertain"], None),
])
def test_kappa_edge_cases(flags, decisions, kappa):
    table = agreement(flags, decisions)
    if kappa == "sklearn":
        expected = cohen_kappa_score([int(f) for f in flags], [int(d == "accept") for d in decisions])
        assert table.kappa == pytest.approx(expected, abs=1e-12)
    else:
        assert table.kappa is None
    assert table.observed is None if not table.n else 0.0 <= table.observed <= 1.0


def test_agreement_by_finding_from_stored_reviews(store: ReviewStore):
    store.record(ROOT, "a", "Mass", "accept", flagged=True, probability=0.9)
    store.record(ROOT, "b", "Mass", "reject", flagged=True, probability=0.6)
    store.record(ROOT, "c", "Mass", "reject", flagged=False, probability=0.1)
    store.record(ROOT, "d", "Mass", "uncertain", flagged=True, probability=0.7)
    store.record(ROOT, "a", "Effusion", "accept")  # no model flag known
    by_finding = agreement_by_finding(store.reviews(ROOT))
    assert list(by_finding) == ["Effusion", "Mass"]
    mass = by_finding["Mass"]
    assert (mass.both_positive, mass.model_only, mass.reviewer_only, mass.both_negative, mass.excluded) == (1, 1, 0, 1, 1)
    assert mass.observed == pytest.approx(2 / 3)
    assert mass.kappa == pytest.approx(cohen_kappa_score([1, 1, 0], [1, 0, 0]), abs=1e-12)
    assert by_finding["Effusion"] == Agreement("Effusion", excluded=1)
    assert json.dumps(mass.to_dict())
    # Today's thresholds instead of the flags shown at review time.
    flags = {("a", "Mass"): True, ("b", "Mass"): False, ("c", "Mass"): False, ("a", "Effusion"): False}
    now = agreement_by_finding(store.reviews(ROOT), flags)
    assert now["Mass"].observed == 1.0 and now["Effusion"].reviewer_only == 1


def test_reviewed_studies_pairs_decisions_with_the_study_maximum(store: ReviewStore):
    """A study is flagged when any of its images reaches the threshold; decisions without a score are left out."""
    preds = Predictions(["Mass", "Effusion"], [[0.2, 0.9], [0.7, 0.1], [0.4, 0.3], [0.1, float("nan")]],
                        study=["a", "a", "b", "c"], image=["a1", "a2", "b1", "c1"])
    store.record(ROOT, "a", "Mass", "accept")
    store.record(ROOT, "b", "Mass", "reject")
    store.record(ROOT, "c", "Effusion", "accept")  # its only image has no Effusion score
    store.record(ROOT, "zz", "Mass", "accept")  # not in the predictions
    reviewed = ReviewedStudies.build(preds, store.reviews(ROOT))
    assert reviewed.total == 4 and reviewed.max_prob.shape == (3, 2)
    low = reviewed.agreement("Mass", 0, 0.3)  # a (0.7) and b (0.4) flagged
    assert (low.both_positive, low.model_only, low.reviewer_only, low.both_negative, low.excluded) == (1, 1, 0, 0, 1)
    high = reviewed.agreement("Mass", 0, 0.5)  # only a flagged: full agreement
    assert (high.both_positive, high.both_negative, high.observed) == (1, 1, 1.0)
    assert reviewed.agreement("Effusion", 1, 0.5).excluded == 1
    empty = ReviewedStudies.empty(2).agreement("Mass", 0, 0.5)
    assert empty.n == 0 and empty.kappa is None


def test_agreement_rejects_unknown_decisions():
    with pytest.raises(CxrError):
        agreement([True], ["maybe"])
    with pytest.raises(ValueError):
        agreement([True, False], ["accept"])


# -- CLI ----------------------------------------------------------------------------------------------

def test_cli_export_and_list(tmp_path: Path):
    db = tmp_path / "reviews.sqlite"
    with ReviewStore(db) as store:
        store.record(ROOT, "s1", "Mass", "accept", note="[bold]not markup[/bold]", probability=0.91, flagged=True)
        store.record(ROOT, "s2", "Effusion", "reject", flagged=False)
        store.record("/other", "x", "Nodule", "uncertain")
    runner = CliRunner()
    out = tmp_path / "out.csv"
    result = runner.invoke(app, ["export", "--out", str(out), "--root", ROOT, "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 2 and out.exists()
    result = runner.invoke(app, ["export", "--out", str(out), "--db", str(db)])
    assert result.exit_code == 0 and "wrote 3 decisions" in result.stdout
    with ReviewStore(db) as store:
        store.record(ROOT, "s3", "Mass", "accept", note="=1+1")
    runner.invoke(app, ["export", "--out", str(out), "--db", str(db)])
    assert "\"'=1+1\"" in out.read_text()
    result = runner.invoke(app, ["export", "--out", str(out), "--db", str(db), "--raw-text"])
    assert result.exit_code == 0 and ',"=1+1",' in out.read_text()

    result = runner.invoke(app, ["list", "--db", str(db), "--json"])
    listed = json.loads(result.stdout)
    assert [r["study"] for r in listed] == ["s3", "x", "s2", "s1"] and listed[3]["probability"] == 0.91
    result = runner.invoke(app, ["list", "--db", str(db), "--root", ROOT], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "s1" in result.stdout and "[bold]not markup[/bold]" in result.stdout and "flagged 0.91" in result.stdout
    assert "x" not in result.stdout.split()
    result = runner.invoke(app, ["list", "--db", str(db), "--limit", "1"])
    assert "3 more" in result.stdout
    result = runner.invoke(app, ["list", "--db", str(db), "--root", "/nowhere"])
    assert "no reviews yet" in result.stdout
    result = runner.invoke(app, [])
    assert "export" in result.stdout and "list" in result.stdout


def test_cli_bad_database_is_a_cxr_error(tmp_path: Path):
    db = tmp_path / "bad.sqlite"
    db.write_bytes(b"\x00garbage" * 200)
    result = CliRunner().invoke(app, ["list", "--db", str(db)])
    assert result.exit_code != 0 and isinstance(result.exception, CxrError)


def test_a_study_level_read_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    with ReviewStore(tmp_path / "r.sqlite") as store:
        reviews = store.record_study("/data", "s1", {"Effusion": ("accept", 0.9, True), "Mass": ("reject", 0.1, False)},
                                     reviewer="ann", model="abc")
        assert [(r.finding, r.decision, r.flagged) for r in reviews] == [("Effusion", "accept", True),
                                                                        ("Mass", "reject", False)]
        with pytest.raises(CxrError):  # the second decision is invalid: the first is not kept either
            store.record_study("/data", "s2", {"Effusion": ("reject", 0.2, False), "Mass": ("maybe", 0.1, False)})
        latest = store.latest("/data", reviewer="ann")
        assert set(latest) == {("s1", "Effusion"), ("s1", "Mass")}


def test_a_database_from_before_model_names_opens_and_exports_the_run(tmp_path: Path) -> None:
    from cxr_core.store.reviews import MIGRATIONS

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO actions (action_id, root, study, finding, kind, decision, note, reviewer, at, model)"
                 " VALUES ('x1', '/data', 's1', 'Mass', 'decision', 'accept', NULL, 'ann', 1.0, 'abc123')")
    conn.execute("INSERT INTO latest_action VALUES ('/data', 's1', 'Mass', 1, 'accept')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with ReviewStore(path) as store:
        old = store.latest("/data", reviewer="ann")[("s1", "Mass")]
        assert old.model == "abc123" and old.model_name is None  # kept, nothing invented
        store.record("/data", "s2", "Mass", "reject", model="def456", model_name="20261205-resnet10t")
        out = tmp_path / "export.csv"
        store.export_csv(out)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert list(rows[0]) == list(EXPORT_COLUMNS) and EXPORT_COLUMNS[-2:] == ("model_name", "role")
    by_study = {row["study"]: row for row in rows}
    assert by_study["s2"]["model_name"] == "20261205-resnet10t" and by_study["s2"]["model"] == "def456"
    assert by_study["s1"]["model_name"] == ""
