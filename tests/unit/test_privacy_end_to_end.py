"""Issue 6, privacy and safety, end to end: the real workflow (CLI subprocesses + the TUI under Pilot) over DICOM
files with planted patient identifiers.

* No planted identifier (name, its parts, ID, birth date, accession number, institution, physicians) appears in
  any file written under CXR_HOME, the runs dir, the output dirs, TMPDIR/XDG dirs given to the subprocesses, or
  in any captured stdout/stderr; ``--show-phi`` (the TUI's study screen) does show them, which proves the search
  can see them.
* The databases (and -wal/-shm), CXR_HOME, the pseudonym key and a run directory are owner-only even under a
  permissive umask (0o022).
* Nothing listens on a network port while the TUI runs or while a detached (single-process) training job runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.malformed import write_dicom
from tests.pilot import until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

NAME = "Zzyzx^Quintavius"
IDENTIFIERS = {
    "PatientName": NAME,
    "PatientID": "MRN-7734-PLANTED",  # the first patient; the others are MRN-7735-PLANTED, ...
    "PatientBirthDate": "19330217",
    "AccessionNumber": "ACC-QX-90210",
    "InstitutionName": "Xylophant Memorial Infirmary",
    "ReferringPhysicianName": "Vorpalquist^Ignatia",
    "PerformingPhysicianName": "Brambleworth^Odalys",
    "OperatorsName": "Quillfeather^Tamsin",
    "StudyID": "STUDYID-QX-5521",
    "StationName": "XRAYSTATION-QX9",
}
# Every needle is searched case-insensitively as UTF-8 and as UTF-16-LE bytes.
NEEDLES = sorted({
    *IDENTIFIERS.values(),
    "Zzyzx", "Quintavius", "Zzyzx Quintavius", "Quintavius Zzyzx",
    "MRN-77", "-PLANTED", "1933-02-17", "ACC-QX", "Xylophant", "Vorpalquist", "Ignatia", "Brambleworth", "Odalys",
    "Quillfeather", "Tamsin", "STUDYID-QX", "XRAYSTATION",
})
N_STUDIES = 12
LABELS = ["Effusion", "Nodule|Effusion", "No Finding", "Nodule"]
SUBPROCESS_TIMEOUT = 120
HAS_HIGHDICOM = importlib.util.find_spec("highdicom") is not None


def _umask_022() -> None:
    os.umask(0o022)


@dataclass
class World:
    base: Path
    root: Path
    home: Path
    runs: Path
    out: Path
    env: dict[str, str]
    run_dir: Path | None = None
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (what, stdout/stderr text)
    phi_info: str = ""
    phi_svg: str = ""
    timings: list[tuple[str, float]] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
        return self.python("-m", "cxr_tui", *args, check=check, timeout=timeout)

    def python(self, *args: str, check: bool = True, timeout: float = SUBPROCESS_TIMEOUT) -> subprocess.CompletedProcess:
        start = time.monotonic()
        result = subprocess.run([sys.executable, *args], env=self.env, cwd=self.base, capture_output=True, text=True,
                                timeout=timeout, preexec_fn=_umask_022)
        what = " ".join(args[:4])
        self.timings.append((what, round(time.monotonic() - start, 1)))
        self.outputs.append((f"{what} (stdout)", result.stdout))
        self.outputs.append((f"{what} (stderr)", result.stderr))
        if check:
            assert result.returncode == 0, f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result


def _write_dataset(root: Path) -> None:
    """Study folders (one DICOM each), 6 patients x 2 studies, every identifying field planted."""
    rng = np.random.default_rng(0)
    rows = ["study,labels"]
    for i in range(N_STUDIES):
        folder = root / f"study{i:02d}"
        folder.mkdir(parents=True)
        path = write_dicom(folder / "image.dcm", rng.integers(0, 255, (40, 36), dtype=np.uint8))
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.PatientID = f"MRN-{7734 + i // 2}-PLANTED"
        ds.save_as(path, enforce_file_format=True)
        rows.append(f"study{i:02d},{LABELS[i % len(LABELS)]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def _environment(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CXR_PSEUDONYM_KEY", None)  # the per-install key file is created (and checked for 0600)
    env.update(
        CXR_HOME=str(base / "home"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        TMPDIR=str(base / "env" / "tmp"),
        XDG_CACHE_HOME=str(base / "env" / "cache"),
        XDG_CONFIG_HOME=str(base / "env" / "config"),
        XDG_DATA_HOME=str(base / "env" / "data"),
        XDG_STATE_HOME=str(base / "env" / "state"),
        MPLCONFIGDIR=str(base / "env" / "mpl"),
        COLUMNS="120",
    )
    for key in ("TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "MPLCONFIGDIR"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    return env


# --- sockets ------------------------------------------------------------------------------------------------


def _process_tree(pid: int) -> set[int]:
    """pid and all its descendants (from /proc/*/stat)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(text.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def _socket_inodes(pids: set[int]) -> dict[str, int]:
    inodes: dict[str, int] = {}
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    return inodes


def listening_sockets(pid: int) -> list[str]:
    """TCP sockets in LISTEN and bound UDP sockets owned by pid's process tree, as readable lines."""
    owned = _socket_inodes(_process_tree(pid))
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if inode not in owned:
                continue
            port = int(local.rsplit(":", 1)[1], 16)
            listening = state == "0A" if proto.startswith("tcp") else port != 0
            if listening:
                found.append(f"{proto} {local} state={state} pid={owned[inode]}")
    return found


# --- the TUI ------------------------------------------------------------------------------------------------


async def _drive_tui(root: Path, checkpoint: Path, screenshot_dir: Path, *, show_phi: bool,
                     socket_samples: list[list[str]] | None = None, size: tuple[int, int] = (120, 40)) -> str:
    """Open the root, wait for predictions, open the first study, show its CAM, save an SVG; return the info text."""
    from textual.widgets import Static

    from cxr_tui.app import CxrApp
    from cxr_tui.screens.study import StudyScreen
    from cxr_tui.widgets.xray import XRayView

    def sample() -> None:
        if socket_samples is not None:
            socket_samples.append(listening_sockets(os.getpid()))

    app = CxrApp(root, checkpoint, image_protocol="halfcell", show_phi=show_phi)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.workspace.last_load is not None)
        sample()
        app.save_screenshot("worklist.svg", str(screenshot_dir))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StudyScreen) and app.screen.pixels is not None)
        sample()
        study = app.screen
        await pilot.press("c")
        await until(pilot, lambda: study.query_one(XRayView).has_cam)
        sample()
        await pilot.pause(0.2)
        app.save_screenshot("study.svg", str(screenshot_dir))
        info = str(study.query_one("#study-info", Static).render())
        await pilot.press("escape")
        await pilot.press("q")
    return info


# --- the workflow, once per module ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("phi_e2e")
    w = World(base=base, root=base / "data", home=base / "home", runs=base / "runs", out=base / "out",
              env=_environment(base))
    _write_dataset(w.root)
    w.out.mkdir()
    image = w.root / "study00" / "image.dcm"

    w.cli("data", "index", str(w.root), "--json")
    w.cli("data", "stats", str(w.root))
    trained = w.cli("train", "--data", str(w.root), "--model", "tiny_resnet", "--image-size", "32", "--epochs", "1",
                    "--runs-dir", str(w.runs), "--workers", "0", "--device", "cpu", "--json")
    w.run_dir = Path(json.loads(trained.stdout)["path"])
    preds = w.out / "preds.csv"
    w.cli("predict", str(w.root), "--model", str(w.run_dir), "--out", str(preds), "--device", "cpu", "--workers", "0",
          "--json")
    w.cli("eval", str(w.run_dir), "--data", str(w.root), "--split", "all", "--out", str(w.out / "eval"),
          "--n-boot", "20", "--device", "cpu", "--workers", "0", "--json")
    w.cli("cam", str(image), "--model", str(w.run_dir), "--out", str(w.out / "cam.png"), "--device", "cpu")
    w.python("-c", (
        "import sys\n"
        "from cxr_core.store.reviews import ReviewStore\n"
        "with ReviewStore() as s:\n"
        "    s.record(sys.argv[1], 'study00', 'Effusion', 'accept', note='looks fine', probability=0.7,"
        " flagged=True, model='tiny')\n"
    ), str(w.root))
    w.cli("reviews", "export", "--out", str(w.out / "rev.csv"))
    w.cli("reviews", "export", "--out", str(w.out / "rev_history.csv"), "--history", "--json")
    # A DICOM SR names its own patient as its source does (that is how a PACS files it): written outside the
    # searched folders, and searched by test_the_dicom_sr_names_its_own_patient_and_nobody_else.
    w.cli("reviews", "export", "--dicom-sr", str(base / "sr"), "--json", check=HAS_HIGHDICOM)
    w.cli("thresholds", "tune", "--preds", str(preds), "--out", str(w.out / "t.json"))
    w.cli("jobs", "list", "--runs-dir", str(w.runs))
    w.cli("jobs", "logs", w.run_dir.name, "--runs-dir", str(w.runs), check=False)

    # The TUI, in this process, on the same CXR_HOME (and the key file the subprocesses created).
    from cxr_core import privacy

    saved = {k: os.environ.get(k) for k in ("CXR_HOME", "CXR_PSEUDONYM_KEY")}
    os.environ["CXR_HOME"] = str(w.home)
    os.environ.pop("CXR_PSEUDONYM_KEY", None)
    privacy._key_from_file.cache_clear()
    try:
        shots = w.out / "screenshots"
        shots.mkdir()
        asyncio.run(_drive_tui(w.root, w.run_dir / "checkpoints" / "best.safetensors", shots, show_phi=False))
        # The positive control, kept outside every searched folder.
        control = base.parent / f"{base.name}_show_phi"
        control.mkdir()
        w.phi_info = asyncio.run(_drive_tui(w.root, w.run_dir / "checkpoints" / "best.safetensors", control,
                                            show_phi=True, size=(160, 90)))
        w.phi_svg = (control / "study.svg").read_text()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        privacy._key_from_file.cache_clear()
    return w


def _hits(data: bytes) -> list[str]:
    lowered = data.lower()
    found = []
    for needle in NEEDLES:
        for encoding in ("utf-8", "utf-16-le"):
            if needle.lower().encode(encoding) in lowered:
                found.append(f"{needle!r} ({encoding})")
    return found


def _written_files(w: World) -> list[Path]:
    files = []
    for folder in (w.home, w.runs, w.out, w.base / "env", w.root):
        for path in folder.rglob("*"):
            if path.is_file() and not (path.suffix == ".dcm" and path.is_relative_to(w.root)):
                files.append(path)
    return files


def test_planted_identifiers_are_in_the_dicoms_so_the_search_can_see_them(world):
    for dcm in sorted(world.root.rglob("*.dcm")):
        assert {"Zzyzx", "Quintavius", "MRN-77", "19330217", "Xylophant", "Vorpalquist"} <= {
            n.split(" ")[0].strip("'") for n in _hits(dcm.read_bytes())
        }


def test_no_planted_identifier_in_any_file_written_or_any_output(world):
    files = _written_files(world)
    names = {p.name for p in files}
    # The search really covers what the brief lists: databases (+ WAL), logs, JSON, CSV, PNG, SVG.
    assert {"index.sqlite", "reviews.sqlite", "log.txt", "status.json", "metrics.jsonl", "preds.csv", "rev.csv",
            "t.json", "cam.png", "study.svg", "worklist.svg", "best.safetensors"} <= names, sorted(names)
    assert any(p.suffix == ".sqlite" and "predict" in p.name for p in files) or any(
        "cache" in str(p.relative_to(world.base)) and p.suffix in (".sqlite", ".db") for p in files), sorted(names)
    leaks = [f"{p.relative_to(world.base)}: {', '.join(h)}" for p in files if (h := _hits(p.read_bytes()))]
    leaks += [f"{what}: {', '.join(h)}" for what, text in world.outputs if (h := _hits(text.encode()))]
    assert not leaks, "planted identifiers leaked:\n" + "\n".join(leaks)
    # The outputs really are there (a silent command would pass trivially).
    assert any("studies 12" in text for _, text in world.outputs)
    assert "study00" in (world.out / "rev.csv").read_text()  # the review was exported


@pytest.mark.skipif(not HAS_HIGHDICOM, reason="the dicom-sr extra (highdicom) is not installed")
def test_the_dicom_sr_names_its_own_patient_and_nobody_else(world):
    (sr,) = sorted((world.base / "sr").glob("*.dcm"))  # the one reviewed study
    assert sr.name == "study00.dcm"
    data = sr.read_bytes()
    found = {hit.rsplit(" (", 1)[0].strip("'") for hit in _hits(data)}
    # Its patient and study, copied from its source: name, ID, birth date, accession number, study ID, referrer.
    assert {NAME, "MRN-7734-PLANTED", "19330217", "ACC-QX-90210", "STUDYID-QX-5521", "Vorpalquist^Ignatia"} <= found
    # Nothing else of the source's header (institution, station, operator, performing physician) ...
    assert not found & {"Xylophant", "XRAYSTATION", "Quillfeather", "Tamsin", "Brambleworth", "Odalys"}, found
    # ... and no other patient's ID.
    assert not [i for i in range(1, N_STUDIES // 2) if f"MRN-{7734 + i}-PLANTED".encode() in data]


def test_show_phi_reveals_the_identifiers_in_the_study_screen(world):
    assert "Zzyzx^Quintavius" in world.phi_info, world.phi_info
    # whichever study the worklist puts first: every patient's id is MRN-77xx-PLANTED
    assert re.search(r"MRN-77\d\d-PLANTED", world.phi_info) and "Xylophant Memorial Infirmary" in world.phi_info
    assert "Zzyzx" in world.phi_svg.replace("&#160;", " ")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_databases_home_key_and_run_dir_are_owner_only_under_umask_022(world):
    home = world.home
    assert _mode(home) == 0o700
    assert _mode(home / "secret.key") == 0o600
    databases = [p for p in home.rglob("*") if p.is_file() and (p.suffix in (".sqlite", ".db")
                                                                 or p.name.endswith(("-wal", "-shm", "-journal")))]
    names = {p.name for p in databases}
    assert {"index.sqlite", "reviews.sqlite"} <= names and len([n for n in names if n.endswith(".sqlite")]) >= 3, names
    wrong = {str(p.relative_to(home)): oct(_mode(p)) for p in databases if _mode(p) != 0o600}
    assert not wrong, f"databases not 0600: {wrong}"
    for folder in [p for p in home.rglob("*") if p.is_dir()]:
        assert _mode(folder) == 0o700, f"{folder.relative_to(home)} is {oct(_mode(folder))}"
    assert _mode(world.runs) == 0o700
    assert _mode(world.run_dir) == 0o700 and _mode(world.run_dir / "checkpoints") == 0o700
    # Every file of the run is owner-only by itself too (log.txt included), not only through the 0700 folder.
    loose = [p.name for p in world.run_dir.rglob("*") if p.is_file() and _mode(p) & 0o077]
    assert not loose, loose


def test_nothing_listens_while_the_tui_runs(world, monkeypatch):
    from cxr_core import privacy

    monkeypatch.setenv("CXR_HOME", str(world.home))
    monkeypatch.delenv("CXR_PSEUDONYM_KEY", raising=False)
    privacy._key_from_file.cache_clear()
    samples: list[list[str]] = []
    shots = world.base.parent / f"{world.base.name}_sockets"
    shots.mkdir(exist_ok=True)
    asyncio.run(_drive_tui(world.root, world.run_dir / "checkpoints" / "best.safetensors", shots, show_phi=False,
                           socket_samples=samples))
    privacy._key_from_file.cache_clear()
    assert len(samples) == 3
    assert not any(samples), samples


def test_nothing_listens_while_a_detached_training_job_runs(world):
    started = world.cli("train", "--data", str(world.root), "--model", "tiny_resnet", "--image-size", "32",
                        "--epochs", "500", "--runs-dir", str(world.runs), "--workers", "0", "--device", "cpu",
                        "--name", "sockets", "--detach", "--json")
    job = json.loads(started.stdout)
    pid, run_dir = int(job["pid"]), Path(job["path"])
    samples: list[list[str]] = []
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
            if status.get("state") == "running":
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the detached job never started running: {status}")
        for _ in range(5):
            assert Path(f"/proc/{pid}").exists(), "the job ended before it could be inspected"
            samples.append(listening_sockets(pid))
            time.sleep(0.2)
    finally:
        world.cli("jobs", "stop", str(run_dir), "--runs-dir", str(world.runs), check=False)
    assert not any(samples), samples
    assert _mode(run_dir) == 0o700


def test_the_socket_probe_sees_a_listening_socket():
    """The probe itself: a socket this process listens on is reported (so an empty list means something)."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert any(f"pid={os.getpid()}" in line for line in listening_sockets(os.getpid()))
    assert not listening_sockets(os.getpid())
