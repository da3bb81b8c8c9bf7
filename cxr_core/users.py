"""Who is acting: the login name that reviews, thresholds history and runs record."""

from __future__ import annotations

import getpass


def current_user() -> str:
    """The login name recorded as reviewer (``unknown`` where the system cannot say)."""
    try:
        return getpass.getuser()
    except Exception:  # no USER/LOGNAME and no passwd entry (some containers)
        return "unknown"
