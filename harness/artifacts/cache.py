"""The cache directory shared by all runs of one user.

Each kind of artifact has its own subdirectory of entries; harness.artifacts.publish
says how an entry is built, published and shared between concurrent runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import ArtifactError


def cache_root() -> Path:
    """$NOTIFIER_HARNESS_CACHE, else $XDG_CACHE_HOME/notifier-harness, else ~/.cache/notifier-harness."""
    explicit = os.environ.get("NOTIFIER_HARNESS_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(base) / "notifier-harness"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "it exists and is not a directory" if isinstance(e, FileExistsError) else e.strerror
        raise ArtifactError(f"cache directory {root} is unusable: {reason}; it must be a writable "
                            f"directory (set NOTIFIER_HARNESS_CACHE to choose another)") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ArtifactError(f"cache directory {root} is not writable; set NOTIFIER_HARNESS_CACHE "
                            f"to a writable directory")
    return root
