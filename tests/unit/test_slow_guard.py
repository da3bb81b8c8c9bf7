"""The guard in tests/conftest.py: a test not marked slow that starts a process fails, saying to mark it slow."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import pytest

from tests import conftest


def _refused(start) -> str:
    with pytest.raises(pytest.fail.Exception) as caught:
        start()
    conftest._spawned.clear()  # what the guard recorded would fail this test after its call
    return str(caught.value)


def test_subprocess_in_a_fast_test_is_refused():
    message = _refused(lambda: subprocess.run([sys.executable, "-c", "pass"], check=False))
    assert message.endswith("test_subprocess_in_a_fast_test_is_refused spawns a process (subprocess.Popen): "
                            "mark it slow")


def test_multiprocessing_in_a_fast_test_is_refused():
    process = multiprocessing.get_context("spawn").Process(target=int)
    message = _refused(process.start)
    assert "spawns a process (multiprocessing): mark it slow" in message
    assert process.pid is None  # nothing was started


@pytest.mark.slow
def test_a_slow_test_may_spawn():
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
