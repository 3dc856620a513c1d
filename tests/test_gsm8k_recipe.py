"""recipes/rlvr_gsm8k.yaml on a hand-written GSM8K-style file: the SFT targets end in the line the
rewards read, and the whole recipe runs under --smoke offline."""

from __future__ import annotations

import json

import pytest
from ntp_rl.rewards import format_reward, score_math_answer
from safetensors.torch import load_file

from ntp_rl.cli import main
from ntp_rl.config import DataSettings, load_recipe
from ntp_rl.data import load_rows, to_sft_format
from ntp_rl.errors import UserError
from tests.conftest import REPO

GSM8K_STYLE = REPO / "tests" / "data" / "gsm8k_style"
RECIPE = REPO / "recipes" / "rlvr_gsm8k.yaml"


def _gsm8k_data(**extra) -> DataSettings:
    return DataSettings(
        source=str(GSM8K_STYLE / "train.jsonl"),
        columns={"prompt": "question"},
        answer_pattern=r"####\s*(.+)$",
        **extra,
    )


def test_solution_answer_line_makes_sft_targets_score_full_marks():
    rows = load_rows(_gsm8k_data(solution_answer_line=True), "train", seed=0)
    assert rows["answer"][:4] == ["29", "270", "16", "1200"]  # "#### 1,200" -> "1200"
    first = rows["solution"][0]
    assert first.splitlines() == [
        "Mara buys 3 * 12 = <<3*12=36>>36 pencils.",
        "After giving 7 away she has 36 - 7 = <<36-7=29>>29 pencils.",
        "Answer: 29",
    ]
    for solution, gold in zip(rows["solution"], rows["answer"], strict=True):
        verdict = score_math_answer(solution, gold)
        assert verdict.correct and verdict.parse_failed is False
    completions = [row["completion"] for row in to_sft_format(rows, "test")]
    assert format_reward(completions) == [1.0] * len(rows)


def test_without_the_option_solutions_keep_their_hash_line():
    rows = load_rows(_gsm8k_data(), "train", seed=0)
    assert rows["solution"][0].endswith("#### 29") and rows["answer"][0] == "29"
    assert format_reward(rows["solution"]) == [0.0] * len(rows)


def test_solution_answer_line_needs_an_answer_pattern(tmp_path):
    with pytest.raises(ValueError, match="set answer_pattern too"):
        DataSettings(source="x.jsonl", solution_answer_line=True)
    with pytest.raises(UserError, match="set answer_pattern too"):
        load_recipe(RECIPE, ["data.answer_pattern=null"])


def test_recipe_smoke_runs_offline_on_local_data(tmp_path, tiny_model_path):
    argv = ["train", str(RECIPE), f"data.source={GSM8K_STYLE}", "--smoke", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    run = tmp_path / "rlvr-gsm8k-smoke"
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(stage["status"] == "complete" for stage in manifest["stages"].values())
    sft = load_file(run / "sft" / "adapter" / "adapter_model.safetensors")
    assert any(float(t.abs().sum()) > 0 for k, t in sft.items() if "lora_B" in k)  # B starts at zero
    assert manifest["stages"]["rl"]["results"]["init_adapter"].endswith("sft/adapter")
