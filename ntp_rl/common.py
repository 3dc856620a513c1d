"""What every layer of ntp_rl shares: UTC timestamps, atomic JSON writes, package versions.

The bottom of the package's layers (the import-linter contract in pyproject.toml): it imports
nothing from ntp_rl, so any module may import it without creating a cycle.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

# The last line of a worked solution, "Answer: 85": written by the built-in tasks and the data
# loader's GSM8K conversion, read by the answer-line rewards.
ANSWER_LINE_PREFIX = "Answer:"

# Packages whose versions go into every manifest and report (provenance of a result).
TRACKED_PACKAGES = ("ntp-rl", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify")


def package_versions(*extra: str) -> dict[str, str]:
    """Python's and each tracked (and `extra`) package's installed version ("not installed" where missing)."""
    versions = {"python": platform.python_version()}
    for name in (*TRACKED_PACKAGES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. 2026-11-30T09:38:48+00:00."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def utc_stamp() -> str:
    """The current UTC time for a folder name, e.g. 20261130-093848."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def write_json_atomic(path: Path, payload: Any, indent: int = 2) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file: a temporary file, then a rename.

    The temporary name carries the process id, so two processes writing the same file do not
    write into each other's temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(payload, indent=indent, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    tmp.replace(path)
