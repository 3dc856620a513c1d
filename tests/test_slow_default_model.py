"""Integration tests on the real default model (SmolLM2-135M-Instruct); `pytest -m slow`."""

from __future__ import annotations

import json

import pytest

from ntp_rl.cli import main

pytestmark = pytest.mark.slow


def test_sft_a_few_steps_on_the_default_model_lowers_held_out_loss(write_recipe, tmp_path):
    recipe = {
        "run": {"name": "slow-sft"},
        "model": {"name_or_path": "default", "dtype": "auto"},
        "data": {"arithmetic": {"num_train": 64, "num_test": 16}},
        "stages": [
            {
                "kind": "sft",
                "eval_examples": 16,
                "trainer": {
                    "max_steps": 6,
                    "per_device_train_batch_size": 8,
                    "learning_rate": 3e-4,
                    "warmup_steps": 0,
                    "logging_steps": 1,
                },
            },
        ],
    }
    assert main(["train", str(write_recipe(recipe))]) == 0
    results = json.loads((tmp_path / "runs" / "slow-sft" / "sft" / "COMPLETE").read_text())
    assert results["eval_loss_after"] < results["eval_loss_before"]
