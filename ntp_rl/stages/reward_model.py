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
prompts, `samples` completions each, ranks them with a gold reward (`math_accuracy` by default), and adds
up to `max_pairs_per_prompt` (better, worse) pairs per prompt to the training pairs: comparisons of the
policy's own outputs, as RLHF's labellers make them, so the reward model meets the errors the policy
makes rather than only the ones the data's authors thought of. Counts go to the results
(`policy_pairs`), the samples and their scores to `<stage>/policy_samples.jsonl` (a resumed stage reads
them back instead of sampling again); the held-out measurements stay on the data's test pairs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

from ntp_rl.config import RewardModelStage, build_dataclass
from ntp_rl.data import load_rows
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
POLICY_SAMPLES_FILE = "policy_samples.jsonl"  # policy_pairs: the samples and their gold scores


def prepare_preference_data(recipe, stage: RewardModelStage, index: int, recipe_dir):
    """Load and check the stage's pairs (before any model is loaded): (train, held_out or None)."""
    where = f"stages[{index}] ({stage.stage_name})"
    data = recipe.stage_data(stage)
    seed = recipe.run.seed
    train = to_preference_format(
        load_rows(data, data.train_split, seed, recipe_dir), data, data.train_split, where
    )
    held_out = None
    if stage.eval_examples:
        rows = load_rows(data, data.test_split, seed, recipe_dir)
        rows = rows.select(range(min(len(rows), stage.eval_examples)))
        held_out = to_preference_format(rows, data, data.test_split, where)
    return train, held_out


def resolve_policy_gold(stage: RewardModelStage, index: int, columns: list[str], recipe_dir):
    """`policy_pairs.gold` resolved and checked against the preference data's columns (UserError if not)."""
    from ntp_rl.errors import UserError
    from ntp_rl.rewards.registry import resolve_rewards

    where = f"stages[{index}].policy_pairs"
    if "prompt" not in columns:
        raise UserError(f"{where}: the preference data has no `prompt` column to sample the policy on")
    data_columns = [c for c in columns if c not in ("chosen", "rejected")]
    (gold,) = resolve_rewards(
        [stage.policy_pairs.gold],
        recipe_dir,
        where=f"{where}.gold",
        available_columns=data_columns,
    )
    return gold


def sample_policy(ctx: StageContext, stage: RewardModelStage, train) -> list[dict[str, Any]]:
    """The policy's samples on training prompts with their gold scores, one record per prompt.

    The main process samples and writes them to `<stage>/policy_samples.jsonl` (prompt, completions,
    scores: what the pairs were made of); every process reads them from there, and so does a resumed
    stage instead of sampling again.
    """
    from accelerate import PartialState

    saved = ctx.stage_dir / POLICY_SAMPLES_FILE
    if not saved.is_file():  # else written whole (renamed from .partial) by an earlier attempt
        if ctx.is_main_process:
            records = _sample_and_score(ctx, stage, train)
            partial = saved.with_name(saved.name + ".partial")
            partial.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            partial.rename(saved)
        PartialState().wait_for_everyone()
    else:
        logger.info("policy pairs: samples read from %s (sampled before the stage was resumed)", saved)
    return [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]


def _sample_and_score(ctx: StageContext, stage: RewardModelStage, train) -> list[dict[str, Any]]:
    from peft import PeftModel
    from tqdm.auto import tqdm

    from ntp_rl.generation import Decoding, generate, merged_copy
    from ntp_rl.models import load_causal_lm
    from ntp_rl.rewards.scoring import score_completions

    settings = stage.policy_pairs
    gold = resolve_policy_gold(stage, ctx.index, train.column_names, ctx.recipe_dir)
    columns = [c for c in train.column_names if c not in ("prompt", "chosen", "rejected")]
    adapter = check_stage_adapter(
        ctx.run_dir / settings.policy / ADAPTER_DIR, f"stages[{ctx.index}].policy_pairs.policy"
    )
    rows = train.shuffle(seed=ctx.seed).select(range(min(settings.prompts, len(train))))
    trust = ctx.recipe.model.trust_remote_code
    tokenizer = load_tokenizer(ctx.base_model_path, trust)
    policy = PeftModel.from_pretrained(load_causal_lm(ctx.base_model_path, ctx.dtype, trust), str(adapter))
    sampler = merged_copy(policy)
    del policy
    n = settings.samples
    decoding = Decoding(
        num_samples=n,
        temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens,
        seed=ctx.seed,
    )
    with tqdm(total=len(rows), desc="policy pairs", unit="prompt") as bar:
        generations = generate(
            sampler, tokenizer, list(rows["prompt"]), decoding, settings.batch_size, bar.update
        )
    del sampler
    texts = [text for g in generations for text in g.texts]
    (scores,) = score_completions(
        [gold],
        [1.0],  # one reward: only its own values are used, not a weighted sum
        [p for p in rows["prompt"] for _ in range(n)],
        texts,
        [ids for g in generations for ids in g.token_ids],
        {c: [v for v in rows[c] for _ in range(n)] for c in columns},
    ).per_reward
    records = [
        {
            "prompt": row["prompt"],
            "completions": texts[i * n : (i + 1) * n],
            "scores": scores[i * n : (i + 1) * n],
            "gold": gold.__name__,
        }
        for i, row in enumerate(rows)
    ]
    return records


def policy_pairs_from_samples(records: list[dict[str, Any]], max_pairs_per_prompt: int, seed: int):
    """(better, worse) pairs of one prompt's samples, at most `max_pairs_per_prompt` per prompt."""
    import random

    rng = random.Random(seed)
    pairs, mixed = [], 0
    for record in records:
        scored = [
            (s, t) for s, t in zip(record["scores"], record["completions"], strict=True) if s is not None
        ]
        candidates = sorted(
            {
                (better, worse)
                for sb, better in scored
                for sw, worse in scored
                if sb > sw and better.strip() and worse.strip()
            }
        )
        if not candidates:
            continue
        mixed += 1
        for better, worse in rng.sample(candidates, min(max_pairs_per_prompt, len(candidates))):
            pairs.append(
                {
                    "prompt": record["prompt"],
                    "chosen": [{"role": "assistant", "content": better}],
                    "rejected": [{"role": "assistant", "content": worse}],
                }
            )
    return pairs, mixed


def sample_policy_pairs(ctx: StageContext, stage: RewardModelStage, train):
    """(better, worse) pairs of the policy's own samples on training prompts, as conversational rows."""
    from datasets import Dataset

    records = sample_policy(ctx, stage, train)
    pairs, mixed = policy_pairs_from_samples(records, stage.policy_pairs.max_pairs_per_prompt, ctx.seed)
    stats = {"prompts": len(records), "prompts_with_a_difference": mixed, "pairs": len(pairs)}
    logger.info(
        "policy pairs: %d pairs from %d of %d prompts whose samples differ under %s",
        len(pairs),
        mixed,
        len(records),
        records[0]["gold"] if records else "the gold reward",
    )
    return Dataset.from_list(pairs) if pairs else None, stats


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
            resolve_policy_gold(self.stage, self.index, self.train.column_names, self.recipe_dir)
        self.check_trainer_args(**REWARD_MODEL_DEFAULTS)
        if "prompt" in self.train.column_names:  # a prompt alone must leave room for its responses
            self.check_prompts_fit(self.train["prompt"], new_tokens=1)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        return run_reward_model(ctx, self.train, self.held_out)


def run_reward_model(ctx: StageContext, train, held_out) -> dict[str, Any]:
    from peft import LoraConfig
    from transformers import set_seed
    from trl import RewardTrainer

    stage: RewardModelStage = ctx.stage  # type: ignore[assignment]
    policy_stats = None
    if stage.policy_pairs is not None:  # sampled before the reward model loads: one model at a time
        from datasets import concatenate_datasets

        policy_pairs, policy_stats = sample_policy_pairs(ctx, stage, train)
        if policy_pairs is not None:
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
    )

    callbacks, stop = stage_callbacks(ctx)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )
    batch_size, max_length = args.per_device_eval_batch_size, args.max_length
    results: dict[str, Any] = {"train_rows": len(train), "init_base": base if stage.init_from else None}
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
