"""Eval stage: the base model and the run's trained stages on the same held-out prompts.

The stage is the eval harness (`ntp_rl.evaluation`) pointed at a run: the checkpoints are the base
(adapters disabled) and each earlier training stage's adapter, all on one copy of the base model.
What to evaluate on is either the stage's inline settings (the recipe's test split, greedy and
`num_samples` samples, the run's training rewards as scorers) or a suite file
(`suite: eval/arithmetic.yaml`, read from the recipe's folder, the current folder, then the bundled
suites); inline settings the recipe sets explicitly override the suite's (so `--smoke` shrinks it).
`extra_splits` are evaluated the same way and reported beside the main split (`test_phrasings`: the
arithmetic test problems in wording never used in training).
Writes `<stage>/report.json` (the source of truth), `report.md`, `report.html` and `samples.jsonl`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ntp_rl.checkpoints import BASE, Checkpoint
from ntp_rl.config import EvalStage, Recipe, RewardModelStage, RewardSpecSettings, RlStage, TrainingStage
from ntp_rl.errors import UserError
from ntp_rl.evaluation.report import render_markdown, summary_text
from ntp_rl.evaluation.suite import (
    EvalSuite,
    GenerationSettings,
    ReferenceNllSettings,
    default_metrics,
    load_suite,
    validate_suite,
)
from ntp_rl.rewards.learned import TRAINING_ONLY_KWARGS
from ntp_rl.stages.common import ADAPTER_DIR, StageContext, StageRunner

logger = logging.getLogger(__name__)

__all__ = ["BASE", "eval_checkpoints", "render_markdown", "run_eval", "stage_suite", "summary_text"]

# Inline settings of an eval stage -> where they live in a suite.
_STAGE_TO_SUITE = {
    "split": ("split",),
    "max_examples": ("max_examples",),
    "extra_splits": ("extra_splits",),
    **{
        key: ("generation", key)
        for key in (
            "greedy",
            "num_samples",
            "temperature",
            "top_p",
            "max_new_tokens",
            "seed",
            "batch_size",
            "sampled_checkpoints",
        )
    },
    "kl_to": ("kl_to",),
}


def evaluated_stages(recipe: Recipe, stage: EvalStage, index: int) -> list[str]:
    """The training stages an eval stage evaluates beside the base, checked against the recipe."""
    trained = [
        s.stage_name
        for s in recipe.stages[:index]
        if isinstance(s, TrainingStage) and not isinstance(s, RewardModelStage)  # policies only
    ]
    wanted = stage.checkpoints if stage.checkpoints is not None else trained
    unknown = [name for name in wanted if name not in trained]
    if unknown:
        raise UserError(f"stages[{index}].checkpoints: {unknown} are not earlier training stages ({trained})")
    labels = [BASE, *wanted]
    unknown = [name for name in stage.sampled_checkpoints or [] if name not in labels]
    if unknown:
        raise UserError(
            f"stages[{index}].sampled_checkpoints: {unknown} are not checkpoints this stage evaluates ({labels})"
        )
    unknown = [name for name in stage.kl_to if name not in wanted]
    if unknown:
        raise UserError(
            f"stages[{index}].kl_to: {unknown} are not training stages this stage evaluates ({wanted}); "
            "the KL to the base is always reported"
        )
    return wanted


def eval_checkpoints(ctx: StageContext) -> list[tuple[str, Path | None]]:
    """(label, adapter folder) for the base and each evaluated stage, in recipe order."""
    wanted = evaluated_stages(ctx.recipe, ctx.stage, ctx.index)  # type: ignore[arg-type]
    return [(BASE, None)] + [(name, ctx.run_dir / name / ADAPTER_DIR) for name in wanted]


def _training_rewards(recipe: Recipe, index: int, run_dir: Path | None = None) -> list[RewardSpecSettings]:
    """The reward specs of the run's earlier rl stages, each once: training and eval score alike.

    A reward model named by its stage is that stage's folder in `run_dir`; without a run folder (the
    pre-flight check, before the stage has run) it is left out. A reward model scores raw here: its
    `normalize` / `dead_zone` shape training advantages, and normalised per call or per prompt its
    mean would read 0 for every checkpoint.
    """
    stage_names = {s.stage_name for s in recipe.stages}
    seen, specs = set(), []
    for stage in recipe.stages[:index]:
        if isinstance(stage, RlStage):
            for spec in stage.rewards:
                if spec.reward_model in stage_names:
                    if run_dir is None:
                        continue
                    spec = spec.model_copy(update={"reward_model": str(run_dir / spec.reward_model)})
                if spec.reward_model is not None:  # raw scores: a normalised one would be 0 on average
                    kwargs = {k: v for k, v in spec.kwargs.items() if k not in TRAINING_ONLY_KWARGS}
                    spec = spec.model_copy(update={"kwargs": kwargs})
                key = json.dumps(spec.model_dump(exclude={"weight"}), sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    specs.append(spec)
    return specs or [RewardSpecSettings(name="math_accuracy")]


def stage_suite(
    recipe: Recipe, stage: EvalStage, index: int, recipe_dir: Path, run_dir: Path | None = None
) -> tuple[EvalSuite, Path | None]:
    """The suite an eval stage runs: its `suite:` file with explicit inline overrides, or its inline settings."""
    where = f"stages[{index}] ({stage.stage_name})"
    if stage.suite is not None:
        try:
            suite, path = load_suite(stage.suite, base_dirs=[recipe_dir])
        except UserError as exc:
            raise UserError(f"{where}.suite: {exc}") from None
        raw = suite.model_dump(mode="json")
        inline = stage.model_dump(mode="json")
        for key in stage.model_fields_set & set(_STAGE_TO_SUITE):
            *parents, last = _STAGE_TO_SUITE[key]
            node = raw
            for parent in parents:
                node = node[parent]
            node[last] = inline[key]
        if stage.data is not None:
            raw["data"] = stage.data.model_dump(mode="json")
        if "probes" in stage.model_fields_set:
            raw["probes"] = stage.probes.model_dump(mode="json") if stage.probes is not None else None
        return validate_suite(raw, f"{path} (with {where} overrides)"), path

    data = recipe.stage_data(stage)
    reference = None
    from ntp_rl.data import load_rows

    columns = load_rows(data, stage.split or data.test_split, recipe.run.seed, recipe_dir).column_names
    # The SFT targets, where the data has them: NLL of what SFT imitated.
    target = next((column for column in ("solution", "completion") if column in columns), None)
    if target is not None:
        reference = ReferenceNllSettings(column=target)
    if any(extra.split == (stage.split or data.test_split) for extra in stage.extra_splits):
        raise UserError(
            f"{where}.extra_splits: {stage.split or data.test_split!r} is the stage's main split already "
            "(`split`, default data.test_split); list only further splits"
        )
    scorers = _training_rewards(recipe, index, run_dir)
    if "answer" not in columns and not any(spec.gold for spec in scorers):
        raise UserError(
            f"{where}: the data needs column(s) prompt+answer (an answer to check), or a gold reward "
            f"(`gold: true`) among the rewards of an rl stage before it, to measure the checkpoints by; "
            f"data.source {data.source!r} split {stage.split or data.test_split!r} has {columns}. Map an "
            "answer column with data.columns, or mark the true objective `gold: true`"
        )
    suite = EvalSuite(
        name=stage.stage_name,
        data=data,
        data_seed=recipe.run.seed,
        split=stage.split or data.test_split,
        max_examples=stage.max_examples,
        extra_splits=stage.extra_splits,
        generation=GenerationSettings(
            greedy=stage.greedy,
            num_samples=stage.num_samples,
            temperature=stage.temperature,
            top_p=stage.top_p,
            max_new_tokens=stage.max_new_tokens,
            seed=stage.seed,
            batch_size=stage.batch_size,
            sampled_checkpoints=stage.sampled_checkpoints,
        ),
        scorers=scorers,
        # No `answer` column (synthetic:reviews): nothing to check; the scorers, a gold one first, measure.
        answer_check="math" if "answer" in columns else "none",
        metrics=default_metrics() if "answer" in columns else [],
        reference_nll=reference,
        kl_to=stage.kl_to,
        probes=stage.probes,
    )
    return suite, None


def check_eval_stage(recipe: Recipe, stage: EvalStage, index: int, recipe_dir: Path) -> None:
    """Preflight, before any model loads: the suite, its data and columns, scorers and metric modules."""
    from ntp_rl.evaluation.harness import load_extra_items, load_items, resolve_scorers
    from ntp_rl.evaluation.suite import resolve_metric_path

    labels = [BASE, *evaluated_stages(recipe, stage, index)]
    suite, path = stage_suite(recipe, stage, index, recipe_dir)
    unknown = [name for name in suite.generation.sampled_checkpoints or [] if name not in labels]
    if unknown:  # set in the suite file
        raise UserError(
            f"{path}: generation.sampled_checkpoints: {unknown} are not checkpoints stages[{index}] "
            f"evaluates ({labels})"
        )
    rows = load_items(suite, recipe_dir)
    extra_rows = load_extra_items(suite, recipe_dir, rows)
    resolve_scorers(suite, rows.column_names, path.parent if path else recipe_dir)
    for i, spec in enumerate(suite.metrics):
        where = f"stages[{index}] suite {path}: metrics[{i}]" if path else f"stages[{index}] metrics[{i}]"
        resolve_metric_path(spec, path.parent if path else None, where)
    from ntp_rl.models import check_prompts_fit

    model, where = recipe.model, f"stages[{index}] ({stage.stage_name})"
    tokens = suite.generation.max_new_tokens
    for split_rows in [rows, *extra_rows.values()]:
        check_prompts_fit(model.name_or_path, split_rows["prompt"], tokens, where, model.trust_remote_code)
    if suite.probes is not None:
        from ntp_rl.probes.run import prepare_inputs

        prepare_inputs(suite.probes, recipe_dir, where=f"stages[{index}].probes")


class EvalRunner(StageRunner):
    def check(self) -> None:
        check_eval_stage(self.recipe, self.stage, self.index, self.recipe_dir)  # type: ignore[arg-type]

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return run_eval(ctx)


def run_eval(ctx: StageContext) -> dict[str, Any]:
    from ntp_rl.evaluation.harness import run_suite

    stage: EvalStage = ctx.stage  # type: ignore[assignment]
    suite, suite_file = stage_suite(ctx.recipe, stage, ctx.index, ctx.recipe_dir, ctx.run_dir)
    checkpoints = []
    for name, adapter in eval_checkpoints(ctx):
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise UserError(
                f"stages[{ctx.index}]: checkpoint {name!r} has no adapter at {adapter}; run it first"
            )
        checkpoints.append(
            Checkpoint(
                label=name,
                spec=name if adapter is None else str(adapter.parent),
                base=ctx.base_model_path,
                adapter=adapter,
                stage_dir=adapter.parent if adapter is not None else None,
            )
        )
    report = run_suite(
        suite,
        checkpoints,
        ctx.stage_dir,
        suite_file=suite_file,
        title=f"{ctx.run_dir.name} / {stage.stage_name}",
        run=ctx.run_dir.name,
        stage=stage.stage_name,
        settings=stage.model_dump(mode="json"),
        data_base_dir=ctx.recipe_dir,
        dtype=ctx.dtype,
        trust_remote_code=ctx.recipe.model.trust_remote_code,
        is_main_process=ctx.is_main_process,
        # An unfinished stage (no COMPLETE marker) may have left a partial report behind.
        overwrite=True,
    )
    text = summary_text(report)
    logger.info("eval results:\n%s", text)
    headline = {
        f"{name}/{key}": value
        for name, s in report["summary"].items()
        for key, value in s.items()
        if key in ("greedy_accuracy", "sampled_pass1")
    }
    for split, section in (report.get("extra_splits") or {}).items():
        headline.update(
            {
                f"{name}/{split}/{key}": value
                for name, s in section["summary"].items()
                for key, value in s.items()
                if key in ("greedy_accuracy", "sampled_pass1")
            }
        )
    headline.update(  # KL per token to the base and to each `kl_to` stage
        {
            f"{name}/{key}": s[key]["value"]
            for name, s in report["summary"].items()
            for key in s
            if key.startswith("kl_to_") and isinstance(s[key], dict) and "value" in s[key]
        }
    )
    gold = report.get("gold_scorer")
    if gold is not None:  # the gold's mean per checkpoint and mode
        headline.update(
            {
                f"{name}/{mode}_{gold}": rewards[gold]["value"]
                for name, s in report["summary"].items()
                for mode, rewards in s.get("rewards", {}).items()
                if gold in rewards
            }
        )
    return {"report": str(ctx.stage_dir / "report.json"), "summary": text, **headline}
