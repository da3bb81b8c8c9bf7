"""Where shipped files live: ``cxr_core/assets`` in a wheel, the repository's ``assets/`` in a checkout.

pyproject's force-include copies the top-level ``assets/`` into the wheel as ``cxr_core/assets``; an
editable install or a plain checkout has only the top-level folder.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import cxr_core
from cxr_core.errors import CxrError


def asset_path(relative: str) -> Path:
    package = Path(cxr_core.__file__).resolve().parent
    for root in (package / "assets", package.parent / "assets"):
        candidate = root / relative
        if candidate.is_file():
            return candidate
    raise CxrError(f"shipped file assets/{relative} is missing (looked in {package / 'assets'} and "
                   f"{package.parent / 'assets'}); reinstall cxr")


@cache
def load_json_asset(relative: str) -> dict:
    return json.loads(asset_path(relative).read_text(encoding="utf-8"))
