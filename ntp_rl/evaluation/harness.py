"""The eval harness: a suite and some checkpoints -> a report, used by `ntp-rl eval` and the eval stage.

    data (suite.data, split, max_examples)
      -> per base model: load it once, its checkpoints' adapters beside it (checkpoints.LoadedGroup)
           -> per checkpoint and decoding mode: batched, length-sorted generation (generation.py)
                -> answer check (correct / extracted / parse failure) and every scorer (reward specs)
           -> per adapter checkpoint: KL to the base on its own completions; per checkpoint: NLL of
              reference text (logprobs.py)
      -> metric modules and statistics (metrics.py), paired comparisons and flips (report.py)
      -> report.json / report.md / report.html / samples.jsonl

Every checkpoint sees the same prompts, chat template, decoding settings and seeds, and sampling is
seeded per batch, so the numbers do not depend on which checkpoint ran first.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ntp_rl.checkpoints import BASE, Checkpoint, LoadedGroup, group_by_base, reference_label
from ntp_rl.common import package_versions, utc_now
from ntp_rl.dtypes import describe_choice, dtype_choice
from ntp_rl.errors import UserError
from ntp_rl.evaluation.metrics import MetricModules, summarise
from ntp_rl.evaluation.overoptimisation_curve import read_curve
from ntp_rl.evaluation.report import (
    REPORT_FORMAT,
    check_out_dir,
    extra_split_section,
    paired_sections,
    prompt_hashes,
    write_report,
)
from ntp_rl.evaluation.suite import EvalSuite, ExtraSplit, KlSettings

logger = logging.getLogger(__name__)

TRAINING_CURVE_KEYS = ("reward", "loss")  # besides every `rewards/<name>/mean`


def load_items(suite: EvalSuite, data_base_dir: Path | None, extra: ExtraSplit | None = None) -> Any:
    """The rows (prompt, answer, ...) of the suite's split, or of one of its `extra_splits`, checked
    before any model loads."""
    from ntp_rl.data import load_rows, require_columns

    split = suite.split if extra is None else extra.split
    limit = suite.max_examples if extra is None or extra.max_examples is None else extra.max_examples
    rows = load_rows(suite.data, split, suite.data_seed, data_base_dir)
    needed = ["prompt", "answer"] if suite.answer_check != "none" else ["prompt"]
    require_columns(rows, needed, f"suite {suite.name} split {split!r}")
    if limit is not None and len(rows) > limit:
        rows = rows.select(range(limit))
    # Reference NLL (like KL and the probes) is measured on the main split only.
    reference = suite.reference_nll if extra is None else None
    if reference is not None and reference.column not in rows.column_names:
        raise UserError(
            f"suite {suite.name}: reference_nll.column {reference.column!r} is not a column of "
            f"the data (columns: {rows.column_names}); name another column or set reference_nll: null"
        )
    if suite.answer_check == "math":
        from ntp_rl.rewards.math import check_gold_answers

        check_gold_answers([str(a) for a in rows["answer"]])
    return rows


def load_extra_items(suite: EvalSuite, data_base_dir: Path | None, main_rows: Any) -> dict[str, Any]:
    """{split: rows} of the suite's `extra_splits`; each must have the main split's columns, which the
    scorers were resolved against."""
    out = {}
    for extra in suite.extra_splits:
        rows = load_items(suite, data_base_dir, extra)
        missing = [c for c in main_rows.column_names if c not in rows.column_names]
        if missing:
            raise UserError(
                f"suite {suite.name}: extra_splits {extra.split!r} lacks column(s) {missing} of split "
                f"{suite.split!r} (it has {rows.column_names}); the scorers read every column"
            )
        out[extra.split] = rows
    return out


def prompt_items(prompts: list[Any], rows: Any) -> dict[str, Any]:
    """The `items` fields of a report besides `results`: prompts, gold answers and prompt hashes."""
    answers = rows["answer"] if "answer" in rows.column_names else [None] * len(prompts)
    return {
        "prompts": prompts,
        "gold": [None if a is None else str(a) for a in answers],
        "prompt_sha256": prompt_hashes(prompts),
    }


def resolve_scorers(suite: EvalSuite, columns: list[str], base_dir: Path | None) -> list[Any]:
    from ntp_rl.rewards.registry import resolve_rewards

    return resolve_rewards(suite.scorers, base_dir, where="scorers", available_columns=columns)


def gold_scorer(suite: EvalSuite, scorers: list[Any]) -> str | None:
    """The name of the suite's first `gold: true` scorer (what a task without answers is measured by)."""
    return next((r.__name__ for r, spec in zip(scorers, suite.scorers, strict=True) if spec.gold), None)


def _decodings(suite: EvalSuite) -> list[tuple[str, Any]]:
    from ntp_rl.generation import Decoding

    g = suite.generation
    out = []
    if g.greedy:
        out.append(("greedy", Decoding(1, 0.0, 1.0, g.max_new_tokens, g.seed)))
    if g.num_samples:
        out.append(("sampled", Decoding(g.num_samples, g.temperature, g.top_p, g.max_new_tokens, g.seed)))
    return out


SCORE_CHUNK = 64  # completions per call of a scorer


def _score(generations, rows, scorers, check_answers: bool = True) -> dict[str, Any]:
    """Per-item fields of one checkpoint and mode: verdicts, answers, lengths, rewards, texts.

    Without `check_answers` (a suite's `answer_check: none`) there are no verdicts or answers.
    """
    from ntp_rl.rewards.math import score_math_answer
    from ntp_rl.rewards.scoring import score_completions

    fields: dict[str, Any] = {
        "texts": [g.texts for g in generations],
        "num_tokens": [g.num_tokens for g in generations],
        "truncated": [g.truncated for g in generations],
        "rewards": {},
    }
    if check_answers:
        fields.update(correct=[], answers=[], parse_failed=[])
        for generation, gold in zip(generations, [str(a) for a in rows["answer"]], strict=True):
            scores = [score_math_answer(text, gold) for text in generation.texts]
            fields["correct"].append([s.correct for s in scores])
            fields["answers"].append([None if s.parse_failed else s.extracted for s in scores])
            fields["parse_failed"].append([s.parse_failed for s in scores])
    if scorers:
        # Each scorer over every completion, with the data's columns by keyword, as TRL calls rewards.
        counts = [len(g.texts) for g in generations]
        columns = {
            name: [value for value, n in zip(rows[name], counts, strict=True) for _ in range(n)]
            for name in rows.column_names
        }
        prompts = [p for p, n in zip(rows["prompt"], counts, strict=True) for _ in range(n)]
        prompts = [p if isinstance(p, list) else [{"role": "user", "content": str(p)}] for p in prompts]
        texts = [t for g in generations for t in g.texts]
        completion_ids = [ids for g in generations for ids in g.token_ids]
        weights = [1.0] * len(scorers)  # the report shows each scorer's values, not their weighted sum
        values: list[list[float | None]] = [[] for _ in scorers]
        # In calls of at most SCORE_CHUNK completions, about a training step's worth: a reward's
        # per-call timeout (`timeout_seconds`) was set for calls of that size, not for all of an
        # eval's samples at once, which a learned reward model can take far longer to score.
        for start in range(0, len(texts), SCORE_CHUNK):
            chunk = slice(start, start + SCORE_CHUNK)
            scores = score_completions(
                scorers,
                weights,
                prompts[chunk],
                texts[chunk],
                completion_ids[chunk],
                {name: column[chunk] for name, column in columns.items()},
            )
            for scorer_values, chunk_values in zip(values, scores.per_reward, strict=True):
                scorer_values.extend(chunk_values)
        for scorer, scorer_values in zip(scorers, values, strict=True):
            per_item, start = [], 0
            for n in counts:
                per_item.append(scorer_values[start : start + n])
                start += n
            fields["rewards"][scorer.__name__] = per_item
    return fields


def training_curves(stage_dir: Path | None) -> dict[str, list[list[float]]]:
    """Reward (and loss) curves of a run stage from its metrics.jsonl: {key: [[step, value], ...]}."""
    if stage_dir is None or not (stage_dir / "metrics.jsonl").is_file():
        return {}
    curves: dict[str, list[list[float]]] = {}
    for line in (stage_dir / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        step = record.get("step")
        for key, value in record.items():
            wanted = key in TRAINING_CURVE_KEYS or (key.startswith("rewards/") and key.endswith("/mean"))
            if wanted and isinstance(value, (int, float)) and isinstance(step, (int, float)):
                curves.setdefault(key, []).append([step, value])
    return curves


def _file_sha256(path: Path) -> str:
    files = sorted(path.glob("*.py")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    return package_versions("evaluate", "numpy")


def check_kl_to(suite: EvalSuite, checkpoints: Sequence[Checkpoint]) -> None:
    """`kl_to` names adapter checkpoints of this eval (refused before any model loads otherwise)."""
    by_label = {c.label: c for c in checkpoints}
    for ref in suite.kl_to:
        checkpoint = by_label.get(ref)
        if checkpoint is None:
            raise UserError(f"kl_to: {ref!r} is not a checkpoint of this eval ({list(by_label)})")
        if checkpoint.adapter is None:
            raise UserError(
                f"kl_to: {ref!r} is a plain model, not an adapter; KL to a base model is `kl_to_base`"
            )


def _kl_measure(suite, group, checkpoint, reference, results, prompt_ids, pad_id) -> dict[str, Any]:
    """Per-token KL(checkpoint || reference) on the checkpoint's own completions, grouped per item.

    The sampled completions when there are any (the distribution the checkpoint samples from), else
    the greedy ones; the first `max_examples` items, `samples_per_item` completions each.
    """
    from ntp_rl.evaluation.logprobs import per_token_kl

    subset = suite.kl_to_base or KlSettings()
    mode = "sampled" if "sampled" in results else "greedy"
    kl_items = subset.max_examples or len(prompt_ids)
    per_item = [item[: subset.samples_per_item] for item in results[mode]["token_ids"][:kl_items]]
    pairs = [(prompt_ids[i], ids) for i, item in enumerate(per_item) for ids in item]
    kl = per_token_kl(
        group.model,
        pairs,
        policy=functools.partial(group.active, checkpoint),
        reference=reference,
        pad_id=pad_id,
        batch_size=suite.score_batch_size,
    )
    grouped, start = [], 0
    for item in per_item:
        grouped.append([v for values in kl[start : start + len(item)] for v in values])
        start += len(item)
    return {"values": grouped, "on": f"{mode} completions (up to {subset.samples_per_item} per item)"}


def run_suite(
    suite: EvalSuite,
    checkpoints: Sequence[Checkpoint],
    out: Path,
    *,
    suite_file: Path | None = None,
    title: str | None = None,
    run: str | None = None,
    stage: str | None = None,
    settings: dict[str, Any] | None = None,
    data_base_dir: Path | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    is_main_process: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate `checkpoints` on `suite` and write the report into `out`; returns the report.

    `out` must not hold a report already, unless `overwrite` (the eval stage re-running an
    unfinished stage folder).
    """
    import torch
    from tqdm.auto import tqdm

    from ntp_rl.evaluation.logprobs import encode_reference, per_token_nll
    from ntp_rl.generation import encode_prompts, generate

    started = time.time()
    if is_main_process and not overwrite:
        check_out_dir(out)
    dtype_record = dtype_choice(dtype)  # `auto` -> float32 or bfloat16, measured on this machine
    dtype = dtype_record["resolved"]
    if dtype_record["requested"] == "auto" and is_main_process:
        logger.info(describe_choice(dtype_record))
    suite_dir = suite_file.parent if suite_file is not None else None
    rows = load_items(suite, data_base_dir)
    extra_rows = load_extra_items(suite, data_base_dir, rows)
    scorers = resolve_scorers(suite, rows.column_names, suite_dir or data_base_dir)
    gold = gold_scorer(suite, scorers)
    if suite.answer_check == "math":
        from ntp_rl.rewards.math import start_math_verify

        start_math_verify()  # its imports run beside the metric modules' and the model's loading
    modules = MetricModules(suite, suite_dir)
    prompts = list(rows["prompt"])
    decodings = _decodings(suite)
    seed = suite.generation.seed
    probe_inputs, probe_results = None, {}
    if suite.probes is not None:  # their data is read and checked before any model loads
        from ntp_rl.probes.run import prepare_inputs, probe_checkpoint

        probe_inputs = prepare_inputs(suite.probes, data_base_dir)

    labels = [c.label for c in checkpoints]
    sampled = suite.generation.sampled_checkpoints
    if sampled is not None and (unknown := [name for name in sampled if name not in labels]):
        raise UserError(
            f"generation.sampled_checkpoints: {unknown} are not checkpoints of this eval ({labels})"
        )

    check_kl_to(suite, checkpoints)

    def wanted(label: str, mode: str) -> bool:
        return mode != "sampled" or sampled is None or label in sampled

    results: dict[str, dict[str, Any]] = {label: {} for label in labels}
    extra_results: dict[str, dict[str, dict[str, Any]]] = {
        split: {label: {} for label in labels} for split in extra_rows
    }
    # (split name, rows, prompts); None is the main split. Extra splits get the same decodings.
    splits = [(None, rows, prompts)] + [(name, r, list(r["prompt"])) for name, r in extra_rows.items()]
    measures: dict[str, dict[str, Any]] = {label: {} for label in labels}
    template_hashes: dict[str, str | None] = {}
    groups = group_by_base(checkpoints)
    bar = tqdm(
        total=sum(wanted(label, mode) for label in labels for mode, _ in decodings)
        * sum(len(split_prompts) for _, _, split_prompts in splits),
        desc=f"eval {suite.name}",
        unit="prompt",
        disable=not is_main_process,
    )
    generation_seconds, completions = 0.0, 0
    for base, members in groups:
        group = LoadedGroup(base, members, dtype, trust_remote_code)
        tokenizer = group.tokenizer
        template = getattr(tokenizer, "chat_template", None)
        template_hashes[base] = hashlib.sha256(template.encode()).hexdigest() if template else None
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        prompt_ids = encode_prompts(tokenizer, prompts)
        reference_pairs = None
        if suite.reference_nll is not None:
            column = suite.reference_nll.column
            limit = suite.reference_nll.max_examples or len(prompts)
            reference_pairs = [
                encode_reference(tokenizer, prompt, str(text))
                for prompt, text in zip(prompts[:limit], rows[column][:limit], strict=True)
            ]
        for checkpoint in members:
            modes = [(mode, decoding) for mode, decoding in decodings if wanted(checkpoint.label, mode)]
            with group.for_generation(checkpoint, suite.generation.merge_adapters) as model:
                for mode, decoding in modes:
                    for split, split_rows, split_prompts in splits:
                        bar.set_postfix_str(f"{checkpoint.label} {mode}" + (f" {split}" if split else ""))
                        tick = time.time()
                        generations = generate(
                            model, tokenizer, split_prompts, decoding, suite.generation.batch_size, bar.update
                        )
                        generation_seconds += time.time() - tick
                        completions += sum(len(g.texts) for g in generations)
                        fields = _score(generations, split_rows, scorers, suite.answer_check != "none")
                        if split is None:
                            fields["token_ids"] = [g.token_ids for g in generations]  # for KL, then dropped
                            results[checkpoint.label][mode] = fields
                        else:
                            extra_results[split][checkpoint.label][mode] = fields
            if reference_pairs is not None:
                with group.active(checkpoint) as model:
                    nll = per_token_nll(model, reference_pairs, pad_id, suite.score_batch_size)
                measures[checkpoint.label]["reference_nll"] = {
                    "values": nll,
                    "on": suite.reference_nll.column,
                }
            if checkpoint.adapter is not None:
                kl_targets = [] if suite.kl_to_base is None else [(BASE, group.as_base)]
                kl_targets += [
                    (ref, functools.partial(group.active, member))
                    for ref in suite.kl_to
                    for member in members
                    if member.label == ref and ref != checkpoint.label
                ]
                for ref, reference in kl_targets:
                    measures[checkpoint.label][f"kl_to_{ref}"] = _kl_measure(
                        suite,
                        group,
                        checkpoint,
                        reference,
                        results[checkpoint.label],
                        prompt_ids,
                        pad_id,
                    )
            if probe_inputs is not None:
                with group.active(checkpoint) as model:
                    probe_results[checkpoint.label] = probe_checkpoint(
                        suite.probes,
                        probe_inputs,
                        model,
                        tokenizer,
                        control=checkpoint.label == reference_label(labels),  # the credit control, once
                        label=checkpoint.label,
                    )
        del group  # free the model before the next base loads
    bar.close()

    for label in labels:
        for fields in results[label].values():
            fields.pop("token_ids", None)
    summary = {label: summarise(results[label], modules, measures[label], seed, gold) for label in labels}
    beyond_ntp = None
    if probe_inputs is not None:
        from ntp_rl.probes.run import beyond_ntp_section

        adapters = {c.label: c.adapter is not None for c in checkpoints}
        results_in_order = {label: probe_results[label] for label in labels}
        beyond_ntp = beyond_ntp_section(
            suite.probes, results_in_order, summary, reference_label(labels), adapters
        )
    items = {**prompt_items(prompts, rows), "results": results}

    def keys(split_rows: Any) -> list[str] | None:  # what pairs an item with the main split's (same problem)
        return [str(k) for k in split_rows["key"]] if "key" in split_rows.column_names else None

    extra_splits = {
        split: extra_split_section(
            split,
            {**prompt_items(list(split_rows["prompt"]), split_rows), "results": extra_results[split]},
            {label: summarise(extra_results[split][label], modules, {}, seed, gold) for label in labels},
            main=(suite.split, keys(rows), results),
            keys=keys(split_rows),
            seed=seed,
            max_examples=suite.flip_examples,
        )
        for split, split_rows in extra_rows.items()
    }
    seconds = time.time() - started
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "title": title or suite.name,
        "run": run,
        "stage": stage,
        "suite": suite.name,
        "data_source": suite.data.source,
        "split": suite.split,
        "num_items": len(prompts),
        "settings": settings if settings is not None else suite.generation.model_dump(mode="json"),
        "generation": suite.generation.model_dump(mode="json"),
        "checkpoints": {c.label: str(c.adapter) if c.adapter is not None else c.base for c in checkpoints},
        "summary": summary,
        **({"gold_scorer": gold} if gold is not None else {}),
        **paired_sections(items, labels, seed, suite.flip_examples),
        **({"extra_splits": extra_splits} if extra_splits else {}),
        "training_curves": {c.label: training_curves(c.stage_dir) for c in checkpoints if c.stage_dir},
        # Gold and proxy against sqrt(KL) at an rl stage's held-out evaluations, where it recorded them.
        "overoptimisation": {
            c.label: curve for c in checkpoints if (curve := read_curve(c.stage_dir)) is not None
        },
        **({"beyond_ntp": beyond_ntp} if beyond_ntp is not None else {}),
        "timing": {
            "seconds": round(seconds, 2),
            "generation_seconds": round(generation_seconds, 2),
            "completions": completions,
            "completions_per_second": round(completions / generation_seconds, 3)
            if generation_seconds
            else None,
        },
        "provenance": {
            "created_at": utc_now(),
            "command": " ".join(sys.argv) if sys.argv else None,
            "suite_file": str(suite_file) if suite_file else None,
            "suite": suite.model_dump(mode="json"),
            "models": {c.label: c.describe() for c in checkpoints},
            "dtype": dtype,
            **({"dtype_choice": dtype_record} if dtype_record["requested"] == "auto" else {}),
            "seeds": {"data": suite.data_seed, "generation": seed, "bootstrap": seed},
            "generation": suite.generation.model_dump(mode="json"),
            "chat_template_sha256": next(iter(template_hashes.values()))
            if len(template_hashes) == 1
            else template_hashes,
            "metric_modules": {
                label: {"path": path, "sha256": _file_sha256(Path(path))}
                for label, path in modules.paths().items()
            },
            "scorers": [s.__name__ for s in scorers],
            "versions": _versions(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "items": items,
    }
    if is_main_process:
        write_report(report, out, overwrite=overwrite)
    return report
