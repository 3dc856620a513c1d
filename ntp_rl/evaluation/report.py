"""Eval reports: `report.json` (the source of truth), `report.md`, `report.html`, `samples.jsonl`.

`report.json` holds, besides the per-checkpoint `summary` and the paired `comparisons`, every
item's verdicts and completions (`items`), so that `ntp-rl compare` can pair checkpoints from
different reports on the same items, and a provenance block (suite, models and adapter hashes,
package versions, seeds, decoding, chat-template hash). Nothing here runs a model.

Comparisons: every checkpoint against the reference (the one labelled `base`, else the first), and
each against the one before it; greedy verdicts by paired bootstrap and exact McNemar, sampled
pass@1 by paired bootstrap. Flips (wrong->right, right->wrong against the reference) keep a few
examples each way with both completions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ntp_rl.checkpoints import reference_label
from ntp_rl.common import utc_now, write_json_atomic
from ntp_rl.errors import UserError
from ntp_rl.evaluation.formatting import (
    comparison_row,
    gold_rows,
    kl_cells,
    kl_headers,
    md_cell,
    num_ci,
    pct,
    pct_ci,
    ranking_agreement_rows,
    reward_comparison_rows,
    settings_line,
    split_tables,
)
from ntp_rl.stats import mcnemar_exact, paired_bootstrap_diff

REPORT_FORMAT = "ntp-rl-eval-report/1"
REPORT_JSON, REPORT_MD, REPORT_HTML, SAMPLES = "report.json", "report.md", "report.html", "samples.jsonl"
REPORT_FILES = (REPORT_JSON, REPORT_MD, REPORT_HTML, SAMPLES)
MAX_DISAGREEMENTS = 12  # side-by-side items in the HTML report


def check_out_dir(out: Path) -> None:
    """Refuse a folder that already holds a report: reports are never overwritten."""
    for name in REPORT_FILES:
        if (out / name).exists():
            raise UserError(
                f"--out {out}: {out / name} already exists; reports are never overwritten. "
                "Choose another --out folder (or leave it out for runs/eval/<timestamp>)."
            )


def prompt_text(prompt: Any) -> str:
    """A prompt (a string or a message list) as plain text, for people."""
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def prompt_hashes(prompts: list[Any]) -> list[str]:
    return [
        hashlib.sha256(json.dumps(p, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
        for p in prompts
    ]


# --------------------------------------------------------------------------------------------
# Paired comparisons, flips, disagreements


def _first_correct(results: dict[str, Any]) -> tuple[str, list[bool]]:
    """The verdict used for flips: greedy when there is one, else each item's first sample."""
    mode = "greedy" if "greedy" in results else "sampled"
    return mode, [bool(item[0]) for item in results[mode]["correct"]]


def has_verdicts(results: dict[str, Any]) -> bool:
    """Whether every mode of every checkpoint has answer verdicts (a suite with `answer_check: none` has none)."""
    return all("correct" in fields for modes in results.values() for fields in modes.values())


def compare_pair(a: dict[str, Any], b: dict[str, Any], seed: int) -> dict[str, Any]:
    """Checkpoint b against a on the same items (their verdicts; nothing without verdicts)."""
    out: dict[str, Any] = {}
    if not has_verdicts({"a": a, "b": b}):
        return out
    if "greedy" in a and "greedy" in b:
        ga = [bool(item[0]) for item in a["greedy"]["correct"]]
        gb = [bool(item[0]) for item in b["greedy"]["correct"]]
        out["greedy"] = {**paired_bootstrap_diff(ga, gb, seed=seed), **mcnemar_exact(ga, gb)}
    if "sampled" in a and "sampled" in b:
        sa = [sum(item) / len(item) for item in a["sampled"]["correct"]]
        sb = [sum(item) / len(item) for item in b["sampled"]["correct"]]
        out["sampled_pass1"] = paired_bootstrap_diff(sa, sb, seed=seed)
    return out


def _item_means(per_item: list[list[float | None]]) -> list[float | None]:
    means = []
    for item in per_item:
        present = [v for v in item if v is not None]
        means.append(sum(present) / len(present) if present else None)
    return means


def compare_rewards(a: dict[str, Any], b: dict[str, Any], seed: int) -> dict[str, Any]:
    """Checkpoint b against a on each scorer's mean per item, paired over the items both scored:
    {scorer: {mode: {diff, ci_low, ci_high, items}}} (a paired bootstrap of the difference)."""
    out: dict[str, Any] = {}
    for mode in ("greedy", "sampled"):
        if mode not in a or mode not in b:
            continue
        for name, values in a[mode].get("rewards", {}).items():
            if name not in b[mode].get("rewards", {}):
                continue
            pairs = [
                (x, y)
                for x, y in zip(_item_means(values), _item_means(b[mode]["rewards"][name]), strict=True)
                if x is not None and y is not None
            ]
            if pairs:
                diff = paired_bootstrap_diff([x for x, _ in pairs], [y for _, y in pairs], seed=seed)
                out.setdefault(name, {})[mode] = {**diff, "items": len(pairs)}
    return out


def comparison_pairs(labels: list[str]) -> list[tuple[str, str]]:
    """(a, b) pairs: each checkpoint against the reference, and each against the one before it."""
    reference = reference_label(labels)
    others = [label for label in labels if label != reference]
    pairs = [(reference, label) for label in others]
    pairs += [(others[i - 1], others[i]) for i in range(1, len(others))]
    return pairs


def _example(items: dict[str, Any], index: int, labels: tuple[str, ...], mode: str) -> dict[str, Any]:
    return {
        "index": index,
        "prompt": prompt_text(items["prompts"][index]),
        "answer": items["gold"][index],
        "completions": {label: items["results"][label][mode]["texts"][index][0] for label in labels},
    }


def flips(items: dict[str, Any], a: str, b: str, max_examples: int) -> dict[str, Any]:
    mode, ca = _first_correct(items["results"][a])
    _, cb = _first_correct(items["results"][b])
    up = [i for i, (x, y) in enumerate(zip(ca, cb, strict=True)) if not x and y]
    down = [i for i, (x, y) in enumerate(zip(ca, cb, strict=True)) if x and not y]
    return {
        "mode": mode,
        "wrong_to_right": len(up),
        "right_to_wrong": len(down),
        "examples": {
            "wrong_to_right": [_example(items, i, (a, b), mode) for i in up[:max_examples]],
            "right_to_wrong": [_example(items, i, (a, b), mode) for i in down[:max_examples]],
        },
    }


def disagreements(items: dict[str, Any], labels: list[str], limit: int = MAX_DISAGREEMENTS) -> list[dict]:
    """Items on which the checkpoints' verdicts differ, with every checkpoint's completion."""
    verdicts = {label: _first_correct(items["results"][label]) for label in labels}
    out = []
    for index in range(len(items["prompts"])):
        if len({verdicts[label][1][index] for label in labels}) < 2:
            continue
        out.append(
            {
                "index": index,
                "prompt": prompt_text(items["prompts"][index]),
                "answer": items["gold"][index],
                "mode": verdicts[labels[0]][0],
                "completions": {
                    label: {
                        "text": items["results"][label][verdicts[label][0]]["texts"][index][0],
                        "correct": verdicts[label][1][index],
                    }
                    for label in labels
                },
            }
        )
        if len(out) >= limit:
            break
    return out


def side_by_side(items: dict[str, Any], labels: list[str], limit: int = MAX_DISAGREEMENTS) -> list[dict]:
    """The first items with each checkpoint's first sample and its scores: what a task without verdicts
    shows instead of flips (sampled completions where at least two checkpoints have them)."""
    results = items["results"]
    sampled = [label for label in labels if "sampled" in results[label]]
    mode = "sampled" if len(sampled) >= 2 else "greedy"
    shown = [label for label in labels if mode in results[label]]
    return [
        {
            "index": index,
            "prompt": prompt_text(items["prompts"][index]),
            "mode": mode,
            "completions": {
                label: {
                    "text": results[label][mode]["texts"][index][0],
                    "scores": {
                        name: values[index][0]
                        for name, values in results[label][mode].get("rewards", {}).items()
                    },
                }
                for label in shown
            },
        }
        for index in range(min(limit, len(items["prompts"])))
    ]


def paired_sections(items: dict[str, Any], labels: list[str], seed: int, max_examples: int) -> dict[str, Any]:
    reference = reference_label(labels)
    results = items["results"]
    pairs = comparison_pairs(labels)
    if not has_verdicts(results):  # no verdicts to compare or flip: the scorers' means, samples side by side
        return {
            "reference": reference,
            "comparisons": {},
            "reward_comparisons": {
                f"{b} vs {a}": compare_rewards(results[a], results[b], seed) for a, b in pairs
            },
            "flips": {},
            "disagreements": [],
            "side_by_side": side_by_side(items, labels),
        }
    return {
        "reward_comparisons": {
            f"{b} vs {a}": compare_rewards(results[a], results[b], seed) for a, b in pairs
        },
        "reference": reference,
        "comparisons": {
            f"{b} vs {a}": compare_pair(results[a], results[b], seed) for a, b in comparison_pairs(labels)
        },
        "flips": {
            f"{label} vs {reference}": flips(items, reference, label, max_examples)
            for label in labels
            if label != reference
        },
        "disagreements": disagreements(items, labels) if len(labels) > 1 else [],
    }


def _select(results: dict[str, Any], indices: list[int]) -> dict[str, Any]:
    return {mode: {"correct": [fields["correct"][i] for i in indices]} for mode, fields in results.items()}


def across_splits(
    main_keys: list[str], main_results: dict[str, Any], keys: list[str], results: dict[str, Any], seed: int
) -> dict[str, Any] | None:
    """Each checkpoint on an extra split against itself on the main split, paired on the problems both
    hold (the same `key`): for `test_phrasings`, what the wording alone changes. None when none match."""
    if len(set(main_keys)) != len(main_keys) or len(set(keys)) != len(keys):
        return None  # a key that is not unique pairs nothing for certain
    where = {key: index for index, key in enumerate(main_keys)}
    pairs = [(where[key], index) for index, key in enumerate(keys) if key in where]
    if not pairs:
        return None
    main_indices, indices = [i for i, _ in pairs], [j for _, j in pairs]
    return {
        "num_items": len(pairs),
        "paired_on": "key",
        "comparisons": {
            label: compare_pair(
                _select(main_results[label], main_indices), _select(results[label], indices), seed
            )
            for label in results
        },
    }


def extra_split_section(
    split: str,
    items: dict[str, Any],
    summary: dict[str, Any],
    *,
    main: tuple[str, list[str] | None, dict[str, Any]],
    keys: list[str] | None,
    seed: int,
    max_examples: int,
) -> dict[str, Any]:
    """One of a suite's `extra_splits` in a report: its summary, its paired comparisons and flips (as
    for the main split), and each checkpoint against itself on the main split where items pair up."""
    labels = list(items["results"])
    section: dict[str, Any] = {
        "split": split,
        "num_items": len(items["prompts"]),
        "summary": summary,
        **paired_sections(items, labels, seed, max_examples),
    }
    main_split, main_keys, main_results = main
    gap = across_splits(main_keys, main_results, keys, items["results"], seed) if main_keys and keys else None
    if gap is not None:
        section["vs_main_split"] = {"split": main_split, **gap}
    section["items"] = items
    return section


# --------------------------------------------------------------------------------------------
# Text renderings


def _gold_markdown(report: dict[str, Any]) -> list[str]:
    """The top table of a report without verdicts: each checkpoint's mean gold score."""
    gold = report.get("gold_scorer") or "-"
    header = ["checkpoint", f"{gold} greedy [95% CI]", f"{gold} sampled [95% CI]", "truncated %"]
    header += ["mean tokens", *kl_headers(report), "reference NLL /token"]
    return _md_table(header, gold_rows(report))


def _fenced(text: str) -> list[str]:
    return ["```text", text.replace("```", "'''"), "```"]


def _side_by_side_markdown(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Samples side by side",
        "",
        "Each checkpoint's first sample of the first items, with its scores.",
    ]
    for item in report["side_by_side"]:
        lines += ["", f"**#{item['index']}** ({item['mode']})", "", *_fenced(item["prompt"])]
        for who, entry in item["completions"].items():
            scores = ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in entry["scores"].items())
            lines += [f"*{md_cell(who)}* ({scores}):", *_fenced(entry["text"])]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    title = report.get("title") or f"{report.get('run')} / {report.get('stage')}"
    lines = [f"# Eval: {title}", "", settings_line(report), ""]
    verdicts = "side_by_side" not in report  # else no answers were checked: the gold scorer measures
    if not verdicts:
        lines += _gold_markdown(report)
    lines += (
        []
        if not verdicts
        else [
            "| checkpoint | greedy acc % [95% CI] | sampled pass@1 % [95% CI] | parse fail % (greedy) | "
            "truncated % | mean tokens | " + " | ".join(kl_headers(report)) + " | reference NLL /token |",
            "|---|---|---|---|---|---|" + "---|" * len(kl_headers(report)) + "---|",
        ]
    )
    for name, s in report["summary"].items() if verdicts else ():
        mode = "greedy" if "greedy_mean_tokens" in s else "sampled"
        failed = pct_ci(
            s.get("greedy_parse_failure_rate", s.get("sampled_parse_failure_rate")),
            s.get("greedy_parse_failure_rate_ci", s.get("sampled_parse_failure_rate_ci")),
        )
        lines.append(
            f"| {md_cell(name)} | {pct_ci(s.get('greedy_accuracy'), s.get('greedy_accuracy_ci'))} "
            f"| {pct_ci(s.get('sampled_pass1'), s.get('sampled_pass1_ci'))} | {failed} "
            f"| {pct_ci(s.get(f'{mode}_truncation_rate'), s.get(f'{mode}_truncation_rate_ci'))} "
            f"| {s.get(f'{mode}_mean_tokens', 0):.1f} | {' | '.join(kl_cells(report, s))} "
            f"| {num_ci(s.get('reference_nll'), 3)} |"
        )
    tables = split_tables(report)
    if tables:
        lines += ["", "## Splits side by side"]
        for caption, header, rows, _ in tables:
            lines += ["", caption, "", *_md_table(header, rows)]
    ks = sorted({k for s in report["summary"].values() for k in s.get("pass_at_k", {})}, key=int)
    if ks:
        lines += ["", "## pass@k and maj@k (sampled, %)", ""]
        lines += [
            "| checkpoint | "
            + " | ".join(f"pass@{k}" for k in ks)
            + " | "
            + " | ".join(f"maj@{k}" for k in ks)
            + " |"
        ]
        lines += ["|---" * (1 + 2 * len(ks)) + "|"]
        for name, s in report["summary"].items():
            cells = [pct(s.get("pass_at_k", {}).get(k)) for k in ks] + [
                pct(s.get("maj_at_k", {}).get(k)) for k in ks
            ]
            lines.append(f"| {md_cell(name)} | " + " | ".join(cells) + " |")
    scorers = sorted(
        {r for s in report["summary"].values() for m in s.get("rewards", {}).values() for r in m}
    )
    if scorers:
        lines += ["", "## Mean reward per scorer [95% CI]", ""]
        lines += ["| checkpoint | mode | " + " | ".join(md_cell(r) for r in scorers) + " |"]
        lines += ["|---|---" + "|---" * len(scorers) + "|"]
        for name, s in report["summary"].items():
            for mode, rewards in s.get("rewards", {}).items():
                lines.append(
                    f"| {md_cell(name)} | {mode} | "
                    + " | ".join(num_ci(rewards.get(r), 3) for r in scorers)
                    + " |"
                )
        agreement = ranking_agreement_rows(report["summary"])
        gold = report.get("gold_scorer")
        if agreement and not verdicts:
            lines += ["", f"## Does each scorer rank the samples as {gold} does?", ""]
            lines += [
                f"Share of pairs of samples of the same prompt that {gold} tells apart which the scorer "
                "orders the same way (ties half; 0.5 is chance), mean over prompts with such a pair [95% "
                "CI]: what GRPO needs from a reward, measured on each checkpoint's own samples.",
                "",
            ]
        elif agreement:
            lines += ["", "## Does each scorer rank a right answer above a wrong one?", ""]
            lines += [
                "Share of (right, wrong) pairs of samples of the same prompt that the scorer orders "
                "correctly (ties half; 0.5 is chance), mean over prompts with both [95% CI]: what GRPO "
                "needs from a reward, measured on each checkpoint's own samples.",
                "",
            ]
        if agreement:
            lines += [
                "| checkpoint | mode | scorer | agreement [95% CI] | prompts | pairs |",
                "|---|---|---|---|---|---|",
            ]
            lines += [f"| {' | '.join(md_cell(c) for c in row)} |" for row in agreement]
    if report.get("comparisons"):
        lines += ["", "## Paired comparisons (same items)", ""]
        lines += [
            "| comparison | metric | diff (points) [95% CI] | wrong->right | right->wrong | McNemar p |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for label, comparison in report["comparisons"].items():
            for metric, values in comparison.items():
                lines.append(
                    "| " + " | ".join(md_cell(c) for c in comparison_row(label, metric, values)) + " |"
                )
    elif report.get("note"):
        lines += ["", f"_{report['note']}_"]
    rewards_compared = reward_comparison_rows(report)
    if rewards_compared and report.get("gold_scorer"):
        lines += ["", "## Paired comparisons of mean scores (same items)", ""]
        lines += ["Difference of each scorer's mean per item, paired bootstrap [95% CI].", ""]
        lines += _md_table(["comparison", "scorer", "mode", "diff [95% CI]", "items"], rewards_compared)
    if report.get("side_by_side"):
        lines += _side_by_side_markdown(report)
    for label, flip in (report.get("flips") or {}).items():
        lines += ["", f"## Flips: {label} ({flip['mode']})", ""]
        lines += [f"wrong->right: {flip['wrong_to_right']}, right->wrong: {flip['right_to_wrong']}"]
        for kind, examples in flip["examples"].items():
            for example in examples:
                lines += ["", f"**{kind} #{example['index']}** (gold `{md_cell(example['answer'])}`)", ""]
                lines += ["```text", example["prompt"].replace("```", "'''"), "```"]
                for who, text in example["completions"].items():
                    lines += [f"*{md_cell(who)}:*", "```text", str(text).replace("```", "'''"), "```"]
    curves = report.get("overoptimisation") or {}
    if curves:
        from ntp_rl.evaluation.overoptimisation_curve import (
            EXAMPLE_HEADER,
            HEADER,
            example_rows,
            headline,
            rows,
        )

        lines += ["", "## Over-optimisation: gold and proxy against sqrt(KL), held-out, during RL"]
        for label, data in curves.items():
            lines += ["", headline(label, data), "", "| " + " | ".join(HEADER) + " |"]
            lines += ["|---" * len(HEADER) + "|"]
            lines += [f"| {' | '.join(md_cell(c) for c in row)} |" for row in rows(data)]
            if examples := example_rows(data):
                lines += [
                    "",
                    f"{label}: what the policy wrote on {data.get('examples_of')} (one completion each):",
                    "",
                ]
                lines += ["| " + " | ".join(EXAMPLE_HEADER) + " |", "|---" * len(EXAMPLE_HEADER) + "|"]
                lines += [f"| {' | '.join(md_cell(c) for c in row)} |" for row in examples]
    if report.get("beyond_ntp"):
        from ntp_rl.probes.render import render_markdown_section

        lines += ["", render_markdown_section(report["beyond_ntp"]).rstrip()]
    provenance = report.get("provenance") or {}
    if provenance:
        lines += ["", "## Provenance", ""]
        for key in ("created_at", "suite_file", "chat_template_sha256", "command"):
            if provenance.get(key):
                lines.append(f"- {key}: `{md_cell(provenance[key])}`")
        for label, model in (provenance.get("models") or {}).items():
            lines.append(f"- model {md_cell(label)}: `{md_cell(json.dumps(model))}`")
        versions = provenance.get("versions") or {}
        if versions:
            lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|---" * len(header) + "|"]
    return lines + ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]


def summary_text(report: dict[str, Any]) -> str:
    """A few lines for the terminal: accuracy per checkpoint and the paired comparisons."""
    parts = []
    for name, summary in report["summary"].items():
        bits = []
        if "greedy_accuracy" in summary:
            bits.append(f"greedy {pct(summary['greedy_accuracy'])}%")
        if "sampled_pass1" in summary:
            bits.append(f"sampled pass@1 {pct(summary['sampled_pass1'])}%")
        gold = report.get("gold_scorer")
        if not bits and gold:  # no verdicts: the gold scorer's means
            for mode, rewards in summary.get("rewards", {}).items():
                if gold in rewards:
                    bits.append(f"{gold} {mode} {rewards[gold]['value']:.3f}")
        parts.append(f"{name}: " + ", ".join(bits))
    if not report["comparisons"] and report.get("gold_scorer"):
        for label, by_scorer in (report.get("reward_comparisons") or {}).items():
            for mode, d in by_scorer.get(report["gold_scorer"], {}).items():
                parts.append(
                    f"{label} {report['gold_scorer']} {mode}: {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                )
    for label, comparison in report["comparisons"].items():
        for metric, values in comparison.items():
            parts.append(
                f"{label} {metric}: {100 * values['diff']:+.1f} points "
                f"[{100 * values['ci_low']:+.1f}, {100 * values['ci_high']:+.1f}]"
            )
    for split, section in (report.get("extra_splits") or {}).items():
        for name, summary in section["summary"].items():
            bits = [
                f"{text} {pct(summary[key])}%"
                for key, text in (("greedy_accuracy", "greedy"), ("sampled_pass1", "sampled pass@1"))
                if key in summary
            ]
            parts.append(f"[{split}] {name}: " + ", ".join(bits))
        for label, comparison in section["comparisons"].items():
            for metric, values in comparison.items():
                parts.append(
                    f"[{split}] {label} {metric}: {100 * values['diff']:+.1f} points "
                    f"[{100 * values['ci_low']:+.1f}, {100 * values['ci_high']:+.1f}]"
                )
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Files


def write_samples(report: dict[str, Any], path: Path) -> None:
    items = report.get("items")
    if not items:
        return
    with path.open("w", encoding="utf-8") as handle:
        for index, (prompt, gold) in enumerate(zip(items["prompts"], items["gold"], strict=True)):
            record: dict[str, Any] = {"index": index, "prompt": prompt, "answer": gold}
            for name, modes in items["results"].items():
                for mode, fields in modes.items():
                    record[f"{name}/{mode}"] = {
                        "texts": fields["texts"][index],
                        "correct": fields["correct"][index] if "correct" in fields else None,
                        "rewards": {k: v[index] for k, v in fields.get("rewards", {}).items()},
                    }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_report(report: dict[str, Any], out: Path, overwrite: bool = False) -> dict[str, Path]:
    """Write report.json, report.md, report.html and samples.jsonl into `out` (refusing to overwrite)."""
    from ntp_rl.evaluation.html import render_html

    out.mkdir(parents=True, exist_ok=True)
    if not overwrite:
        check_out_dir(out)
    paths = {name: out / name for name in REPORT_FILES}
    paths[REPORT_MD].write_text(render_markdown(report), encoding="utf-8")
    paths[REPORT_HTML].write_text(render_html(report), encoding="utf-8")
    write_samples(report, paths[SAMPLES])
    # The source of truth is written last: a folder with report.json holds a complete report.
    write_json_atomic(paths[REPORT_JSON], report, indent=1)
    return paths


def load_report(path: Path) -> dict[str, Any]:
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such report") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable report.json ({exc})") from None
    if not isinstance(report, dict) or "summary" not in report:
        raise UserError(f"{path}: not an ntp-rl eval report (no `summary`)")
    return report


# --------------------------------------------------------------------------------------------
# ntp-rl compare


def merge_beyond_ntp(
    reports: list[dict[str, Any]], renamed: list[dict[str, str]], summary: dict[str, Any], reference: str
) -> dict[str, Any] | None:
    """The reports' "Beyond next-token prediction" sections as one, under the compare labels.

    Each instrument's results are carried per checkpoint; distance from NTP is recomputed from the
    combined summary against the compare reference. Probe settings that differ between reports are
    kept per report and noted, since their numbers are then not directly comparable.
    """
    from ntp_rl.probes.distance import distance_from_ntp
    from ntp_rl.probes.run import INSTRUMENTS

    sections = [(r["beyond_ntp"], m) for r, m in zip(reports, renamed, strict=True) if r.get("beyond_ntp")]
    if not sections:
        return None
    merged: dict[str, Any] = {"settings": sections[0][0].get("settings"), "checkpoints": []}
    all_settings = [s.get("settings") for s, _ in sections]
    if any(other != all_settings[0] for other in all_settings[1:]):
        merged["settings_by_report"] = all_settings
        merged["note"] = "probe settings differ between the reports: compare their numbers with care"
    for section, mapping in sections:
        merged["checkpoints"] += [mapping.get(label, label) for label in section.get("checkpoints", [])]
        for name in INSTRUMENTS:
            for label, value in (section.get(name) or {}).items():
                merged.setdefault(name, {})[mapping.get(label, label)] = value
        for name, failed in (section.get("errors") or {}).items():
            for label, message in failed.items():
                merged.setdefault("errors", {}).setdefault(name, {})[mapping.get(label, label)] = message
    # A report's own reference (its base) carries no adapter; every other checkpoint is one.
    adapters = {
        new: old != reference_label(list(mapping)) for mapping in renamed for old, new in mapping.items()
    }
    merged["distance_from_ntp"] = distance_from_ntp(summary, reference, adapters)
    return merged


def merge_extra_splits(
    reports: list[dict[str, Any]],
    renamed: list[dict[str, str]],
    labels: list[str],
    seed: int,
    max_examples: int,
) -> dict[str, Any]:
    """The extra splits every report holds on the same items, combined and paired under the compare labels."""
    sections: dict[str, Any] = {}
    names = [name for name in reports[0].get("extra_splits") or {}]
    for name in names:
        parts = [(r.get("extra_splits") or {}).get(name) for r in reports]
        if any(part is None or "items" not in part for part in parts):
            continue
        if any(part["items"]["prompt_sha256"] != parts[0]["items"]["prompt_sha256"] for part in parts):
            continue
        items = {k: parts[0]["items"][k] for k in ("prompts", "gold", "prompt_sha256")}
        items["results"], summary, gaps = {}, {}, {}
        for part, mapping in zip(parts, renamed, strict=True):
            for old, new in mapping.items():
                items["results"][new] = part["items"]["results"][old]
                summary[new] = part["summary"][old]
                if old in (part.get("vs_main_split") or {}).get("comparisons", {}):
                    gaps[new] = part["vs_main_split"]["comparisons"][old]
        section = {
            "split": name,
            "num_items": parts[0].get("num_items"),
            "summary": summary,
            **paired_sections(items, labels, seed, max_examples),
        }
        first_gap = parts[0].get("vs_main_split")
        same_gap = first_gap and all(
            {k: (p.get("vs_main_split") or {}).get(k) for k in ("split", "num_items")}
            == {k: first_gap[k] for k in ("split", "num_items")}
            for p in parts
        )
        if same_gap:
            section["vs_main_split"] = {**first_gap, "comparisons": gaps}
        sections[name] = {**section, "items": items}
    return sections


def compare_reports(paths: list[Path], out: Path, seed: int = 0, max_examples: int = 3) -> dict[str, Any]:
    """One combined report from earlier ones: every checkpoint side by side, paired where items match."""
    if len(paths) < 2:
        raise UserError("compare needs at least two reports")
    check_out_dir(out)
    reports = [(path, load_report(path)) for path in paths]
    labels: list[str] = []
    renamed: list[dict[str, str]] = []
    for path, report in reports:
        mapping = {}
        folder = (path.parent if path.suffix == ".json" else path).name
        for label in report["summary"]:
            new = label if label not in labels else f"{label}@{folder}"
            suffix = 2
            while new in labels:
                new, suffix = f"{label}@{folder}-{suffix}", suffix + 1
            mapping[label] = new
            labels.append(new)
        renamed.append(mapping)

    first = reports[0][1]
    hashes = [r.get("items", {}).get("prompt_sha256") for _, r in reports]
    paired = all(h is not None and h == hashes[0] for h in hashes)
    combined: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "title": "compare " + ", ".join(str(p) for p in paths),
        "run": None,
        "stage": None,
        "suite": first.get("suite"),
        "data_source": first.get("data_source"),
        "split": first.get("split"),
        "num_items": first.get("num_items"),
        "generation": first.get("generation") or first.get("settings"),
        "checkpoints": {},
        "summary": {},
        "comparisons": {},
        "flips": {},
        "disagreements": [],
        "training_curves": {},
        "overoptimisation": {},
    }
    items: dict[str, Any] | None = None
    if paired:
        items = {k: first["items"][k] for k in ("prompts", "gold", "prompt_sha256")}
        items["results"] = {}
    for (_, report), mapping in zip(reports, renamed, strict=True):
        for old, new in mapping.items():
            combined["summary"][new] = report["summary"][old]
            combined["checkpoints"][new] = report.get("checkpoints", {}).get(old)
            if old in (report.get("training_curves") or {}):
                combined["training_curves"][new] = report["training_curves"][old]
            if old in (report.get("overoptimisation") or {}):
                combined["overoptimisation"][new] = report["overoptimisation"][old]
            if items is not None:
                items["results"][new] = report["items"]["results"][old]
    if items is not None:
        combined["items"] = items
        combined.update(paired_sections(items, labels, seed, max_examples))
    else:
        combined["note"] = (
            "the reports were made on different items (prompt hashes differ) or lack per-item results: "
            "checkpoints are shown side by side, without paired comparisons"
        )
    extra_splits = merge_extra_splits([r for _, r in reports], renamed, labels, seed, max_examples)
    if extra_splits:
        combined["extra_splits"] = extra_splits
    beyond_ntp = merge_beyond_ntp(
        [r for _, r in reports], renamed, combined["summary"], reference_label(labels)
    )
    if beyond_ntp is not None:
        combined["beyond_ntp"] = beyond_ntp
    combined["provenance"] = {
        "created_at": utc_now(),
        "command": "ntp-rl compare",
        "sources": [
            {"path": str(path), "labels": mapping, "provenance": report.get("provenance")}
            for (path, report), mapping in zip(reports, renamed, strict=True)
        ],
    }
    write_report(combined, out)
    return combined
