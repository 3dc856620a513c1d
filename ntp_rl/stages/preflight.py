"""Checks run before any model loads and before the run folder is touched.

`check_recipe` looks at everything a recipe points at that can be checked cheaply: the model
reference (a local folder needs config.json and safetensors weights), each stage's data (files,
encoding, splits, columns, answer pattern), each rl stage's reward specs (importable, callable,
right signature, the columns they need) and optional dependencies a stage asks for (vLLM). Every
problem is a `UserError` naming the culprit (exit status 2), so a bad input never leaves a
half-written run folder behind.
"""

from __future__ import annotations

from pathlib import Path

from ntp_rl.config import EvalStage, Recipe, RewardModelStage, RlStage, SftStage, StageBase
from ntp_rl.data import load_rows, to_prompt_format, to_sft_format
from ntp_rl.errors import UserError
from ntp_rl.models import check_model_reference


def check_recipe(recipe: Recipe, recipe_dir: Path) -> None:
    check_model_reference(recipe.model.name_or_path)
    for index, stage in enumerate(recipe.stages):
        check_stage(recipe, stage, index, recipe_dir)


def check_stage(recipe: Recipe, stage: StageBase, index: int, recipe_dir: Path) -> None:
    where = f"stages[{index}] ({stage.stage_name})"
    data = recipe.stage_data(stage)
    if isinstance(stage, SftStage):
        to_sft_format(load_rows(data, data.train_split, recipe.run.seed, recipe_dir), where)
        if stage.eval_examples:
            to_sft_format(load_rows(data, data.test_split, recipe.run.seed, recipe_dir), where)
    elif isinstance(stage, RewardModelStage):
        from ntp_rl.stages.reward_model import prepare_preference_data, resolve_policy_gold

        train, _ = prepare_preference_data(recipe, stage, index, recipe_dir)
        if stage.policy_pairs is not None:
            resolve_policy_gold(stage, index, train.column_names, recipe_dir)
    elif isinstance(stage, RlStage):
        check_vllm(stage, index)
        train = load_rows(data, data.train_split, recipe.run.seed, recipe_dir)
        to_prompt_format(train, where)
        from ntp_rl.stages.rl import check_hold_out, resolve_stage_rewards

        if stage.eval_examples:
            check_hold_out(stage.eval_examples, len(train), where)

        resolve_stage_rewards(stage, index, train.column_names, recipe_dir, check_data=train, recipe=recipe)
    elif isinstance(stage, EvalStage):
        # The suite (file or inline), its data and columns, gold answers, scorers, metric modules.
        from ntp_rl.stages.evaluate import check_eval_stage

        check_eval_stage(recipe, stage, index, recipe_dir)


def check_vllm(stage: RlStage, index: int) -> None:
    """`use_vllm: true` needs vllm importable here; TRL would otherwise fail after the model loaded."""
    if not stage.trainer.get("use_vllm"):
        return
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # ImportError, or a vllm built for another torch/CUDA
        raise UserError(
            f"stages[{index}].trainer.use_vllm: true, but vllm cannot be imported here "
            f"({type(exc).__name__}: {exc}). Install it on a GPU machine (`pip install 'trl[vllm]'`) "
            "or set use_vllm: false"
        ) from None
