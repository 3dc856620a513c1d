"""RL stage: GRPO (default) or RLOO through TRL's trainers, with LoRA, scored by reward functions.

The policy starts from the previous SFT stage's adapter when the recipe has one (or `init_from`),
else from a fresh LoRA adapter on the base. Rewards are resolved from the recipe's specs (built-in
names or import paths; see rewards/README.md) and wrapped in the run-time error policy. TRL logs
per-reward means, completion lengths and KL; the stage adds sample completions to `samples.jsonl`.
Output: `<stage>/adapter/`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ntp_rl.config import Recipe, RewardModelStage, RlStage, SftStage, build_dataclass
from ntp_rl.data import load_rows, to_prompt_format
from ntp_rl.errors import UserError
from ntp_rl.evaluation.overoptimisation_curve import HELDOUT_SAMPLES
from ntp_rl.models import load_causal_lm, load_tokenizer
from ntp_rl.stages.common import (
    ADAPTER_DIR,
    CHECKPOINT_PATTERN,
    METRICS_FILE,
    StageContext,
    StageRunner,
    check_stage_adapter,
    last_checkpoint,
    stage_callbacks,
)
from ntp_rl.stages.heldout_kl import kl_estimator, prompt_text, with_heldout_kl
from ntp_rl.stages.overoptimisation import monitor_for

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SAMPLES_PER_LOG = 4

RL_DEFAULTS: dict[str, Any] = {
    "max_steps": 50,
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 16,
    "num_generations": 8,
    "max_completion_length": 64,
    "temperature": 1.0,
    "logging_steps": 1,
    "save_steps": 25,
    "save_total_limit": None,
    "report_to": "none",
}
# KL coefficient when a learned reward model scores the policy and the recipe sets no `beta`: RLHF
# keeps the policy near its start, where the reward model's judgement holds (InstructGPT-style).
RLHF_DEFAULT_BETA = 0.05


def rlhf_trainer_defaults(stage: RlStage) -> dict[str, Any]:
    return {"beta": RLHF_DEFAULT_BETA} if any(s.reward_model is not None for s in stage.rewards) else {}


def reward_model_stage_folder(
    recipe: Recipe, index: int, reward_index: int, name: str, run_dir: Path | None
) -> Path | None:
    """The folder of the reward_model stage `name` of this run (None: `name` is not a stage of the recipe)."""
    names = [s.stage_name for s in recipe.stages]
    if name not in names:
        return None
    target = names.index(name)
    where = f"stages[{index}].rewards[{reward_index}].reward_model"
    if not isinstance(recipe.stages[target], RewardModelStage):
        raise UserError(
            f"{where}: stage {name!r} is a {recipe.stages[target].kind} stage, not a reward_model stage"
        )
    if target >= index:
        raise UserError(f"{where}: the reward_model stage {name!r} must come before this rl stage")
    if run_dir is None:  # the pre-flight check: the stage has not run yet
        return Path(recipe.run.output_dir) / recipe.run.name / name
    if not (run_dir / name / ADAPTER_DIR / "adapter_config.json").is_file():
        raise UserError(
            f"{where}: the reward_model stage {name!r} has not run yet (no {run_dir / name / ADAPTER_DIR})"
        )
    return run_dir / name


def check_dead_zone(stage: RlStage, index: int) -> None:
    """A reward model's `dead_zone` needs advantages on its own scale, not divided by a group's spread."""
    scale = stage.trainer.get("scale_rewards", "group")
    if scale not in (True, "group"):
        return
    given = "" if "scale_rewards" in stage.trainer else " (the default)"
    for reward_index, spec in enumerate(stage.rewards):
        if spec.reward_model is not None and spec.kwargs.get("dead_zone"):
            raise UserError(
                f"stages[{index}].rewards[{reward_index}].kwargs.dead_zone needs advantages on the reward's "
                f"own scale, but scale_rewards is {scale!r}{given}: dividing each group by its spread "
                f"blows a difference just past the zone back up to full size. Set "
                f"stages[{index}].trainer.scale_rewards: none (or batch)"
            )


def resolve_stage_rewards(
    stage: RlStage,
    index: int,
    columns: list[str],
    recipe_dir: Path,
    check_data=None,
    *,
    recipe: Recipe | None = None,
    run_dir: Path | None = None,
) -> tuple[list[Any], list[float]]:
    """Resolve and check every reward spec of a stage; errors name `stages[i].rewards[j]` (exit 2).

    With `check_data`, gold answers are parsed once up front for `math_accuracy`: an unparseable
    gold answer is a data error before training, never a free reward. With `recipe`, a
    `reward_model:` naming a stage of the recipe is that stage's folder in `run_dir`; without a
    `run_dir` (the pre-flight check) that folder need not exist yet.
    """
    from ntp_rl.rewards.registry import resolve_rewards

    specs, unbuilt = [], set()
    for reward_index, spec in enumerate(stage.rewards):
        if spec.reward_model is not None and recipe is not None:
            folder = reward_model_stage_folder(recipe, index, reward_index, spec.reward_model, run_dir)
            if folder is not None:
                spec = spec.model_copy(update={"reward_model": str(folder)})  # the recipe's stays as written
                if run_dir is None:
                    unbuilt.add(spec.reward_model)
        specs.append(spec)
    rewards = resolve_rewards(
        specs,
        recipe_dir,
        where=f"stages[{index}].rewards",
        available_columns=columns,
        unbuilt_reward_models=frozenset(unbuilt),
    )
    check_dead_zone(stage, index)  # after the kwargs themselves are checked
    if check_data is not None and "answer" in columns and any(s.name == "math_accuracy" for s in specs):
        from ntp_rl.rewards.math import check_gold_answers

        try:
            check_gold_answers([str(a) for a in check_data["answer"]])
        except ValueError as exc:
            raise UserError(f"stages[{index}]: the data's answer column: {exc}") from None
    return rewards, [spec.weight for spec in specs]


def filter_prompts(model, tokenizer, train, reward_funcs, weights, settings, args, seed: int):
    """Keep the prompts whose weighted reward varies over `settings.samples` completions of the policy.

    Returns (filtered dataset, statistics). Falls back to the unfiltered candidates, with a warning,
    when too few prompts survive to fill one generation batch.
    """
    from ntp_rl.generation import Decoding, generate, merged_copy
    from ntp_rl.rewards.scoring import mean_applied, score_completions

    candidates = train.shuffle(seed=seed).select(range(min(settings.candidates, len(train))))
    decoding = Decoding(
        num_samples=settings.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=settings.max_new_tokens or args.max_completion_length,
        seed=seed,
    )
    logger.info("prompt filter: sampling %d x %d completions", len(candidates), settings.samples)
    from tqdm.auto import tqdm

    sampler = merged_copy(model)  # the same policy, sampled faster; freed below
    with tqdm(total=len(candidates), desc="prompt filter", unit="prompt") as bar:
        generations = generate(
            sampler, tokenizer, list(candidates["prompt"]), decoding, settings.batch_size, bar.update
        )
    del sampler
    n = settings.samples
    columns = {
        name: [value for value in candidates[name] for _ in range(n)] for name in candidates.column_names
    }
    # Scored as TRL scores a training batch: a reward's None is left out of the weighted sum, and a
    # sample no reward applied to (sum None) is left out of its group's spread, as GRPO leaves it out
    # of the group's baseline.
    scores = score_completions(
        reward_funcs,
        weights,
        [p for p in candidates["prompt"] for _ in range(n)],
        [text for gen in generations for text in gen.texts],
        [ids for gen in generations for ids in gen.token_ids],
        columns,
    )
    keep = [
        i for i in range(len(candidates)) if _spread(scores.total[i * n : (i + 1) * n]) >= settings.min_spread
    ]
    stats = {
        "candidates": len(candidates),
        "kept": len(keep),
        "start_policy_mean_first_reward": mean_applied(scores.per_reward[0]),
    }
    prompts_per_batch = max(1, args.generation_batch_size // args.num_generations)
    if len(keep) < prompts_per_batch:
        logger.warning(
            "prompt filter kept %d of %d prompts, fewer than one generation batch (%d); training on all candidates",
            len(keep),
            len(candidates),
            prompts_per_batch,
        )
        stats["fallback"] = True
        return candidates, stats
    logger.info(
        "prompt filter kept %d of %d prompts (reward varies across samples)", len(keep), len(candidates)
    )
    return candidates.select(keep), stats


def _spread(totals: list[float | None]) -> float:
    """Max minus min of a prompt's weighted rewards, over the samples some reward applied to."""
    present = [t for t in totals if t is not None]
    return max(present) - min(present) if present else 0.0


def init_adapter_dir(ctx: StageContext) -> Path | None:
    """The adapter the policy starts from: `init_from`, else the nearest earlier SFT stage."""
    stage: RlStage = ctx.stage  # type: ignore[assignment]
    if stage.init_from is not None:
        names = [s.stage_name for s in ctx.recipe.stages]
        if stage.init_from not in names:
            raise UserError(
                f"stages[{ctx.index}].init_from: no stage named {stage.init_from!r}; stages: {names}"
            )
        return ctx.run_dir / stage.init_from / ADAPTER_DIR
    for earlier in reversed(ctx.recipe.stages[: ctx.index]):
        if isinstance(earlier, SftStage):
            return ctx.run_dir / earlier.stage_name / ADAPTER_DIR
    return None


class SampleLogCallback(TrainerCallback):
    """Write a few of the latest completions with their rewards to `samples.jsonl` at each log.

    Reads the trainer's completion buffer (the same one TRL prints with `log_completions`); if a TRL
    version lacks it, sample logging is skipped rather than failing a run.
    Kept (checked with TRL 1.16): no public option hands completions to a callback; `log_completions`
    prints them to the console and writes parquet files for GRPO only (nothing for RLOO).
    """

    def __init__(self, path: Path):
        self.path = path
        self.trainer = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        buffer = getattr(self.trainer, "_logs", None)
        if not state.is_world_process_zero or not isinstance(buffer, dict) or not buffer.get("completion"):
            return
        prompts, completions = list(buffer["prompt"]), list(buffer["completion"])
        rewards = {name: list(values) for name, values in buffer.get("rewards", {}).items()}
        start = max(0, len(completions) - SAMPLES_PER_LOG)
        with self.path.open("a", encoding="utf-8") as handle:
            for i in range(start, len(completions)):
                prompt = prompts[i] if i < len(prompts) else None
                record = {
                    "step": state.global_step,
                    "prompt": prompt_text(prompt) if prompt is not None else None,
                    "completion": completions[i],
                    "rewards": {k: v[i] for k, v in rewards.items() if i < len(v)},
                }
                handle.write(json.dumps(record, default=str) + "\n")


def check_hold_out(count: int, rows: int, where: str) -> None:
    """`eval_examples` must leave training rows (checked before any stage runs, and again by `hold_out`)."""
    if count >= rows:
        raise UserError(
            f"{where}: eval_examples is {count} but the training split has {rows} rows; hold out fewer"
        )


def hold_out(train, count: int, seed: int, where: str):
    """(training rows, `count` held-out rows): a seeded draw by `datasets`' own `train_test_split`."""
    check_hold_out(count, len(train), where)  # a message naming the stage, before datasets' ValueError
    # In memory: no indices cache files written next to a hub data set's cache.
    split = train.train_test_split(test_size=count, seed=seed, keep_in_memory=True)
    return split["train"], split["test"]


def heldout_eval_defaults(stage: RlStage) -> dict[str, Any]:
    """Trainer defaults for evaluation on held-out prompts (`eval_examples`); the recipe's trainer wins."""
    if not stage.eval_examples:
        return {}
    trainer = {**RL_DEFAULTS, **stage.trainer}
    # TRL evaluates whole groups: an eval batch of one generation batch (a multiple of num_generations).
    batch = trainer["per_device_train_batch_size"] * trainer.get("gradient_accumulation_steps", 1)
    return {
        "eval_strategy": "steps",
        "eval_steps": max(1, int(trainer["max_steps"]) // 4),
        "eval_on_start": True,
        "per_device_eval_batch_size": batch,
    }


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


class RlRunner(StageRunner):
    def check(self) -> None:
        """vLLM where asked for; the training prompts; the hold-out size; every reward spec and gold answer."""
        stage: RlStage = self.stage  # type: ignore[assignment]
        check_vllm(stage, self.index)
        data = self.data
        self.train = to_prompt_format(
            load_rows(data, data.train_split, self.recipe.run.seed, self.recipe_dir), self.where
        )
        if stage.eval_examples:
            check_hold_out(stage.eval_examples, len(self.train), self.where)
        resolve_stage_rewards(
            stage,
            self.index,
            self.train.column_names,
            self.recipe_dir,
            check_data=self.train,
            recipe=self.recipe,
        )
        args = self.check_trainer_args(
            **{**RL_DEFAULTS, **rlhf_trainer_defaults(stage), **heldout_eval_defaults(stage)},
            reward_weights=[spec.weight for spec in stage.rewards],
        )
        self.check_prompts_fit(self.train["prompt"], new_tokens=args.max_completion_length)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return run_rl(ctx, self.train)


def run_rl(ctx: StageContext, train) -> dict[str, Any]:
    from peft import LoraConfig, PeftModel

    stage: RlStage = ctx.stage  # type: ignore[assignment]
    where = f"stages[{ctx.index}] ({stage.stage_name})"
    # Resolved again with the run folder: a reward model named by its stage exists only now.
    reward_funcs, weights = resolve_stage_rewards(
        stage, ctx.index, train.column_names, ctx.recipe_dir, recipe=ctx.recipe, run_dir=ctx.run_dir
    )
    eval_dataset = None
    if stage.eval_examples:
        train, eval_dataset = hold_out(train, stage.eval_examples, ctx.recipe.run.seed, where)
    args = ctx.trainer_args(
        **{**RL_DEFAULTS, **rlhf_trainer_defaults(stage), **heldout_eval_defaults(stage)},
        reward_weights=weights,
    )

    tokenizer = load_tokenizer(ctx.base_model_path, ctx.recipe.model.trust_remote_code)
    settings = ctx.recipe.model
    model = load_causal_lm(
        ctx.base_model_path,
        ctx.dtype,
        settings.trust_remote_code,
        settings.attn_implementation,
        settings.generation_attn_implementation,
    )
    adapter = init_adapter_dir(ctx)
    peft_config = None
    if adapter is not None:
        check_stage_adapter(adapter, where)
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        peft_config = build_dataclass(LoraConfig, ctx.recipe.model.lora, "model.lora", task_type="CAUSAL_LM")

    filter_stats = None
    if stage.prompt_filter is not None:  # deterministic: a resumed stage gets the same prompts back
        train, filter_stats = filter_prompts(
            model, tokenizer, train, reward_funcs, weights, stage.prompt_filter, args, ctx.seed
        )

    # TRL's trainers, minus the forward/backward of zero-advantage completions and with generation
    # from merged LoRA weights: the same update (ntp_rl/stages/rl_trainer.py).
    if stage.algorithm == "rloo":
        from ntp_rl.stages.rl_trainer import RLOOTrainer as Trainer
    else:
        from ntp_rl.stages.rl_trainer import GRPOTrainer as Trainer
    samples = SampleLogCallback(ctx.stage_dir / SAMPLES_FILE)
    callbacks, stop = stage_callbacks(ctx)
    # Learned vs gold reward, when both are there (also on the held-out prompts, when there are some).
    heldout_samples = (
        len(eval_dataset) * (args.num_generations_eval or args.num_generations)
        if eval_dataset is not None
        else 0
    )
    monitor = monitor_for(stage.rewards, reward_funcs, heldout_samples, kl_estimator(stage.algorithm))
    if monitor is not None:
        callbacks.append(monitor)
    # With held-out prompts: KL to the starting policy at each evaluation, also with beta 0.
    trainer = with_heldout_kl(Trainer)(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*callbacks, samples],
        heldout_samples_path=ctx.stage_dir / HELDOUT_SAMPLES if eval_dataset is not None else None,
        skip_zero_advantage=stage.skip_zero_advantage,
        share_prompt_prefix=stage.share_prompt_prefix,
        fast_sampling=stage.fast_sampling,
    )
    samples.trainer = trainer
    if monitor is not None:
        monitor.trainer = trainer  # its held-out completions' scores, per evaluation
    resume = last_checkpoint(ctx.stage_dir, ctx.is_main_process)
    if monitor is not None and resume is not None:  # its series from before the interruption
        step = int(CHECKPOINT_PATTERN.match(Path(resume).name).group(1))
        monitor.replay(ctx.stage_dir / METRICS_FILE, step, ctx.stage_dir / HELDOUT_SAMPLES)
    with stop.catching_signals():
        train_output = trainer.train(resume_from_checkpoint=resume)
    stop.raise_if_stopped()  # a checkpoint was saved; the stage is not complete
    if ctx.is_main_process:
        trainer.model.save_pretrained(str(ctx.stage_dir / ADAPTER_DIR), selected_adapters=["default"])
        tokenizer.save_pretrained(str(ctx.stage_dir / ADAPTER_DIR))
    trainer.accelerator.wait_for_everyone()
    results = {
        "algorithm": stage.algorithm,
        "init_adapter": str(adapter) if adapter else None,
        "train_rows": len(train),
        "train_loss": train_output.training_loss,
        "global_step": trainer.state.global_step,
        "resumed_from": resume,
        "reward_names": [f.__name__ for f in reward_funcs],
        "prompt_filter": filter_stats,
        "overoptimisation": monitor.result() if monitor is not None else None,
    }
    if monitor is not None and (summary := monitor.summary()):
        results["summary"] = summary  # repeated in the run's closing summary
    return results
