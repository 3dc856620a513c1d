"""Preference pairs from the policy's own samples, labelled by a labeller: the reward_model stage's `policy_pairs`.

The synthetic-labeller setup of Gao et al. 2022 ("Scaling laws for reward model over-optimization"): a
gold reward stands in for the human labeller. It never trains anything; it only labels comparisons.
1. The policy (an sft stage's adapter) samples `samples` completions for each of `prompts` training
   prompts; the labeller (`gold`, any reward spec: a built-in, a user's script, a judge model) scores
   every sample (`score_completions`, as TRL would call it).
2. Pairs: of each prompt's samples, up to `max_pairs_per_prompt` pairs the labeller tells apart (a
   tie carries no preference, and a sample the labeller scores None is left out).
3. Labels: without noise, the better sample by the labeller is `chosen`. With `tau` (or
   `disagreement`, from which tau is solved on the pairs drawn) a pair (a, b) is labelled a over b with
   probability sigmoid((gold(a) - gold(b)) / tau), Bradley-Terry noise: close pairs are labelled
   almost at random, clear ones almost always right, as people label. The realised share of labels
   that disagree with the noiseless labeller goes to the stage's results.

With prompt-only data (no `chosen`/`rejected` columns) the reward model learns from these pairs alone,
and its held-out pairs are the policy's samples on `eval_examples` test prompts, labelled without
noise: held-out pairwise accuracy is agreement with the gold's own preference.

Bad labellers stop the run early (exit 2, naming `stages[i].policy_pairs.gold`): `check_labeller`
calls the labeller on a few texts before any model loads (one that raises, returns the wrong number
of scores, or gives the data's reference responses and some degenerate texts all one score), and a
labeller that gives every sample of the policy one score stops the stage before a pair is written.
"""

from __future__ import annotations

import json
import logging
import math
import random
from typing import Any

from ntp_rl.config import RewardModelStage
from ntp_rl.errors import UserError
from ntp_rl.stages.common import ADAPTER_DIR, StageContext, check_stage_adapter

logger = logging.getLogger(__name__)

POLICY_SAMPLES_FILE = "policy_samples.jsonl"  # the training prompts' samples and their gold scores
HELDOUT_SAMPLES_FILE = "policy_samples_heldout.jsonl"  # prompt-only data: the held-out prompts'
# Data columns holding a reference response, tried in this order: texts a sane labeller scores apart
# from degenerate ones, for the pre-flight check.
REFERENCE_COLUMNS = ("chosen", "rejected", "completion", "solution")
PROBE_ROWS = 4  # rows of the data whose reference responses the pre-flight check scores


def is_prompt_only(columns: list[str]) -> bool:
    """Prompts without preference pairs: the reward model learns from policy pairs alone."""
    return "prompt" in columns and not {"chosen", "rejected"} <= set(columns)


def _label(index: int) -> str:
    return f"stages[{index}].policy_pairs.gold"


def resolve_policy_gold(stage: RewardModelStage, index: int, columns: list[str], recipe_dir):
    """`policy_pairs.gold` resolved and checked against the data's columns (UserError if not)."""
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


def _text(value: Any) -> str:
    """A response column's value as text: a string, or the last message's content."""
    if isinstance(value, list):
        return str(value[-1].get("content", "")) if value and isinstance(value[-1], dict) else ""
    return "" if value is None else str(value)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def check_labeller(gold, stage: RewardModelStage, index: int, rows) -> None:
    """Call the labeller on a few texts before any model loads; a UserError naming it if it is unusable.

    The texts, for the first rows of the data: its reference responses (`chosen`, `rejected`,
    `completion` or `solution`) and three degenerate replies (empty, the prompt echoed, one word
    repeated), each with its row's columns, as TRL passes them. Unusable: it raises, returns the wrong
    number of scores, or (where the data has reference responses) gives every text the same score or
    none: it could not tell any two samples apart.
    """
    from ntp_rl.rewards.scoring import score_completions

    rows = rows.select(range(min(PROBE_ROWS, len(rows))))
    references = [c for c in REFERENCE_COLUMNS if c in rows.column_names]
    columns = [c for c in rows.column_names if c not in ("prompt", "chosen", "rejected")]
    prompts, texts, row_of = [], [], []
    for i, row in enumerate(rows):
        prompt = row["prompt"]
        if not isinstance(prompt, list):
            prompt = [{"role": "user", "content": str(prompt)}]
        for text in [_text(row[c]) for c in references] + ["", _prompt_text(prompt), "good " * 30]:
            prompts.append(prompt)
            texts.append(text)
            row_of.append(i)
    label = f"{_label(index)} ({stage.policy_pairs.gold.describe()})"
    try:
        (scores,) = score_completions(
            [gold],
            [1.0],
            prompts,
            texts,
            [list(range(len(t.split()))) for t in texts],  # word positions stand in for token ids
            {c: [rows[c][i] for i in row_of] for c in columns},
        ).per_reward
    except Exception as exc:  # a labeller's own error, whatever its type
        raise UserError(
            f"{label}: the labeller failed on {len(texts)} probe texts before any model was loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    present = {s for s in scores if s is not None}
    if references and len(present) < 2:
        what = f"the same score {next(iter(present)):g}" if present else "no score (None)"
        raise UserError(
            f"{label}: the labeller gives {what} to every one of {len(texts)} probe texts (the data's "
            f"{', '.join(references)} responses of {len(rows)} rows, an empty reply, the prompt echoed, "
            "a word repeated): it cannot prefer one sample to another. Check that it reads the "
            "completions and returns one score per completion"
        )


# --------------------------------------------------------------------------------------------
# Sampling the policy


def sample_policy(ctx: StageContext, stage: RewardModelStage, train, held_out=None) -> dict[str, list[dict]]:
    """The policy's samples with their gold scores, one record per prompt: {"train": [...]} and, with
    `held_out` prompts, {"heldout": [...]}.

    The main process samples and writes them to `<stage>/policy_samples.jsonl` (and
    `policy_samples_heldout.jsonl`): prompt, completions, scores, the row's reference response and its
    score where the data has one. Every process reads them from there, and so does a resumed stage
    instead of sampling again.
    """
    from accelerate import PartialState

    files = {"train": ctx.stage_dir / POLICY_SAMPLES_FILE}
    if held_out is not None:
        files["heldout"] = ctx.stage_dir / HELDOUT_SAMPLES_FILE
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:  # else written whole (renamed from .partial) by an earlier attempt
        if ctx.is_main_process:
            sets = {"train": train, "heldout": held_out}
            records = _sample_and_score(ctx, stage, {name: sets[name] for name in missing})
            for name in missing:
                partial = files[name].with_name(files[name].name + ".partial")
                partial.write_text("".join(json.dumps(r) + "\n" for r in records[name]), encoding="utf-8")
                partial.rename(files[name])
        PartialState().wait_for_everyone()
    else:
        logger.info(
            "policy pairs: samples read from %s (sampled before the stage was resumed)", ctx.stage_dir
        )
    return {
        name: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for name, path in files.items()
    }


def _sample_and_score(ctx: StageContext, stage: RewardModelStage, sets: dict[str, Any]) -> dict[str, list]:
    """Sample the policy on each set of rows ("train": `prompts` of them, shuffled; "heldout": all) and
    score the samples and the rows' reference responses with the labeller, loading the policy once."""
    from peft import PeftModel
    from tqdm.auto import tqdm

    from ntp_rl.generation import Decoding, generate, merged_copy
    from ntp_rl.models import load_causal_lm, load_tokenizer
    from ntp_rl.rewards.scoring import score_completions

    settings = stage.policy_pairs
    any_rows = next(iter(sets.values()))
    gold = resolve_policy_gold(stage, ctx.index, any_rows.column_names, ctx.recipe_dir)
    adapter = check_stage_adapter(
        ctx.run_dir / settings.policy / ADAPTER_DIR, f"stages[{ctx.index}].policy_pairs.policy"
    )
    trust = ctx.recipe.model.trust_remote_code
    tokenizer = load_tokenizer(ctx.base_model_path, trust)
    policy = PeftModel.from_pretrained(load_causal_lm(ctx.base_model_path, ctx.dtype, trust), str(adapter))
    sampler = merged_copy(policy)
    del policy
    n = settings.samples
    decoding = Decoding(
        num_samples=n, temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, seed=ctx.seed
    )
    out = {}
    for name, rows in sets.items():
        if name == "train":
            rows = rows.shuffle(seed=ctx.seed).select(range(min(settings.prompts, len(rows))))
        with tqdm(total=len(rows), desc=f"policy pairs ({name})", unit="prompt") as bar:
            generations = generate(
                sampler, tokenizer, list(rows["prompt"]), decoding, settings.batch_size, bar.update
            )
        reference = next((c for c in ("completion", "solution") if c in rows.column_names), None)
        texts = [text for g in generations for text in g.texts]
        ids = [i for g in generations for i in g.token_ids]
        per_row = [n] * len(rows)
        if reference is not None:  # scored beside the samples: a fallback pair when the samples all tie
            texts += [_text(v) for v in rows[reference]]
            ids += [tokenizer(_text(v), add_special_tokens=False)["input_ids"] for v in rows[reference]]
            per_row += [1] * len(rows)
        order = [i % len(rows) for i, count in enumerate(per_row) for _ in range(count)]  # row of each text
        columns = [c for c in rows.column_names if c not in ("chosen", "rejected")]
        values = {c: rows[c] for c in columns}
        (scores,) = score_completions(
            [gold],
            [1.0],  # one reward: only its own values are used, not a weighted sum
            [values["prompt"][i] for i in order],
            texts,
            ids,
            {c: [values[c][i] for i in order] for c in columns if c != "prompt"},
        ).per_reward
        records = []
        for i, row in enumerate(rows):
            record = {
                "prompt": row["prompt"],
                "completions": texts[i * n : (i + 1) * n],
                "scores": scores[i * n : (i + 1) * n],
                "gold": gold.__name__,
            }
            if reference is not None:
                record["reference"] = texts[len(rows) * n + i]
                record["reference_score"] = scores[len(rows) * n + i]
            records.append(record)
        out[name] = records
    del sampler
    return out


# --------------------------------------------------------------------------------------------
# Pairs and labels


def draw_pairs(records: list[dict[str, Any]], max_pairs_per_prompt: int, seed: int):
    """(prompt, better, worse, gold margin) of each prompt's samples the labeller tells apart, at most
    `max_pairs_per_prompt` per prompt; and the number of prompts that had such a pair."""
    rng = random.Random(seed)
    drawn, mixed = [], 0
    for record in records:
        scored = [
            (s, t) for s, t in zip(record["scores"], record["completions"], strict=True) if s is not None
        ]
        candidates = sorted(
            {
                (better, worse, sb - sw)
                for sb, better in scored
                for sw, worse in scored
                if sb > sw and better.strip() and worse.strip()
            }
        )
        if not candidates:
            continue
        mixed += 1
        for better, worse, margin in rng.sample(candidates, min(max_pairs_per_prompt, len(candidates))):
            drawn.append((record["prompt"], better, worse, margin))
    return drawn, mixed


def _expected_disagreement(margins: list[float], tau: float) -> float:
    """Mean over the pairs of sigmoid(-margin / tau): the chance that a label goes against the gold."""
    return sum(1.0 / (1.0 + math.exp(min(m / tau, 700.0))) for m in margins) / len(margins)


def tau_for_disagreement(margins: list[float], disagreement: float) -> float:
    """The Bradley-Terry tau at which the labels of pairs with these gold margins disagree with the gold
    `disagreement` of the time, on average (the rate rises with tau, from 0 toward 0.5)."""
    if not 0.0 < disagreement < 0.5:
        raise ValueError(f"disagreement must be between 0 and 0.5, got {disagreement}")
    low, high = 1e-9, 1.0
    while _expected_disagreement(margins, high) < disagreement:
        low, high = high, high * 10.0
    for _ in range(200):  # bisection in log space: tau spans many orders of magnitude
        middle = math.sqrt(low * high)
        if _expected_disagreement(margins, middle) < disagreement:
            low = middle
        else:
            high = middle
    return math.sqrt(low * high)


def policy_pairs_from_samples(
    records: list[dict[str, Any]],
    max_pairs_per_prompt: int,
    seed: int,
    tau: float | None = None,
    disagreement: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Labelled pairs of one prompt's samples as conversational rows, and what the labelling did.

    Without `tau` and `disagreement` the labels are the gold's own ranking; with either, Bradley-Terry
    noise (see the module docstring), drawn from its own seeded stream, so the pairs drawn do not
    depend on the noise. Stats: prompts, prompts with a pair, pairs, tau, the expected and the
    realised share of labels that disagree with the noiseless labeller.
    """
    drawn, mixed = draw_pairs(records, max_pairs_per_prompt, seed)
    margins = [margin for *_, margin in drawn]
    if disagreement is not None and margins:
        tau = tau_for_disagreement(margins, disagreement)
    noise = random.Random(f"{seed}/labels")
    pairs, flipped = [], 0
    for prompt, better, worse, margin in drawn:
        if tau is not None and noise.random() < 1.0 / (1.0 + math.exp(min(margin / tau, 700.0))):
            better, worse = worse, better
            flipped += 1
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": better}],
                "rejected": [{"role": "assistant", "content": worse}],
            }
        )
    stats: dict[str, Any] = {
        "prompts": len(records),
        "prompts_with_a_difference": mixed,
        "pairs": len(pairs),
        "noise": "bradley_terry" if tau is not None else "none",
        "tau": tau,
        "target_disagreement": disagreement,
        "expected_disagreement": _expected_disagreement(margins, tau) if tau is not None and margins else 0.0,
        "realised_disagreement": flipped / len(pairs) if pairs else None,
    }
    return pairs, stats


def with_references(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records whose reference response (the data's) joins the policy's samples as one more candidate."""
    return [
        {
            **r,
            "completions": [*r["completions"], r["reference"]],
            "scores": [*r["scores"], r["reference_score"]],
        }
        for r in records
        if "reference" in r
    ]


def sample_policy_pairs(ctx: StageContext, stage: RewardModelStage, train, held_out=None):
    """Labelled pairs of the policy's samples on training prompts (conversational rows, or None when
    there are none), their stats, and with prompt-only data the held-out pairs (labelled without noise).

    A policy whose samples of every prompt tie under the labeller (a degenerate policy, or a random
    one in a `--smoke` run) gives no pair; with prompt-only data the data's reference responses then
    join the samples as candidates, with a warning, so that the stage has pairs to learn from.
    """
    from datasets import Dataset

    settings = stage.policy_pairs
    samples = sample_policy(ctx, stage, train, held_out)
    records = samples["train"]
    pairs, stats = policy_pairs_from_samples(
        records, settings.max_pairs_per_prompt, ctx.seed, settings.tau, settings.disagreement
    )
    if not pairs and is_prompt_only(train.column_names):  # nothing else to train on
        logger.warning(
            "policy pairs: no two samples of any prompt differ under %s; pairing each prompt's reference "
            "response with its samples instead (the reward model will not learn the policy's own "
            "comparisons)",
            records[0]["gold"] if records else "the labeller",
        )
        pairs, stats = policy_pairs_from_samples(
            with_references(records),
            settings.max_pairs_per_prompt,
            ctx.seed,
            settings.tau,
            settings.disagreement,
        )
        stats["reference_fallback"] = True
        if not pairs:
            present = {s for r in records for s in [*r["scores"], r.get("reference_score")] if s is not None}
            what = f"the same score {next(iter(present)):g}" if len(present) == 1 else "no score (None)"
            if len(present) > 1:
                what = "no two texts of one prompt different scores"
            raise UserError(
                f"{_label(ctx.index)} ({settings.gold.describe()}): the labeller gives {what} to the "
                f"policy's samples on {len(records)} prompts (and to the data's reference responses): no "
                "pair can be labelled, and the data has no pairs of its own. Check the labeller, or the "
                "policy it is given to rank"
            )
    logger.info(
        "policy pairs: %d pairs from %d of %d prompts whose samples differ under %s (labels: %s%s)",
        stats["pairs"],
        stats["prompts_with_a_difference"],
        stats["prompts"],
        records[0]["gold"] if records else "the labeller",
        stats["noise"],
        f", tau {stats['tau']:.4g}, {100 * stats['realised_disagreement']:.1f} % against the gold"
        if stats["tau"] is not None and pairs
        else "",
    )
    held_out_pairs = None
    if "heldout" in samples:
        heldout_records = samples["heldout"]
        every = settings.samples * (settings.samples - 1) // 2  # all of a prompt's pairs, without noise
        rows, heldout_stats = policy_pairs_from_samples(heldout_records, every, ctx.seed)
        if not rows:
            rows, heldout_stats = policy_pairs_from_samples(with_references(heldout_records), every, ctx.seed)
        stats["heldout_pairs"] = heldout_stats["pairs"]
        held_out_pairs = Dataset.from_list(rows) if rows else None
    return (Dataset.from_list(pairs) if pairs else None), stats, held_out_pairs
