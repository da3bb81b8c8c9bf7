"""Reviewer decisions: per (data set root, study, finding) accept / reject / uncertain and a note, in SQLite.

Every action is one row appended to ``actions`` in its own committed transaction, and ``record()`` returns
only after the commit: that return is the acknowledgement. A killed terminal therefore loses nothing it was
told was saved, and a crash mid-transaction leaves no trace (WAL, ``synchronous = FULL``).

``latest_action`` holds, per (root, study, finding, reviewer, role), the id and decision of its last action — each
reader's reading is their own; an adjudicator's decision where readers disagree is kept apart — written in the same
transaction as the action: it is derived (``rebuild_latest`` recomputes it from ``actions``) and makes the
worklist's status of 112k studies one sequential read instead of a max() per key.

Rows are *snapshots*: each holds the whole state of its (root, study, finding) after the action — decision,
note and the model's view (flag, probability, model fingerprint) — so the current state is simply the last
row of the key, and the table doubles as the audit trail (who changed what, when). ``set_note`` keeps the
decision; ``record`` keeps the note (and the model's view) unless it is given.

Each action carries a client action id (``action_id``, a random UUID unless the caller supplies one) that is
UNIQUE in the table: retrying an action whose acknowledgement was lost (a killed process, a retry after
"database is locked") never stores it twice.

Two reviewer processes on one database: writes take the write lock up front (``BEGIN IMMEDIATE``) so a
stale read snapshot can never make a commit fail, the connection waits ``BUSY_TIMEOUT_MS`` for the lock,
and anything still "locked"/"busy" is retried with backoff for ``retry_seconds`` before one clear
``CxrError`` — the raw "database is locked" never reaches the caller.

Only study ids are stored, never patient identifiers. Every ``ReviewStore`` on one file in a process shares one
connection (:func:`cxr_core.store.db.open_database`): opening a second never costs the first its locks. Do not
share one across ``fork()``: open it in the process that uses it (it is safe to share between threads).
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from cxr_core.atomic import atomic_path
from cxr_core.errors import CxrError
from cxr_core.paths import data_dir
from cxr_core.store.db import Database, open_database
from cxr_core.text import db_value, fs_text, name_text, spreadsheet_safe, visible
from cxr_core.users import current_user

ACCEPT, REJECT, UNCERTAIN, CLEAR = "accept", "reject", "uncertain", "clear"
DECISIONS = (ACCEPT, REJECT, UNCERTAIN, CLEAR)
"""``clear`` withdraws an earlier decision: the finding is undecided again (kept in the history)."""

DECIDE, NOTE = "decision", "note"
"""What an action changed (``Review.kind``): the decision, or only the note."""

REVIEWED, UNCERTAIN_STUDY, PARTIAL, UNREVIEWED = "reviewed", "uncertain", "partial", "unreviewed"
"""Study statuses from :meth:`ReviewStore.status_by_study` (studies without any decision are absent)."""

EXPORT_COLUMNS = ("study", "finding", "decision", "note", "reviewer", "at", "probability", "flagged", "model", "root",
                  "model_name", "role")
"""``model`` is the checkpoint's fingerprint; ``model_name`` its run id (or file name), last so scripts reading
the earlier columns by position keep working."""

DEFAULT_RETRY_SECONDS = 300.0
_DECIDED_BY_STUDY = " AND c.decision != 'clear' GROUP BY c.study"
_SEP = "\x1f"  # unit separator: joins finding names in one SQL aggregate (never part of a label name)

MIGRATIONS = (
    """
    CREATE TABLE actions (
        id INTEGER PRIMARY KEY,
        action_id TEXT NOT NULL UNIQUE,
        root TEXT NOT NULL,
        study TEXT NOT NULL,
        finding TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('decision', 'note')),
        decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'uncertain', 'clear')),
        note TEXT,
        reviewer TEXT NOT NULL,
        at REAL NOT NULL,
        model TEXT,
        flagged INTEGER CHECK (flagged IN (0, 1)),
        probability REAL
    );
    CREATE INDEX actions_key ON actions (root, study, finding, id);
    CREATE TABLE latest_action (
        root TEXT NOT NULL,
        study TEXT NOT NULL,
        finding TEXT NOT NULL,
        last_id INTEGER NOT NULL REFERENCES actions(id),
        decision TEXT NOT NULL,
        PRIMARY KEY (root, study, finding)
    ) WITHOUT ROWID;
    CREATE VIEW latest AS SELECT a.* FROM latest_action AS c JOIN actions AS a ON a.id = c.last_id;
    """,
    # 2: the model by name (its run id, or its file's name) beside its fingerprint, for exports people read.
    """
    ALTER TABLE actions ADD COLUMN model_name TEXT;
    DROP VIEW latest;
    CREATE VIEW latest AS SELECT a.* FROM latest_action AS c JOIN actions AS a ON a.id = c.last_id;
    """,
    # 3: several readers. Each reader's (and an adjudicator's) last action per (root, study, finding) is its own
    # current state: two radiologists reading the same study no longer overwrite each other.
    """
    ALTER TABLE actions ADD COLUMN role TEXT NOT NULL DEFAULT 'reader' CHECK (role IN ('reader', 'adjudicator'));
    CREATE TABLE latest_by_reader (
        root TEXT NOT NULL,
        study TEXT NOT NULL,
        finding TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        role TEXT NOT NULL,
        last_id INTEGER NOT NULL REFERENCES actions(id),
        decision TEXT NOT NULL,
        PRIMARY KEY (root, study, finding, reviewer, role)
    ) WITHOUT ROWID;
    INSERT INTO latest_by_reader SELECT root, study, finding, reviewer, role, id, decision FROM actions
        WHERE id IN (SELECT max(id) FROM actions GROUP BY root, study, finding, reviewer, role);
    DROP VIEW latest;
    DROP TABLE latest_action;
    ALTER TABLE latest_by_reader RENAME TO latest_action;
    CREATE VIEW latest AS SELECT a.* FROM latest_action AS c JOIN actions AS a ON a.id = c.last_id;
    """,
)
READER, ADJUDICATOR = "reader", "adjudicator"
"""Roles of an action: a reader's own read, or an adjudicator's decision where readers disagreed."""

_COLUMNS = ("id, action_id, root, study, finding, kind, decision, note, reviewer, at, model, flagged, probability,"
            " model_name, role")
_A_COLUMNS = ", ".join(f"a.{c}" for c in _COLUMNS.split(", "))

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Review:
    """One stored action: the state of (root, study, finding) after it, and who did it when."""

    id: int
    action_id: str
    root: str
    study: str
    finding: str
    kind: str
    decision: str
    note: str | None
    reviewer: str
    at: float
    model: str | None = None
    flagged: bool | None = None
    probability: float | None = None
    model_name: str | None = None
    role: str = READER

    @property
    def decided(self) -> bool:
        """True unless the decision was cleared."""
        return self.decision != CLEAR

    @property
    def when(self) -> str:
        """``at`` as ISO-8601 local time with its UTC offset, to the second."""
        return iso_time(self.at)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for JSON); ``when`` added next to ``at``."""
        return {**asdict(self), "when": self.when}


def iso_time(at: float) -> str:
    """Unix time -> ISO-8601 local time with offset, e.g. ``2025-03-01T14:02:11+01:00``."""
    return datetime.fromtimestamp(at).astimezone().isoformat(timespec="seconds")


def root_key(root: str | os.PathLike[str]) -> str:
    """The key a data set root is stored under: the absolute path, as the study index keys roots."""
    text = os.fspath(root)
    if not str(text).strip():
        raise CxrError("reviews: the data set root is empty")
    return str(Path(os.path.abspath(Path(text).expanduser())))


def default_reviews_path() -> Path:
    """``<data dir>/reviews.sqlite``."""
    return data_dir() / "reviews.sqlite"


def check_decision(decision: str) -> str:
    """Normalise a decision string (case, spaces) or raise ``CxrError`` naming the allowed ones."""
    value = str(decision).strip().lower() if decision is not None else ""
    if value not in DECISIONS:
        raise CxrError(f"unknown review decision {decision!r}: expected one of {', '.join(DECISIONS)}")
    return value


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _text(name: str, value: str) -> str:
    value = str(value) if value is not None else ""
    if not value.strip():
        raise CxrError(f"reviews: {name} is empty")
    return value


def _note(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value)
    return value if value.strip() else None


def _latest_sql(columns: str, where: str | None) -> str:
    """``SELECT columns`` of the last action per (root, study, finding), ``where`` filtering ``latest_action`` (alias c).

    ``columns`` may name ``a.*`` columns (the action) or ``c.*`` ones (the key and decision only, no join
    needed then). Always ends in a WHERE clause, so callers may append ``AND ...``.
    """
    join = " JOIN actions AS a ON a.id = c.last_id" if "a." in columns else ""
    return f"SELECT {columns} FROM latest_action AS c{join} WHERE " + (where or "1")


def _reader_filter(root: str | os.PathLike[str] | None, study: str | None, reviewer: str | None, role: str | None,
                   prefix: str = "c.") -> tuple[str, tuple]:
    """A WHERE clause (never empty) and its arguments for a root, a study, a reviewer and a role, each optional."""
    parts, args = [], []
    for column, value in (("root", None if root is None else db_value(root_key(root))),
                          ("study", None if study is None else db_value(study)),
                          ("reviewer", None if reviewer is None else db_value(reviewer)), ("role", role)):
        if value is not None:
            parts.append(f"{prefix}{column} = ?")
            args.append(value)
    return " AND ".join(parts) or "1", tuple(args)


def _row(row: tuple) -> Review:
    rid, action_id, root, study, finding, kind, decision, note, reviewer, at, model, flagged, probability, name, role = row
    return Review(rid, action_id, fs_text(root), fs_text(study), finding, kind, decision, fs_text(note),
                  fs_text(reviewer), at, model, None if flagged is None else bool(flagged), probability, fs_text(name),
                  role)


class ReviewStore:
    """``ReviewStore(path)`` opens (or creates) the reviews database; every write is committed on return.

    ``retry_seconds`` bounds how long a write keeps retrying a database another process holds locked
    (beyond SQLite's own busy timeout) before raising a one-line ``CxrError``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        self.path = Path(path) if path is not None else default_reviews_path()
        self.retry_seconds = retry_seconds
        self._db = self._open()
        self._lock, self._conn = self._db.lock, self._db.conn  # shared with every other store on this file

    def _open(self) -> Database:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.01
        while True:
            try:
                db = open_database(self.path, MIGRATIONS)
                break
            except CxrError as exc:  # connect() words every failure; retry only a busy database
                text = str(exc).lower()
                if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.5)
        try:
            # An acknowledged action must survive a power cut too, not only a killed process: one fsync of the
            # WAL per commit (a few ms, at the pace of a human clicking).
            with db.lock:
                db.conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise CxrError(f"{self.path}: cannot open reviews database ({exc})") from None
        return db

    def close(self) -> None:
        """Release this store (every action is already committed); the connection closes with its last user."""
        self._db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------------

    def _run(self, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
        """Run ``work`` (in one ``BEGIN IMMEDIATE`` transaction when ``write``), retrying busy/locked."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.005
        with self._lock:
            conn = self._conn
            while True:
                try:
                    if not write:
                        return work(conn)
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = work(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        raise
                    return result
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc):
                        raise CxrError(f"{self.path}: reviews database error ({exc})") from None
                    if time.monotonic() >= deadline:
                        raise CxrError(f"{self.path}: another process kept the reviews database locked for more than "
                                       f"{self.retry_seconds:.0f} s; try again") from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.5)
                except sqlite3.DatabaseError as exc:
                    raise CxrError(f"{self.path}: reviews database error ({exc})") from None

    # -- writing ------------------------------------------------------------------------------------

    def record(
        self,
        root: str | os.PathLike[str],
        study: str,
        finding: str,
        decision: str,
        *,
        note: str | None = None,
        reviewer: str | None = None,
        probability: float | None = None,
        flagged: bool | None = None,
        model: str | None = None,
        model_name: str | None = None,
        role: str = READER,
        action_id: str | None = None,
    ) -> Review:
        """Store a decision for (root, study, finding) and return the committed row (the acknowledgement).

        ``note=None`` keeps the current note (``""`` removes it). When ``probability``, ``flagged`` and ``model``
        are all None the model's view is kept from the previous action. Retrying with the same ``action_id``
        returns the row already stored instead of adding another.
        """
        decision = check_decision(decision)
        return self._append(root, study, finding, DECIDE, decision, note, reviewer,
                            (model, flagged, probability, model_name), action_id, role)

    def set_note(
        self,
        root: str | os.PathLike[str],
        study: str,
        finding: str,
        note: str | None,
        *,
        reviewer: str | None = None,
        role: str = READER,
        action_id: str | None = None,
    ) -> Review:
        """Set (``""``/None: remove) the note of (root, study, finding), keeping its decision; committed on return."""
        return self._append(root, study, finding, NOTE, None, "" if note is None else note, reviewer,
                            (None, None, None, None), action_id, role)

    def record_study(
        self,
        root: str | os.PathLike[str],
        study: str,
        decisions: Mapping[str, tuple[str, float | None, bool | None]],
        *,
        reviewer: str | None = None,
        model: str | None = None,
        model_name: str | None = None,
        role: str = READER,
    ) -> list[Review]:
        """Store one decision per finding of a study (finding -> (decision, probability, flagged)) in one
        transaction: a study-level read ("normal", "agree with the model") is all stored or none of it."""
        steps = [self._action(root, study, finding, DECIDE, check_decision(decision), None, reviewer,
                              (model, flagged, probability, model_name), None, role)
                 for finding, (decision, probability, flagged) in decisions.items()]
        return self._run(lambda conn: [step(conn) for step in steps], write=True)

    def _append(self, root: str | os.PathLike[str], study: str, finding: str, kind: str, decision: str | None,
                note: str | None, reviewer: str | None, model_view: tuple[str | None, bool | None, float | None, str | None],
                action_id: str | None, role: str = READER) -> Review:
        return self._run(self._action(root, study, finding, kind, decision, note, reviewer, model_view, action_id,
                                      role), write=True)

    def _action(self, root: str | os.PathLike[str], study: str, finding: str, kind: str, decision: str | None,
                note: str | None, reviewer: str | None, model_view: tuple[str | None, bool | None, float | None, str | None],
                action_id: str | None, role: str = READER) -> Callable[[sqlite3.Connection], Review]:
        """The checked inputs of one action and the function that appends it inside a transaction."""
        key = root_key(root)
        study, finding = _text("study", study), _text("finding", finding)
        reviewer = _text("reviewer", reviewer) if reviewer is not None else current_user()
        action_id = _text("action id", action_id) if action_id is not None else uuid.uuid4().hex
        if role not in (READER, ADJUDICATOR):
            raise CxrError(f"reviews: role {role!r} is not {READER!r} or {ADJUDICATOR!r}")
        model, flagged, probability, model_name = model_view
        model_name = _text("model name", model_name) if model_name is not None else None
        if probability is not None:
            probability = float(probability)
            if not 0.0 <= probability <= 1.0:  # also catches NaN, which SQLite would store as NULL
                raise CxrError(f"reviews: probability {probability} is not between 0 and 1")
        flagged_int = None if flagged is None else int(bool(flagged))

        def work(conn: sqlite3.Connection) -> Review:
            stored = conn.execute(f"SELECT {_COLUMNS} FROM actions WHERE action_id = ?", (action_id,)).fetchone()
            if stored is not None:
                review = _row(stored)
                if (review.root, review.study, review.finding, review.kind) != (key, study, finding, kind) or (
                        decision is not None and review.decision != decision):
                    raise CxrError(f"reviews: action id {action_id!r} was already used for a different action")
                return review
            previous = conn.execute(  # this reader's own last action on the key (one index probe)
                f"SELECT {_A_COLUMNS} FROM latest_action AS c JOIN actions AS a ON a.id = c.last_id"
                " WHERE c.root = ? AND c.study = ? AND c.finding = ? AND c.reviewer = ? AND c.role = ?",
                (db_value(key), db_value(study), finding, db_value(reviewer), role)).fetchone()
            prev = _row(previous) if previous is not None else None
            new_decision = decision if decision is not None else (prev.decision if prev else CLEAR)
            new_note = _note(note) if note is not None else (prev.note if prev else None)
            view = (model, flagged_int, probability, db_value(model_name))
            if view == (None, None, None, None) and prev is not None:
                view = (prev.model, None if prev.flagged is None else int(prev.flagged), prev.probability,
                        db_value(prev.model_name))
            at = time.time()
            cursor = conn.execute(
                "INSERT INTO actions (action_id, root, study, finding, kind, decision, note, reviewer, at, model,"
                " flagged, probability, model_name, role) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (action_id, db_value(key), db_value(study), finding, kind, new_decision, db_value(new_note),
                 db_value(reviewer), at, *view, role))
            conn.execute("INSERT INTO latest_action (root, study, finding, reviewer, role, last_id, decision)"
                         " VALUES (?,?,?,?,?,?,?) ON CONFLICT (root, study, finding, reviewer, role)"
                         " DO UPDATE SET last_id = excluded.last_id, decision = excluded.decision",
                         (db_value(key), db_value(study), finding, db_value(reviewer), role, cursor.lastrowid,
                          new_decision))
            return _row((cursor.lastrowid, action_id, key, study, finding, kind, new_decision, new_note, reviewer,
                         at, *view, role))

        return work

    # -- reading ------------------------------------------------------------------------------------

    def latest(self, root: str | os.PathLike[str], study: str | None = None, *, reviewer: str | None = None,
               role: str | None = READER) -> dict[tuple[str, str], Review]:
        """The current state of every (study, finding) of ``root`` (one ``study`` only if given), cleared
        included, as ``reviewer`` left it (default: the current user) in ``role`` (None: any role, the latest
        action of each key winning)."""
        where, args = _reader_filter(root, study, current_user() if reviewer is None else reviewer, role)
        sql = _latest_sql(_A_COLUMNS, where) + " ORDER BY a.id"
        rows = self._run(lambda conn: conn.execute(sql, args).fetchall(), write=False)
        return {(r.study, r.finding): r for r in map(_row, rows)}

    def history(self, root: str | os.PathLike[str], study: str, finding: str) -> list[Review]:
        """Every action on (root, study, finding), oldest first."""
        key = root_key(root)
        rows = self._run(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM actions WHERE root = ? AND study = ? AND finding = ? ORDER BY id",
            (db_value(key), db_value(study), finding)).fetchall(), write=False)
        return [_row(r) for r in rows]

    def reviews(self, root: str | os.PathLike[str] | None = None, *, history: bool = False,
                include_cleared: bool = False, reviewer: str | None = None, role: str | None = None) -> list[Review]:
        """Current decisions (or, with ``history``, every action) of one root or all, oldest first: every
        reader's and adjudicator's, or only ``reviewer``'s / ``role``'s.

        Cleared decisions are left out of the current ones unless ``include_cleared``.
        """
        where, args = _reader_filter(root, None, reviewer, role, prefix="" if history else "c.")
        if history:
            sql = f"SELECT {_COLUMNS} FROM actions WHERE {where} ORDER BY id"
        else:
            sql = (_latest_sql(_A_COLUMNS, where)
                   + ("" if include_cleared else " AND c.decision != 'clear'") + " ORDER BY a.id")
        return [_row(r) for r in self._run(lambda conn: conn.execute(sql, args).fetchall(), write=False)]

    def last_action_id(self) -> int:
        """The id of the newest action (0 for an empty database): a mark that "decisions up to here" can name."""
        return self._run(lambda conn: conn.execute("SELECT coalesce(max(id), 0) FROM actions").fetchone()[0],
                         write=False)

    def readers(self, root: str | os.PathLike[str] | None = None) -> list[str]:
        """Everyone with a current reader's decision (on ``root``, or any), in name order."""
        where, args = _reader_filter(root, None, None, READER)
        rows = self._run(lambda conn: conn.execute(
            f"SELECT DISTINCT c.reviewer FROM latest_action AS c WHERE {where} AND c.decision != 'clear'",
            args).fetchall(), write=False)
        return sorted(fs_text(r[0]) for r in rows)

    def roots(self) -> list[str]:
        """Every root with at least one action, in name order."""
        # Distinct roots by hopping along latest_action's primary key: one index probe per root, not a scan.
        rows = self._run(lambda conn: conn.execute(
            "WITH RECURSIVE r(root) AS (SELECT min(root) FROM latest_action"
            " UNION ALL SELECT (SELECT min(root) FROM latest_action WHERE root > r.root) FROM r WHERE r.root IS NOT NULL)"
            " SELECT root FROM r WHERE root IS NOT NULL").fetchall(), write=False)
        return [fs_text(r[0]) for r in rows]

    def status_by_study(self, root: str | os.PathLike[str],
                        expected: Mapping[str, Collection[str]] | None = None, *,
                        study: str | None = None, reviewer: str | None = None) -> dict[str, str]:
        """Review status of every study of ``root`` with at least one decision (one query).

        ``expected`` maps a study to the findings that need a decision (e.g. those the model flags). A study is
        ``reviewed`` when all of them are accepted or rejected, ``uncertain`` when all are decided but one or
        more is uncertain, ``partial`` when some are still undecided. Without ``expected`` (or for a study not
        in it), the findings that have a decision are all that is asked. Studies without any decision are not
        in the result: ``status.get(study, UNREVIEWED)``. ``study`` narrows the query to that one study (what a
        screen needs after one decision, instead of the whole root). The status is ``reviewer``'s own reading
        (default: the current user's).
        """
        where, args = _reader_filter(root, study, current_user() if reviewer is None else reviewer, READER)
        if expected is None:  # no finding names to carry: the cheaper aggregate
            sql = _latest_sql("c.study, max(c.decision = 'uncertain')", where) + _DECIDED_BY_STUDY
            rows = self._run(lambda conn: conn.execute(sql, args).fetchall(), write=False)
            return {fs_text(study): UNCERTAIN_STUDY if uncertain else REVIEWED for study, uncertain in rows}
        sql = (_latest_sql("c.study, max(c.decision = 'uncertain'), group_concat(c.finding, ?)", where)
               + _DECIDED_BY_STUDY)
        rows = self._run(lambda conn: conn.execute(sql, (_SEP, *args)).fetchall(), write=False)
        result: dict[str, str] = {}
        for study, uncertain, findings in rows:
            study = fs_text(study)
            wanted = expected.get(study)
            if wanted and not set(wanted).issubset(findings.split(_SEP)):
                result[study] = PARTIAL
            else:
                result[study] = UNCERTAIN_STUDY if uncertain else REVIEWED
        return result

    def count(self, root: str | os.PathLike[str] | None = None) -> int:
        """Number of stored actions (of one root, or all)."""
        if root is None:
            return self._run(lambda conn: conn.execute("SELECT count(*) FROM actions").fetchone()[0], write=False)
        key = root_key(root)
        return self._run(lambda conn: conn.execute(
            "SELECT count(*) FROM actions WHERE root = ?", (db_value(key),)).fetchone()[0], write=False)

    def rebuild_latest(self) -> None:
        """Recompute ``latest_action`` from ``actions`` (the source of truth), in one transaction."""
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM latest_action")
            conn.execute("INSERT INTO latest_action (root, study, finding, reviewer, role, last_id, decision)"
                         " SELECT root, study, finding, reviewer, role, id, decision FROM actions WHERE id IN"
                         " (SELECT max(id) FROM actions GROUP BY root, study, finding, reviewer, role)")
        self._run(work, write=True)

    # -- export -------------------------------------------------------------------------------------

    def export_csv(self, path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *,
                   history: bool = False, raw_text: bool = False) -> int:
        """Write the current decisions (or every action) as CSV, atomically, mode 0644; returns the row count.

        Columns: ``EXPORT_COLUMNS``; ``at`` is ISO-8601 with offset, ``flagged`` is 1/0, missing values are empty.
        Text cells that a spreadsheet would evaluate get a leading ``'`` (``spreadsheet_safe``) unless
        ``raw_text``; every field is quoted, so no locale's separator splits a note into cells.
        """
        def text(value: str, lines: bool = False) -> str:  # no raw control byte in the file, whatever raw_text says
            shown = visible(value, lines=lines)
            return shown if raw_text else spreadsheet_safe(shown)

        def name(value: str) -> str:  # ids and names one-to-one: two studies never export as one
            shown = name_text(value)
            return shown if raw_text else spreadsheet_safe(shown)

        rows = self.reviews(root, history=history)
        target = Path(path).expanduser()
        if not target.parent.is_dir():
            raise CxrError(f"{target.parent}: no such directory")
        try:
            with atomic_path(target, mode=0o644) as tmp:
                with open(tmp, "w", newline="", encoding="utf-8") as fh:
                    # Every field quoted: a spreadsheet in a ';' locale must not split "ok;=1+1" into a formula.
                    writer = csv.writer(fh, quoting=csv.QUOTE_ALL)
                    writer.writerow(EXPORT_COLUMNS)
                    for r in rows:
                        writer.writerow([name(r.study), name(r.finding), r.decision, text(r.note or "", lines=True),
                                         name(r.reviewer), r.when,
                                         "" if r.probability is None else repr(r.probability),
                                         "" if r.flagged is None else int(r.flagged), text(r.model or ""),
                                         text(r.root), text(r.model_name or ""), r.role])
        except OSError as exc:
            raise CxrError(f"{target}: cannot write ({exc.strerror or exc})") from None
        return len(rows)
