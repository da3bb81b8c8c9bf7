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
