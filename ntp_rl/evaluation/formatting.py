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
