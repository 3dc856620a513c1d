"""Per-checkpoint numbers: metric modules, lengths, rewards, KL and NLL, each with a 95 % interval.

Metric modules are local `evaluate` modules (`eval/metrics/<name>/<name>.py`), loaded by path with
`evaluate.load` (offline). The harness hands a module the per-item inputs its features name:

    correct        list[list[bool]]        verdict of each sample of each item (answer check)
    answers        list[list[str]]         extracted answer of each sample ("" when unreadable:
                                           Arrow cannot type a column that is all None)
    parse_failed   list[list[bool]]        the answer could not be read at all
    num_tokens     list[list[int]]         completion length in tokens
    truncated      list[list[bool]]        stopped at max_new_tokens without EOS

and reads back `{score: value, ..., "per_item": {score: [value per item]}}`; the 95 % interval of
each score is a percentile bootstrap over items of `per_item` (`ntp_rl.stats.bootstrap_ci`). Length
statistics, mean reward per scorer, KL to the base and reference NLL are plain functions here.

`summarise` also writes the flat keys the eval stage has always reported (`greedy_accuracy`,
`sampled_pass1`, `pass_at_k`, ...), derived from the module scores, so older readers keep working.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ntp_rl.errors import UserError
from ntp_rl.evaluation.suite import EvalSuite, MetricSpec, resolve_metric_path
from ntp_rl.stats import bootstrap_ci, bootstrap_ratio_ci

logger = logging.getLogger(__name__)

ITEM_FIELDS = ("correct", "answers", "parse_failed", "num_tokens", "truncated")
LENGTH_HISTOGRAM_BINS = 20


class MetricModules:
    """The suite's metric modules, loaded once; `compute` runs them on one checkpoint and mode."""

    def __init__(self, suite: EvalSuite, suite_dir: Path | None):
        import evaluate

        self.loaded: list[tuple[MetricSpec, Any, Path]] = []
        for index, spec in enumerate(suite.metrics):
            where = f"metrics[{index}]"
            path = resolve_metric_path(spec, suite_dir, where)
            try:
                module = evaluate.load(str(path), keep_in_memory=True)
            except Exception as exc:
                raise UserError(
                    f"{where} ({path}): evaluate.load failed: {type(exc).__name__}: {exc}"
                ) from None
            features = module.features if isinstance(module.features, dict) else module.features[0]
            unknown = [name for name in features if name not in ITEM_FIELDS]
            if unknown:
                raise UserError(
                    f"{where} ({path}): the module asks for input(s) {unknown}; the harness provides "
                    f"{', '.join(ITEM_FIELDS)}"
                )
            self.loaded.append((spec, module, path))

    def paths(self) -> dict[str, str]:
        return {spec.label: str(path) for spec, _, path in self.loaded}

    def compute(self, mode: str, fields: dict[str, list], seed: int) -> dict[str, dict[str, Any]]:
        scores: dict[str, dict[str, Any]] = {}
        for spec, module, path in self.loaded:
            if mode not in spec.modes:
                continue
            features = module.features if isinstance(module.features, dict) else module.features[0]
            inputs = {name: fields[name] for name in features}
            if "answers" in inputs:
                inputs["answers"] = [["" if a is None else a for a in item] for item in inputs["answers"]]
            try:
                output = module.compute(**inputs, **spec.kwargs)
            except (TypeError, ValueError) as exc:
                raise UserError(f"metric {spec.label} ({path}) on {mode} completions: {exc}") from None
            per_item = output.pop("per_item", {}) if isinstance(output, dict) else {}
            for name, value in (output or {}).items():
                entry: dict[str, Any] = {"value": _number(value), "metric": spec.label}
                if name in per_item:
                    entry["ci"] = list(bootstrap_ci(per_item[name], seed=seed))
                scores[name] = entry
        return scores


def _number(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def length_stats(num_tokens: list[list[int]], truncated: list[list[bool]], seed: int) -> dict[str, Any]:
    flat = np.asarray([t for item in num_tokens for t in item], dtype=float)
    per_item_truncated = [sum(item) / len(item) for item in truncated]
    # Integer-aligned bins (lengths are token counts), at most LENGTH_HISTOGRAM_BINS of them.
    step = max(1, math.ceil((flat.max() + 1) / LENGTH_HISTOGRAM_BINS))
    counts, edges = np.histogram(flat, bins=np.arange(0, flat.max() + step + 1, step))
    return {
        "mean": float(flat.mean()),
        "median": float(np.median(flat)),
        "p90": float(np.quantile(flat, 0.9)),
        "max": int(flat.max()),
        "truncation_rate": float(np.mean(per_item_truncated)),
        "truncation_rate_ci": list(bootstrap_ci(per_item_truncated, seed=seed)),
        "histogram": {"counts": counts.tolist(), "edges": [int(e) for e in edges]},
    }


def reward_stats(
    rewards: dict[str, list[list[float | None]]],
    seed: int,
    correct: list[list[bool]] | None = None,
    gold: str | None = None,
) -> dict[str, Any]:
    """Mean reward per scorer: per item the mean of its samples' non-None rewards, then over items.

    With the samples' verdicts (`correct`), also each scorer's agreement with them (`ranking_agreement`);
    without verdicts, each other scorer's agreement with the `gold` scorer's ranking, when there is one.
    """
    reference = correct
    if reference is None and gold is not None and gold in rewards:
        reference = rewards[gold]  # type: ignore[assignment]
    out: dict[str, Any] = {}
    for name, per_sample in rewards.items():
        values = [[v for v in item if v is not None] for item in per_sample]
        per_item = [sum(v) / len(v) for v in values if v]
        total = sum(len(item) for item in per_sample)
        scored = sum(len(v) for v in values)
        out[name] = {
            "value": float(np.mean(per_item)) if per_item else math.nan,
            "ci": list(bootstrap_ci(per_item, seed=seed)),
            "coverage": scored / total if total else 0.0,  # share of samples the reward applied to
        }
        if correct is not None and _is_the_verdict(per_sample, correct):
            continue
        if reference is not None and not (correct is None and name == gold):
            agreement = ranking_agreement(per_sample, reference, seed)
            if agreement is not None:
                out[name]["ranking_agreement"] = {
                    **agreement,
                    "against": "correct" if correct is not None else gold,
                }
    return out


def _is_the_verdict(rewards: list[list[float | None]], correct: list[list[bool]]) -> bool:
    """True when a scorer is 1 on every right sample and 0 on every wrong one (the checker itself)."""
    return all(
        r is None or r == float(c)
        for item_rewards, item_correct in zip(rewards, correct, strict=True)
        for r, c in zip(item_rewards, item_correct, strict=True)
    )


def ranking_agreement(
    rewards: list[list[float | None]], reference: list[list[Any]], seed: int
) -> dict[str, Any] | None:
    """How often a scorer ranks a right sample above a wrong one of the same prompt (ties count half).

    `reference` is each sample's verdict (True right, False wrong) or a gold score: over every pair of
    samples of one item that the reference orders (a right and a wrong one; a higher and a lower gold
    score), both scored, per item the share of pairs the scorer orders as the reference does, then the
    mean over items that have such a pair, with a bootstrap interval over those items. 0.5 is chance;
    it is what GRPO needs from a reward model (it compares samples of one prompt), and it is measured
    on the policy's own samples, not on held-out preference pairs. None when no item has such a pair
    (greedy decoding, or every sample of each item alike).
    """
    per_item, pairs = [], 0
    for item_rewards, item_reference in zip(rewards, reference, strict=True):
        scored = [
            (g, r)
            for r, g in zip(item_rewards, item_reference, strict=True)
            if r is not None and g is not None
        ]
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for ga, a in scored for gb, b in scored if ga > gb]
        if not wins:
            continue
        per_item.append(sum(wins) / len(wins))
        pairs += len(wins)
    if not per_item:
        return None
    return {
        "value": float(np.mean(per_item)),
        "ci": list(bootstrap_ci(per_item, seed=seed)),
        "items": len(per_item),
        "pairs": pairs,
    }


def token_mean_stats(per_item_tokens: list[list[float]], seed: int) -> dict[str, Any]:
    """A per-token mean over all tokens, with a bootstrap interval that resamples items."""
    sums = [float(sum(values)) for values in per_item_tokens]
    counts = [len(values) for values in per_item_tokens]
    total = sum(counts)
    return {
        "value": sum(sums) / total if total else math.nan,
        "ci": list(bootstrap_ratio_ci(sums, counts, seed=seed)),
        "num_tokens": total,
        "num_items": len(per_item_tokens),
    }


# Module scores -> the flat keys the eval stage has always reported.
_FLAT_KEYS = {
    ("greedy", "accuracy"): "greedy_accuracy",
    ("greedy", "extraction_failure_rate"): "greedy_parse_failure_rate",
    ("sampled", "accuracy"): "sampled_pass1",
    ("sampled", "extraction_failure_rate"): "sampled_parse_failure_rate",
}


def summarise(
    results: dict[str, dict[str, Any]],
    modules: MetricModules,
    measures: dict[str, Any],
    seed: int,
    gold: str | None = None,
) -> dict[str, Any]:
    """One checkpoint's summary from its per-item results (`results[mode][field]`) and measures.

    `gold`: the scorer a task without verdicts is measured by (ranking agreement is against it)."""
    summary: dict[str, Any] = {"metrics": {}, "lengths": {}, "rewards": {}}
    for mode, fields in results.items():
        scores = modules.compute(mode, fields, seed)
        summary["metrics"][mode] = scores
        for name, entry in scores.items():
            flat = _FLAT_KEYS.get((mode, name))
            if flat:
                summary[flat] = entry["value"]
                if "ci" in entry:
                    summary[f"{flat}_ci"] = entry["ci"]
            for prefix, key in (("pass@", "pass_at_k"), ("maj@", "maj_at_k")):
                if mode == "sampled" and name.startswith(prefix):
                    k = name.removeprefix(prefix)
                    summary.setdefault(key, {})[k] = entry["value"]
                    summary.setdefault(f"{key}_ci", {})[k] = entry.get("ci")
        lengths = length_stats(fields["num_tokens"], fields["truncated"], seed)
        summary["lengths"][mode] = lengths
        summary[f"{mode}_mean_tokens"] = lengths["mean"]
        summary[f"{mode}_truncation_rate"] = lengths["truncation_rate"]
        summary[f"{mode}_truncation_rate_ci"] = lengths["truncation_rate_ci"]
        summary["rewards"][mode] = reward_stats(fields.get("rewards", {}), seed, fields.get("correct"), gold)
    for name, per_item in measures.items():
        summary[name] = {**token_mean_stats(per_item["values"], seed), "on": per_item.get("on")}
    return summary
