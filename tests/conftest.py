"""Shared fixtures: an isolated CXR_HOME for every test, and the real-data root when it exists.

Also the rule that keeps ``pytest -m "not slow"`` the fast inner loop: a test not marked ``slow`` that starts a
process (subprocess, multiprocessing / DataLoader workers, os.fork, os.system, os.posix_spawn) fails with
"spawns a process: mark it slow". Tests that train a model or use tmux are marked slow by hand.
"""

from __future__ import annotations

import functools
import multiprocessing.process
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

# The node id of the running test when it is not marked slow (None otherwise), and what it tried to start.
_fast_test: str | None = None
_spawned: list[str] = []
_spawned_lock = threading.Lock()


def _refuse_in_fast_tests(owner: object, name: str, what: str) -> None:
    original = getattr(owner, name, None)
    if original is None:  # not on this platform
        return

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        test = _fast_test
        if test is not None:
            with _spawned_lock:
                _spawned.append(what)
            pytest.fail(f"{test} spawns a process ({what}): mark it slow", pytrace=False)
        return original(*args, **kwargs)

    setattr(owner, name, guarded)
    home = sys.modules.get(getattr(original, "__module__", None) or "")
    if home is not None and getattr(home, name, None) is original:  # os.fork is posix.fork: pickle finds it there
        setattr(home, name, guarded)


def pytest_configure(config: pytest.Config) -> None:
    # Libraries whose first use runs a helper process of their own, imported before the guard so that a fast test
    # that is the first to use them is not blamed for it: torch (ctypes.util.find_library runs ldconfig) and
    # matplotlib (its first use on a machine builds the font list by running fc-list).
    import matplotlib.font_manager  # noqa: F401 - loads (or builds and saves) the font list
    import torch  # noqa: F401

    # Patched once for the session; per test only a module global changes, so the guard costs nothing measurable.
    _refuse_in_fast_tests(subprocess.Popen, "__init__", "subprocess.Popen")  # also run/call/check_output, asyncio
    _refuse_in_fast_tests(multiprocessing.process.BaseProcess, "start", "multiprocessing")  # pools, DataLoader
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp"):
        _refuse_in_fast_tests(os, name, f"os.{name}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from _guarded(item))


def _guarded(item: pytest.Item):
    global _fast_test
    _fast_test = None if item.get_closest_marker("slow") else item.nodeid
    try:
        result = yield
    finally:
        _fast_test = None
        with _spawned_lock:
            seen = sorted(set(_spawned))
            _spawned.clear()
    if seen:  # raised in a thread, or swallowed by the code under test
        pytest.fail(f"{item.nodeid} spawns a process ({', '.join(seen)}): mark it slow", pytrace=False)
    return result


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
