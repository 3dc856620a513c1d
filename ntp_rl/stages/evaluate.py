"""Eval stage: the base model and the run's trained stages on the same held-out prompts.

Every checkpoint sees the same prompts, chat template, decoding settings and seeds. One copy of the
base model is loaded; each stage's LoRA adapter is loaded beside it and switched on in turn (the
base is scored with adapters disabled). Scoring uses `score_math_answer`, the same check as the
`math_accuracy` reward that trained the policy. Writes `<stage>/report.json` (the source of truth),
`report.md` and `samples.jsonl`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ntp_rl.config import EvalStage, TrainingStage
from ntp_rl.data import load_rows, require_columns
from ntp_rl.errors import UserError
from ntp_rl.generation import Decoding, generate
from ntp_rl.models import load_causal_lm, load_tokenizer
from ntp_rl.stages.common import ADAPTER_DIR, StageContext
from ntp_rl.stats import bootstrap_ci, majority_at_k, mcnemar_exact, paired_bootstrap_diff, pass_at_k

logger = logging.getLogger(__name__)

BASE = "base"


def eval_checkpoints(ctx: StageContext) -> list[tuple[str, Path | None]]:
    """(label, adapter folder) for the base and each evaluated stage, in recipe order."""
    stage: EvalStage = ctx.stage  # type: ignore[assignment]
    trained = [s.stage_name for s in ctx.recipe.stages[: ctx.index] if isinstance(s, TrainingStage)]
    wanted = stage.checkpoints if stage.checkpoints is not None else trained
    unknown = [name for name in wanted if name not in trained]
    if unknown:
        raise UserError(
            f"stages[{ctx.index}].checkpoints: {unknown} are not earlier training stages ({trained})"
        )
    return [(BASE, None)] + [(name, ctx.run_dir / name / ADAPTER_DIR) for name in wanted]


def _score_item(texts: list[str], gold: str):
    from ntp_rl.rewards.math import score_math_answer

    scores = [score_math_answer(text, gold) for text in texts]
    return [s.correct for s in scores], [s.extracted if not s.parse_failed else None for s in scores], scores


def _summarise(
    greedy: list[dict] | None, sampled: list[dict] | None, num_samples: int, seed: int
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if greedy is not None:
        correct = [float(item["correct"][0]) for item in greedy]
        summary["greedy_accuracy"] = sum(correct) / len(correct)
        summary["greedy_accuracy_ci"] = bootstrap_ci(correct, seed=seed)
        summary["greedy_parse_failure_rate"] = sum(item["parse_failed"][0] for item in greedy) / len(greedy)
        summary["greedy_mean_tokens"] = sum(item["num_tokens"][0] for item in greedy) / len(greedy)
        summary["greedy_truncation_rate"] = sum(item["truncated"][0] for item in greedy) / len(greedy)
    if sampled is not None:
        per_item = [sum(item["correct"]) / num_samples for item in sampled]
        summary["sampled_pass1"] = sum(per_item) / len(per_item)
        summary["sampled_pass1_ci"] = bootstrap_ci(per_item, seed=seed)
        ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= num_samples]
        summary["pass_at_k"] = {
            str(k): sum(pass_at_k(num_samples, sum(item["correct"]), k) for item in sampled) / len(sampled)
            for k in ks
        }
        summary["maj_at_k"] = {
            str(k): sum(majority_at_k(item["answers"], item["correct"], k) for item in sampled) / len(sampled)
            for k in ks
        }
        flat_failed = [f for item in sampled for f in item["parse_failed"]]
        summary["sampled_parse_failure_rate"] = sum(flat_failed) / len(flat_failed)
        flat_tokens = [t for item in sampled for t in item["num_tokens"]]
        summary["sampled_mean_tokens"] = sum(flat_tokens) / len(flat_tokens)
    return summary


def _compare(a: dict, b: dict, seed: int) -> dict[str, Any]:
    """Paired comparison of checkpoint b against a on the same items."""
    out: dict[str, Any] = {}
    if a.get("greedy") is not None:
        ga = [bool(item["correct"][0]) for item in a["greedy"]]
        gb = [bool(item["correct"][0]) for item in b["greedy"]]
        out["greedy"] = {**paired_bootstrap_diff(ga, gb, seed=seed), **mcnemar_exact(ga, gb)}
    if a.get("sampled") is not None:
        sa = [sum(item["correct"]) / len(item["correct"]) for item in a["sampled"]]
        sb = [sum(item["correct"]) / len(item["correct"]) for item in b["sampled"]]
        out["sampled_pass1"] = paired_bootstrap_diff(sa, sb, seed=seed)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def render_markdown(report: dict[str, Any]) -> str:
    setting = report["settings"]
    lines = [
        f"# Eval: {report['run']} / {report['stage']}",
        "",
        f"{report['num_items']} held-out items of `{report['data_source']}` (split `{report['split']}`); "
        f"greedy and {setting['num_samples']} samples per item at temperature {setting['temperature']}, "
        f"max {setting['max_new_tokens']} new tokens, seed {setting['seed']}.",
        "",
        "| checkpoint | greedy acc % [95% CI] | sampled pass@1 % [95% CI] | parse fail % (greedy) | mean tokens |",
        "|---|---|---|---|---|",
    ]
    for name, summary in report["summary"].items():
        greedy = (
            f"{_pct(summary['greedy_accuracy'])} [{_pct(summary['greedy_accuracy_ci'][0])}, "
            f"{_pct(summary['greedy_accuracy_ci'][1])}]"
            if "greedy_accuracy" in summary
            else "-"
        )
        sampled = (
            f"{_pct(summary['sampled_pass1'])} [{_pct(summary['sampled_pass1_ci'][0])}, "
            f"{_pct(summary['sampled_pass1_ci'][1])}]"
            if "sampled_pass1" in summary
            else "-"
        )
        failed = _pct(summary.get("greedy_parse_failure_rate", float("nan")))
        tokens = f"{summary.get('greedy_mean_tokens', summary.get('sampled_mean_tokens', 0)):.1f}"
        lines.append(f"| {name} | {greedy} | {sampled} | {failed} | {tokens} |")
    lines += ["", "## Paired comparisons (same items)", ""]
    lines += ["| comparison | metric | diff (points) [95% CI] | wrong->right | right->wrong | McNemar p |"]
    lines += ["|---|---|---|---|---|---|"]
    for label, comparison in report["comparisons"].items():
        for metric, values in comparison.items():
            diff = (
                f"{100 * values['diff']:+.1f} [{100 * values['ci_low']:+.1f}, {100 * values['ci_high']:+.1f}]"
            )
            flips = (values.get("wrong_to_right", "-"), values.get("right_to_wrong", "-"))
            p = f"{values['p_value']:.3g}" if "p_value" in values else "-"
            lines.append(f"| {label} | {metric} | {diff} | {flips[0]} | {flips[1]} | {p} |")
    return "\n".join(lines) + "\n"


def summary_text(report: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy per checkpoint and the last paired comparison."""
    parts = []
    for name, summary in report["summary"].items():
        bits = []
        if "greedy_accuracy" in summary:
            bits.append(f"greedy {_pct(summary['greedy_accuracy'])}%")
        if "sampled_pass1" in summary:
            bits.append(f"sampled pass@1 {_pct(summary['sampled_pass1'])}%")
        parts.append(f"{name}: " + ", ".join(bits))
    for label, comparison in report["comparisons"].items():
        for metric, values in comparison.items():
            parts.append(
                f"{label} {metric}: {100 * values['diff']:+.1f} points "
                f"[{100 * values['ci_low']:+.1f}, {100 * values['ci_high']:+.1f}]"
            )
    return "\n".join(parts)


def run_eval(ctx: StageContext) -> dict[str, Any]:
    from peft import PeftModel
    from tqdm.auto import tqdm

    stage: EvalStage = ctx.stage  # type: ignore[assignment]
    data = ctx.data
    split = stage.split or data.test_split
    rows = load_rows(data, split, ctx.recipe.run.seed, ctx.recipe_dir)
    require_columns(rows, ["prompt", "answer"], f"stages[{ctx.index}] ({stage.stage_name})")
    if stage.max_examples is not None and len(rows) > stage.max_examples:
        rows = rows.select(range(stage.max_examples))
    prompts, answers = list(rows["prompt"]), [str(a) for a in rows["answer"]]
    checkpoints = eval_checkpoints(ctx)
    for name, adapter in checkpoints:
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise UserError(
                f"stages[{ctx.index}]: checkpoint {name!r} has no adapter at {adapter}; run it first"
            )

    tokenizer = load_tokenizer(ctx.base_model_path, ctx.recipe.model.trust_remote_code)
    model = load_causal_lm(ctx.base_model_path, ctx.recipe.model.dtype, ctx.recipe.model.trust_remote_code)
    adapters = [(name, path) for name, path in checkpoints if path is not None]
    if adapters:
        model = PeftModel.from_pretrained(model, str(adapters[0][1]), adapter_name=adapters[0][0])
        for name, path in adapters[1:]:
            model.load_adapter(str(path), adapter_name=name)

    decodings = []
    if stage.greedy:
        decodings.append(("greedy", Decoding(1, 0.0, 1.0, stage.max_new_tokens, stage.seed)))
    if stage.num_samples:
        decodings.append(
            (
                "sampled",
                Decoding(stage.num_samples, stage.temperature, stage.top_p, stage.max_new_tokens, stage.seed),
            )
        )
    if not decodings:
        raise UserError(f"stages[{ctx.index}]: greedy is false and num_samples is 0: nothing to evaluate")

    results: dict[str, dict[str, Any]] = {}
    total = len(checkpoints) * len(decodings) * len(prompts)
    bar = tqdm(total=total, desc=f"eval {stage.stage_name}", unit="prompt", disable=not ctx.is_main_process)
    for name, _ in checkpoints:
        results[name] = {}
        for mode, decoding in decodings:
            bar.set_postfix_str(f"{name} {mode}")
            if name == BASE and adapters:
                with model.disable_adapter():
                    generations = generate(model, tokenizer, prompts, decoding, stage.batch_size, bar.update)
            else:
                if adapters:
                    model.set_adapter(name)
                generations = generate(model, tokenizer, prompts, decoding, stage.batch_size, bar.update)
            items = []
            for gen, gold in zip(generations, answers, strict=True):
                correct, extracted, scores = _score_item(gen.texts, gold)
                items.append(
                    {
                        "texts": gen.texts,
                        "correct": correct,
                        "answers": extracted,
                        "parse_failed": [s.parse_failed for s in scores],
                        "num_tokens": gen.num_tokens,
                        "truncated": gen.truncated,
                    }
                )
            results[name][mode] = items
    bar.close()

    summary = {
        name: _summarise(res.get("greedy"), res.get("sampled"), stage.num_samples, stage.seed)
        for name, res in results.items()
    }
    comparisons: dict[str, Any] = {}
    names = [name for name, _ in checkpoints]
    for i, name in enumerate(names[1:], start=1):
        comparisons[f"{name} vs {BASE}"] = _compare(results[BASE], results[name], stage.seed)
        if i > 1:
            comparisons[f"{name} vs {names[i - 1]}"] = _compare(
                results[names[i - 1]], results[name], stage.seed
            )
    report = {
        "run": ctx.run_dir.name,
        "stage": stage.stage_name,
        "data_source": data.source,
        "split": split,
        "num_items": len(prompts),
        "settings": stage.model_dump(mode="json"),
        "checkpoints": {name: str(path) if path else ctx.base_model_path for name, path in checkpoints},
        "summary": summary,
        "comparisons": comparisons,
    }
    if ctx.is_main_process:
        out = ctx.stage_dir
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "report.md").write_text(render_markdown(report))
        with (out / "samples.jsonl").open("w", encoding="utf-8") as handle:
            for index, (prompt, gold) in enumerate(zip(prompts, answers, strict=True)):
                record = {"index": index, "prompt": prompt, "answer": gold}
                for name in names:
                    for mode in results[name]:
                        item = results[name][mode][index]
                        record[f"{name}/{mode}"] = {"texts": item["texts"], "correct": item["correct"]}
                handle.write(json.dumps(record) + "\n")
    text = summary_text(report)
    logger.info("eval results:\n%s", text)
    headline = {
        f"{name}/{key}": value
        for name, s in summary.items()
        for key, value in s.items()
        if key in ("greedy_accuracy", "sampled_pass1")
    }
    return {"report": str(ctx.stage_dir / "report.json"), "summary": text, **headline}
