"""Shared fixtures: offline, CPU, one tiny model (random 2-layer Llama with the default tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parent.parent


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
