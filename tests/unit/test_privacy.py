"""cxr_core.privacy: stable keyed pseudonyms and a key file created once, owner-only, race-free."""

from __future__ import annotations

import hashlib
import hmac
import re
import stat
import threading
import time

import pytest

from cxr_core import privacy
from cxr_core.errors import DataError
from cxr_core.privacy import pseudonym


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CXR_PSEUDONYM_KEY", raising=False)
    privacy._key_from_file.cache_clear()
    yield tmp_path / "home"
    privacy._key_from_file.cache_clear()


def test_pseudonym_is_stable_and_shaped_like_the_contract():
    first = pseudonym("PHI-12345")
    assert re.fullmatch(r"pt-[0-9a-f]{12}", first)
    assert pseudonym("PHI-12345") == first
    assert pseudonym(" PHI-12345 ") == first
    assert pseudonym("PHI-12346") != first
    assert pseudonym("PHI-12345", kind="study").startswith("st-")


def test_pseudonym_is_an_hmac_under_the_environment_key(monkeypatch):
    key = bytes(range(32))
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", key.hex())
    expected = hmac.new(key, b"PHI-12345", hashlib.sha256).hexdigest()[:12]
    assert pseudonym("PHI-12345") == f"pt-{expected}"
    assert pseudonym("PHI-12345") != f"pt-{hashlib.sha256(b'PHI-12345').hexdigest()[:12]}"  # not a plain hash
    monkeypatch.setenv("CXR_PSEUDONYM_KEY", bytes(range(1, 33)).hex())
    assert pseudonym("PHI-12345") != f"pt-{expected}"


def test_key_file_is_created_once_owner_only_and_reused(isolated_home):
    first = pseudonym("PHI-12345")
    key_file = isolated_home / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == 32
    privacy._key_from_file.cache_clear()
    assert pseudonym("PHI-12345") == first  # read back from the file, not remembered


def test_each_installation_has_its_own_key(monkeypatch, tmp_path):
    first = pseudonym("PHI-12345")
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "other_home"))
    assert pseudonym("PHI-12345") != first


def test_concurrent_creators_agree_on_one_key(isolated_home):
    isolated_home.mkdir()
    path = str(isolated_home / "secret.key")
    create = privacy._key_from_file.__wrapped__
    start = threading.Barrier(8)
    keys: list[bytes] = []

    def creator():
        start.wait()
        keys.append(create(path))

    threads = [threading.Thread(target=creator) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_a_reader_waits_for_a_creator_still_writing(isolated_home):
    isolated_home.mkdir()
    key_file = isolated_home / "secret.key"
    key_file.write_bytes(b"")
    key = bytes(range(32))
    writer = threading.Timer(0.05, key_file.write_bytes, args=(key,))
    writer.start()
    assert privacy._read_key(str(key_file)) == key
    writer.join()


def test_bad_keys_are_configuration_errors(monkeypatch, isolated_home):
    for bad in ("not hex", "abcd"):
        monkeypatch.setenv("CXR_PSEUDONYM_KEY", bad)
        with pytest.raises(DataError, match="CXR_PSEUDONYM_KEY"):
            pseudonym("x")
    monkeypatch.delenv("CXR_PSEUDONYM_KEY")
    isolated_home.mkdir()
    (isolated_home / "secret.key").write_bytes(b"x" * 40)
    started = time.perf_counter()
    with pytest.raises(DataError, match="not a pseudonym key"):
        pseudonym("x")
    assert time.perf_counter() - started < 1  # too long is wrong at once, no waiting
