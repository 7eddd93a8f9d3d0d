"""Where a number comes from: the code's git commit and a hash of the settings that produced it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any


def git_commit() -> str:
    """The checkout's short commit, or `unknown` outside a git checkout (recorded in metrics.json)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_hash(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts (recorded in metrics.json)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
