"""Numbers and rows as the reports print them: percentages and values with their intervals.

Shared by the Markdown report (`report.py`) and the HTML report (`html.py`), so both print a
number the same way.
"""

from __future__ import annotations

from typing import Any


def pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def pct_ci(value: float | None, ci: list | tuple | None) -> str:
    if value is None:
        return "-"
    if not ci or ci[0] is None:
        return pct(value)
    return f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}]"


def comparison_row(label: str, metric: str, values: dict[str, Any]) -> list[str]:
    """[comparison, metric, diff (points) [CI], wrong->right, right->wrong, McNemar p] of one paired comparison."""
    return [
        label,
        metric,
        f"{100 * values['diff']:+.1f} [{100 * values['ci_low']:+.1f}, {100 * values['ci_high']:+.1f}]",
        str(values.get("wrong_to_right", "-")),
        str(values.get("right_to_wrong", "-")),
        f"{values['p_value']:.3g}" if "p_value" in values else "-",
    ]


COMPARISON_HEADER = [
    "comparison",
    "metric",
    "diff (points) [95% CI]",
    "wrong->right",
    "right->wrong",
    "McNemar p",
]


def split_tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]], int]]:
    """The main split and each of `extra_splits` side by side, as (caption, header, rows, first numeric
    column) tables for the Markdown and HTML reports: accuracies, paired comparisons per split, and each
    checkpoint on an extra split against itself on the main one. Empty without extra splits."""
    if not report.get("extra_splits"):
        return []
    splits = {report.get("split") or "main": report, **report["extra_splits"]}
    header = ["checkpoint"]
    for name in splits:
        header += [f"{name} greedy % [95% CI]", f"{name} sampled pass@1 % [95% CI]"]
    rows = []
    for label in report["summary"]:
        row = [label]
        for section in splits.values():
            s = section["summary"].get(label, {})
            row += [
                pct_ci(s.get("greedy_accuracy"), s.get("greedy_accuracy_ci")),
                pct_ci(s.get("sampled_pass1"), s.get("sampled_pass1_ci")),
            ]
        rows.append(row)
    sizes = ", ".join(f"{name}: {section.get('num_items')} items" for name, section in splits.items())
    tables = [(f"The same checkpoints, decoding and seeds on each split ({sizes}).", header, rows, 1)]
    rows = [
        [name, *comparison_row(label, metric, values)]
        for name, section in splits.items()
        for label, comparison in (section.get("comparisons") or {}).items()
        for metric, values in comparison.items()
    ]
    if rows:
        tables.append(
            ("Paired comparisons on each split (same items).", ["split", *COMPARISON_HEADER], rows, 3)
        )
    for name, section in report["extra_splits"].items():
        gap = section.get("vs_main_split")
        if gap:
            caption = (
                f"Each checkpoint on {name} against itself on {gap['split']}, paired on the "
                f"{gap['num_items']} problems both hold (same {gap['paired_on']}): what the split's wording changes."
            )
            rows = [
                comparison_row(label, metric, values)
                for label, comparison in gap["comparisons"].items()
                for metric, values in comparison.items()
            ]
            tables.append((caption, ["checkpoint", *COMPARISON_HEADER[1:]], rows, 2))
    return tables


def ranking_agreement_rows(summary: dict[str, Any]) -> list[list[str]]:
    """[checkpoint, mode, scorer, agreement [CI], prompts, pairs] rows, for the Markdown and HTML reports."""
    rows = []
    for name, s in summary.items():
        for mode, rewards in s.get("rewards", {}).items():
            for scorer, entry in sorted(rewards.items()):
                agreement = entry.get("ranking_agreement")
                if agreement:
                    rows.append(
                        [
                            name,
                            mode,
                            scorer,
                            num_ci(agreement, 3),
                            str(agreement["items"]),
                            str(agreement["pairs"]),
                        ]
                    )
    return rows


def kl_references(report: dict[str, Any]) -> list[str]:
    """The checkpoints besides the base that KL was measured to (`kl_to`), in the order first seen."""
    refs: list[str] = []
    for s in report["summary"].values():
        for key in s:
            ref = key.removeprefix("kl_to_")
            if key.startswith("kl_to_") and ref != "base" and ref not in refs:
                refs.append(ref)
    return refs


def kl_cells(report: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """A checkpoint's KL to the base, then to each `kl_references` checkpoint ("-" where not measured)."""
    return [num_ci(s.get("kl_to_base"))] + [num_ci(s.get(f"kl_to_{ref}")) for ref in kl_references(report)]


def kl_headers(report: dict[str, Any], per: str = " /token") -> list[str]:
    return [f"KL to {ref}{per}" for ref in ["base", *kl_references(report)]]


def gold_rows(report: dict[str, Any]) -> list[list[str]]:
    """[checkpoint, gold mean greedy [CI], gold mean sampled [CI], truncated %, mean tokens, KL to base,
    KL to each `kl_to` checkpoint, reference NLL] rows: the top table of a report without verdicts, measured by its `gold_scorer`."""
    gold = report.get("gold_scorer")
    rows = []
    for name, s in report["summary"].items():
        mode = "sampled" if "sampled_mean_tokens" in s else "greedy"
        rewards = s.get("rewards", {})
        rows.append(
            [
                name,
                num_ci((rewards.get("greedy") or {}).get(gold), 3),
                num_ci((rewards.get("sampled") or {}).get(gold), 3),
                pct_ci(s.get(f"{mode}_truncation_rate"), s.get(f"{mode}_truncation_rate_ci")),
                f"{s.get(f'{mode}_mean_tokens', 0):.1f} ({mode})",
                *kl_cells(report, s),
                num_ci(s.get("reference_nll"), 3),
            ]
        )
    return rows


def reward_comparison_rows(report: dict[str, Any]) -> list[list[str]]:
    """[comparison, scorer, mode, diff [CI], items] rows of the paired comparisons of scorer means."""
    rows = []
    for label, by_scorer in (report.get("reward_comparisons") or {}).items():
        for scorer, by_mode in sorted(by_scorer.items()):
            for mode, d in by_mode.items():
                diff = f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                rows.append([label, scorer, mode, diff, str(d.get("items", ""))])
    return rows


def num_ci(entry: dict | None, digits: int = 4) -> str:
    if not entry or entry.get("value") is None or entry["value"] != entry["value"]:
        return "-"
    ci = entry.get("ci") or [None, None]
    if ci[0] is None or ci[0] != ci[0]:
        return f"{entry['value']:.{digits}f}"
    return f"{entry['value']:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def settings_line(report: dict[str, Any]) -> str:
    generation = report.get("generation") or report.get("settings", {})
    modes = []
    if generation.get("greedy", True):
        modes.append("greedy")
    if generation.get("num_samples"):
        modes.append(
            f"{generation['num_samples']} samples per item at temperature {generation.get('temperature')}"
        )
    return (
        f"{report['num_items']} items of `{report['data_source']}` (split `{report['split']}`); "
        f"{' and '.join(modes)}, max {generation.get('max_new_tokens')} new tokens, seed {generation.get('seed')}."
    )
