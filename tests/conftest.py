"""Shared fixtures: an isolated CXR_HOME for every test, and the real-data root when it exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def cxr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Nothing a test does touches the real user data dir."""
    home = tmp_path_factory.mktemp("cxr_home")
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", "00" * 32)
    return home


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real NIH / IU files (``CXR_REAL_DATA``); tests using this skip, with the reason, without them."""
    value = os.environ.get("CXR_REAL_DATA")
    if not value:
        pytest.skip("CXR_REAL_DATA is not set (real NIH/IU files live outside the repository)")
    root = Path(value)
    if not root.is_dir():
        pytest.skip(f"CXR_REAL_DATA={value} is not a directory")
    return root


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom data set (96 images, 48 px) shared by the training tests; never modify it."""
    from cxr_core.phantoms import write_phantoms

    root = tmp_path_factory.mktemp("phantoms") / "set"
    write_phantoms(root, 96, 48, 1)
    return root
