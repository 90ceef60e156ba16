"""The cache directory shared by all runs of one user."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$NOTIFIER_HARNESS_CACHE, else $XDG_CACHE_HOME/notifier-harness, else ~/.cache/notifier-harness."""
    explicit = os.environ.get("NOTIFIER_HARNESS_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "notifier-harness"
    root.mkdir(parents=True, exist_ok=True)
    return root
