"""Reward-model stage: base + LoRA + one score head, trained on preference pairs with TRL's `RewardTrainer`.

The base loads as a sequence classifier with one output (`num_labels=1`, a fresh score head seeded by
`run.seed`); the LoRA adapter (task type SEQ_CLS) trains with the score head trained in full
(`modules_to_save: [score]`). The loss is TRL's pairwise one, -log sigmoid(score(chosen) -
score(rejected)), on the chat-templated conversations (prompt + response). Before and after training the
held-out pairs (test split, `eval_examples` of them) are scored with the same routine an rl stage uses
to score completions (`ntp_rl.rewards.learned.score_conversations`): pairwise accuracy (share of pairs
with score(chosen) > score(rejected)), mean margin (score(chosen) - score(rejected)) and, when the data
has `rejected_kind`, accuracy per kind. They go to the stage's `COMPLETE` results and `metrics.jsonl`.
Output: `<stage>/adapter/` (LoRA + score head) and the tokenizer; an rl stage names it with
`{reward_model: <stage name>}`.

With `init_from: <sft stage>` the reward model starts from the fine-tuned policy instead of the base
(InstructGPT's reward model started from its SFT model): that stage's adapter is merged into the base
once, saved as a plain model folder in `<stage>/init_base/`, and the reward model's LoRA is trained
over it; the adapter records that folder as its base, so it loads like any other.

With `policy_pairs:` the stage first samples the policy (an sft stage's adapter) on `prompts` training
prompts, `samples` completions each, has a labeller (a gold reward, `math_accuracy` by default) label
up to `max_pairs_per_prompt` pairs per prompt, with Bradley-Terry noise if asked, and adds them to the
training pairs: comparisons of the policy's own outputs, as RLHF's labellers make them
(`ntp_rl/stages/policy_pairs.py`). With prompt-only data the reward model learns from those pairs
alone, and its held-out pairs are the policy's samples on test prompts, labelled by the gold without
noise. Counts and the labels' realised disagreement with the gold go to the results (`policy_pairs`),
the samples and their scores to `<stage>/policy_samples.jsonl` (a resumed stage reads them back
instead of sampling again).

The trainer is TRL's, subclassed (`ntp_rl/stages/reward_trainer.py`): a response that is in several
pairs of a batch is scored once, and with `group_pairs_by_prompt` (the default) a prompt's pairs
are shuffled into batches together so that this happens; TRL's loss and metrics are unchanged.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

from ntp_rl.config import RewardModelStage, build_dataclass
from ntp_rl.data import load_rows, to_prompt_format
from ntp_rl.errors import UserError
from ntp_rl.models import load_sequence_classifier, load_tokenizer
from ntp_rl.preference_data import to_preference_format
from ntp_rl.rewards.learned import score_conversations
from ntp_rl.stages.common import (
    ADAPTER_DIR,
    METRICS_FILE,
    StageContext,
    StageRunner,
    check_stage_adapter,
    last_checkpoint,
    stage_callbacks,
)
from ntp_rl.stages.policy_pairs import (
    check_labeller,
    is_prompt_only,
    resolve_policy_gold,
    sample_policy_pairs,
)
from ntp_rl.stages.reward_trainer import SharedResponseRewardTrainer

logger = logging.getLogger(__name__)

REWARD_MODEL_DEFAULTS: dict[str, Any] = {
    "max_steps": 100,
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 5,
    "logging_steps": 5,
    "save_steps": 50,
    "save_total_limit": None,
    "report_to": "none",
    "max_length": 512,
}
SCORE_HEAD = "score"  # the classification head's module name in transformers' *ForSequenceClassification
INIT_BASE_DIR = "init_base"  # the base with the init_from stage's adapter merged in


def prepare_preference_data(recipe, stage: RewardModelStage, index: int, recipe_dir):
    """Load and check the stage's pairs (before any model is loaded): (train, held_out or None).

    With `policy_pairs` and prompt-only data (no `chosen`/`rejected`), the prompts instead (as
    conversations, other columns kept): the training prompts and `eval_examples` test prompts, whose
    policy samples become the pairs.
    """
    where = f"stages[{index}] ({stage.stage_name})"
    data = recipe.stage_data(stage)
    seed = recipe.run.seed
    rows = load_rows(data, data.train_split, seed, recipe_dir)
    prompts_only = stage.policy_pairs is not None and is_prompt_only(rows.column_names)

    def convert(rows, split: str):
        if prompts_only:
            return to_prompt_format(rows, f"{where}: data.source {data.source!r} split {split!r}")
        return to_preference_format(rows, data, split, where)

    train = convert(rows, data.train_split)
    held_out = None
    if stage.eval_examples:
        rows = load_rows(data, data.test_split, seed, recipe_dir)
        rows = rows.select(range(min(len(rows), stage.eval_examples)))
        held_out = convert(rows, data.test_split)
    return train, held_out


def merged_init_base(ctx: StageContext, stage: RewardModelStage) -> str:
    """The base with the `init_from` stage's adapter merged in: a model folder, written once per stage."""
    from accelerate import PartialState
    from peft import PeftModel

    from ntp_rl.models import load_causal_lm

    folder = (ctx.stage_dir / INIT_BASE_DIR).resolve()  # the adapter records it: absolute
    adapter = check_stage_adapter(
        ctx.run_dir / stage.init_from / ADAPTER_DIR, f"stages[{ctx.index}].init_from"
    )
    if ctx.is_main_process and not (folder / "config.json").is_file():  # else: written before a resume
        trust = ctx.recipe.model.trust_remote_code
        model = load_causal_lm(ctx.base_model_path, ctx.dtype, trust)
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        partial = folder.with_name(folder.name + ".partial")
        if partial.exists():  # left by an interrupted merge; nothing else writes it
            shutil.rmtree(partial)
        model.save_pretrained(str(partial))
        load_tokenizer(ctx.base_model_path, trust).save_pretrained(str(partial))
        partial.rename(folder)
        logger.info("reward model starts from %s merged into the base (%s)", adapter, folder)
    PartialState().wait_for_everyone()
    return str(folder)


def pairwise_metrics(model, tokenizer, pairs, batch_size: int, max_length: int | None) -> dict[str, Any]:
    """Held-out pairwise accuracy and mean margin (and accuracy per `rejected_kind` when the data has it)."""
    has_prompt = "prompt" in pairs.column_names
    conversations = []
    for row in pairs:
        prompt = row["prompt"] if has_prompt else []
        conversations += [prompt + row["chosen"], prompt + row["rejected"]]
    scores = score_conversations(model, tokenizer, conversations, batch_size, max_length)
    margins = [scores[i] - scores[i + 1] for i in range(0, len(scores), 2)]
    wins = [m > 0 for m in margins]
    out: dict[str, Any] = {
        "pairs": len(margins),
        "pairwise_accuracy": sum(wins) / len(wins),
        "mean_margin": sum(margins) / len(margins),
    }
    if "rejected_kind" in pairs.column_names:
        by_kind: dict[str, list[bool]] = {}
        for kind, win in zip(pairs["rejected_kind"], wins, strict=True):
            by_kind.setdefault(kind, []).append(win)
        out["accuracy_by_rejected_kind"] = {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}
    return out


def _log_metrics(ctx: StageContext, step: int, phase: str, metrics: dict[str, Any]) -> None:
    if not ctx.is_main_process:
        return
    record = {"step": step, "time": round(time.time(), 3), "phase": phase}
    record.update({f"heldout/{key}": value for key, value in metrics.items()})
    with (ctx.stage_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


class RewardModelRunner(StageRunner):
    def check(self) -> None:
        """The stage's preference pairs (train, held-out), and its policy-pairs labeller if it has one."""
        self.train, self.held_out = prepare_preference_data(
            self.recipe, self.stage, self.index, self.recipe_dir
        )
        if self.stage.policy_pairs is not None:  # type: ignore[attr-defined]
            gold = resolve_policy_gold(self.stage, self.index, self.train.column_names, self.recipe_dir)
            check_labeller(gold, self.stage, self.index, self.train)
        self.check_trainer_args(**REWARD_MODEL_DEFAULTS)
        if "prompt" in self.train.column_names:  # a prompt must leave room for its responses
            settings = self.stage.policy_pairs  # type: ignore[attr-defined]
            room = settings.max_new_tokens if settings is not None else 1  # the policy samples that long
            self.check_prompts_fit(self.train["prompt"], new_tokens=room)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return run_reward_model(ctx, self.train, self.held_out)


def run_reward_model(ctx: StageContext, train, held_out) -> dict[str, Any]:
    from peft import LoraConfig
    from transformers import set_seed

    stage: RewardModelStage = ctx.stage  # type: ignore[assignment]
    policy_stats = None
    if stage.policy_pairs is not None:  # sampled before the reward model loads: one model at a time
        from datasets import concatenate_datasets

        prompt_only = is_prompt_only(train.column_names)
        policy_pairs, policy_stats, held_out_pairs = sample_policy_pairs(
            ctx, stage, train, held_out if prompt_only else None
        )
        if prompt_only:  # the reward model sees the labelled pairs only
            train, held_out = policy_pairs, held_out_pairs
        elif policy_pairs is not None:
            train = concatenate_datasets(
                [train.select_columns(["prompt", "chosen", "rejected"]), policy_pairs]
            )
    args = ctx.trainer_args(**REWARD_MODEL_DEFAULTS)
    lora_settings = dict(ctx.recipe.model.lora)
    lora_settings["modules_to_save"] = [*(lora_settings.get("modules_to_save") or []), SCORE_HEAD]
    lora = build_dataclass(LoraConfig, lora_settings, "model.lora", task_type="SEQ_CLS")
    tokenizer = load_tokenizer(ctx.base_model_path, ctx.recipe.model.trust_remote_code)
    base = ctx.base_model_path if stage.init_from is None else merged_init_base(ctx, stage)
    set_seed(args.seed)  # the score head starts random: the same seed gives the same head
    model = load_sequence_classifier(
        base,
        ctx.dtype,
        ctx.recipe.model.trust_remote_code,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation=ctx.recipe.model.attn_implementation,
    )

    callbacks, stop = stage_callbacks(ctx)
    trainer = SharedResponseRewardTrainer(
        group_pairs_by_prompt=stage.group_pairs_by_prompt,
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )
    batch_size, max_length = args.per_device_eval_batch_size, args.max_length
    kept = len(trainer.train_dataset)
    where = f"stages[{ctx.index}].trainer.max_length={max_length}"
    if kept == 0:
        raise UserError(
            f"{where}: every one of the {len(train)} training pairs (prompt and response, "
            "chat-templated) is longer, so there is nothing to train on; raise max_length"
        )
    if kept < len(train):  # TRL drops pairs longer than max_length; say so rather than train on fewer
        logger.warning(
            "reward model: %d of %d training pairs are longer than %s tokens and were dropped; raise "
            "max_length to keep them",
            len(train) - kept,
            len(train),
            where,
        )
    results: dict[str, Any] = {
        "train_rows": len(train),
        "train_rows_within_max_length": kept,
        "init_base": base if stage.init_from else None,
    }
    if policy_stats is not None:
        results["policy_pairs"] = policy_stats
    resume = last_checkpoint(ctx.stage_dir, ctx.is_main_process)
    if held_out is not None and resume is None:
        results["heldout_before"] = pairwise_metrics(
            trainer.model, tokenizer, held_out, batch_size, max_length
        )
        _log_metrics(ctx, 0, "before", results["heldout_before"])
    with stop.catching_signals():
        train_output = trainer.train(resume_from_checkpoint=resume)
    stop.raise_if_stopped()  # a checkpoint was saved; the stage is not complete
    results["train_loss"] = train_output.training_loss
    results["global_step"] = trainer.state.global_step
    results["resumed_from"] = resume
    if held_out is not None:
        after = pairwise_metrics(trainer.model, tokenizer, held_out, batch_size, max_length)
        results["heldout_after"] = after
        results["heldout_pairwise_accuracy"] = after["pairwise_accuracy"]
        results["heldout_mean_margin"] = after["mean_margin"]
        _log_metrics(ctx, trainer.state.global_step, "after", after)
        logger.info(
            "reward model: held-out pairwise accuracy %.3f, mean margin %.3f (%d pairs)",
            after["pairwise_accuracy"],
            after["mean_margin"],
            after["pairs"],
        )
    if ctx.is_main_process:
        trainer.model.save_pretrained(str(ctx.stage_dir / ADAPTER_DIR))
        tokenizer.save_pretrained(str(ctx.stage_dir / ADAPTER_DIR))
    trainer.accelerator.wait_for_everyone()
    return results
