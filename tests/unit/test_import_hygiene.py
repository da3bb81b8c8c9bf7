"""cxr_core must never load a UI library: importing each of its modules leaves textual and rich unloaded."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import cxr_core


def _core_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(cxr_core.__path__, "cxr_core."))


def test_core_has_modules_to_check():
    assert "cxr_core.store.index" in _core_modules()


@pytest.mark.slow
def test_core_imports_neither_textual_nor_rich():
    code = (
        "import importlib, sys\n"
        f"for name in {_core_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'textual_image'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"cxr_core loaded UI modules: {out.stdout.strip()}"


@pytest.mark.slow
def test_review_from_a_predictions_file_imports_no_torch():
    """``cxr-tui ROOT --predictions preds.csv`` (issue 15.4): the modules on that path, and the core names they
    ask for, leave torch unloaded (the walk through the running app: tests/functional/test_predictions_mode.py)."""
    code = (
        "import sys\n"
        "import cxr_tui.cli.main, cxr_tui.cli.open, cxr_tui.app\n"
        "import cxr_tui.screens.worklist, cxr_tui.screens.study, cxr_tui.screens.thresholds\n"
        "from cxr_tui.dialogs import FolderPicker\n"
        "from cxr_core.store import StudyIndex, ReviewStore\n"
        "from cxr_core.predictions import Predictions, match_root\n"
        "from cxr_core.data import image_base, detect_format\n"
        "from cxr_core.images import read_xray, dicom_identifiers\n"
        "from cxr_core.eval import OperatingPoints, ReviewedStudies, load_thresholds, thresholds_path_for, tune\n"
        "from cxr_core.runs import RunDir\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the --predictions path loaded: {out.stdout.strip()[:500]}"
