"""Published weight files from the Hugging Face hub: the local cache first, a download only when reachable.

huggingface_hub retries an unreachable host for about 25 s per file before failing (measured here with no
network), so cxr first asks the endpoint for any HTTP answer within 3 s and otherwise fails with
instructions. A TCP connect is not enough: sandboxes and proxies may accept connections they never answer.
Files are fetched the way timm and open_clip fetch them, then read by ``weights.read_state_dict`` like any
local file. ``HF_HUB_OFFLINE``, ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT`` are read at call time,
unlike huggingface_hub's constants, which are fixed at import.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cxr_core.models.weights import WeightsUnavailable

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def offline_reason() -> str | None:
    """Why the hub cannot be used now, or None when its endpoint answers HTTP within the probe timeout."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = _endpoint()
    outcome: list[str] = []

    def probe() -> None:  # in a thread: a stalled DNS lookup ignores socket timeouts
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
            outcome.append("")
        except urllib.error.HTTPError:  # any HTTP answer means the hub is there
            outcome.append("")
        except (OSError, ValueError) as err:
            outcome.append(f"cannot reach {endpoint} ({getattr(err, 'reason', err)})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    if not outcome:
        return f"no answer from {endpoint} within {PROBE_TIMEOUT_S:g} s"
    return outcome[0] or None


def instructions(repo_id: str, filename: str) -> str:
    return (f"get {filename} from the Hugging Face repo {repo_id} into the HF cache ({cache_dir()}) with "
            f"`hf download {repo_id} {filename}` on a connected machine, or pass --weights PATH to a local "
            ".safetensors/.pth file")


def hub_file(repo_id: str, filenames: Sequence[str], what: str) -> Path:
    """The first of ``filenames`` in ``repo_id``: cached, else downloaded; ``WeightsUnavailable`` otherwise."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir())
        if isinstance(cached, str):
            return Path(cached)
    reason = offline_reason()
    if reason:
        raise WeightsUnavailable(f"{what} are not on this machine ({reason}): {instructions(repo_id, filenames[0])}")
    failure = ""
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir(), endpoint=_endpoint()))
        except Exception as err:  # the hub client raises many types (HTTP, OS, not found); all mean "not here"
            failure = f"{filename}: {type(err).__name__}"
            if not (isinstance(err, EntryNotFoundError) and not isinstance(err, LocalEntryNotFoundError)):
                break  # a network failure, not a missing file: the next name would fail the same way, slowly
    raise WeightsUnavailable(f"{what} could not be downloaded ({failure}): {instructions(repo_id, filenames[0])}")
