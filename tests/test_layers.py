"""The package's layers point one way and hold no import cycle (the contracts in pyproject.toml).

`lint-imports` reads the package from the file system. In a clone, `ntp_rl.rewards` lives at
rewards/ (the editable install maps it there), so the check runs on a copy arranged as a wheel
installs it: ntp_rl/ with rewards/ inside it as ntp_rl/rewards/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _installed_layout(tmp_path: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "ntp_rl", tmp_path / "ntp_rl", ignore=ignore)
    shutil.copytree(ROOT / "rewards", tmp_path / "ntp_rl" / "rewards", ignore=ignore)
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_are_kept(tmp_path):
    result = _lint(_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path):
    # A lower layer importing a higher one, inside a function as layers sometimes try, must fail.
    tree = _installed_layout(tmp_path)
    with open(tree / "ntp_rl" / "config.py", "a", encoding="utf-8") as f:
        f.write("\n\ndef _sneaky():\n    from ntp_rl.pipeline import MANIFEST\n\n    return MANIFEST\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "ntp_rl.config is not allowed to import ntp_rl.pipeline" in result.stdout


def test_every_module_has_a_layer():
    # A module left out of the layers contract would escape the check.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {part.strip(" ()") for layer in layers for part in layer.replace(":", "|").split("|")}
    children = {f"ntp_rl.{p.stem}" for p in (ROOT / "ntp_rl").glob("*.py") if p.stem != "__init__"}
    children |= {f"ntp_rl.{p.parent.name}" for p in (ROOT / "ntp_rl").glob("*/__init__.py")}
    children.add("ntp_rl.rewards")  # rewards/, installed as ntp_rl.rewards
    assert sorted(children - named) == [], (
        "add these modules to a layer in pyproject.toml [tool.importlinter]"
    )
