"""Checks run before any model loads: each stage's data (splits, columns) and its reward specs."""

from __future__ import annotations

from pathlib import Path

from ntp_rl.config import EvalStage, Recipe, RlStage, SftStage, StageBase
from ntp_rl.data import load_rows, require_columns, to_prompt_format, to_sft_format


def check_stage(recipe: Recipe, stage: StageBase, index: int, recipe_dir: Path) -> None:
    where = f"stages[{index}] ({stage.stage_name})"
    data = recipe.stage_data(stage)
    if isinstance(stage, SftStage):
        to_sft_format(load_rows(data, data.train_split, recipe.run.seed, recipe_dir), where)
    elif isinstance(stage, RlStage):
        train = load_rows(data, data.train_split, recipe.run.seed, recipe_dir)
        to_prompt_format(train, where)
        from ntp_rl.stages.rl import resolve_stage_rewards

        resolve_stage_rewards(stage, index, train.column_names, recipe_dir, check_data=train)
    elif isinstance(stage, EvalStage):
        rows = load_rows(data, stage.split or data.test_split, recipe.run.seed, recipe_dir)
        require_columns(rows, ["prompt", "answer"], where)
