"""The over-optimisation curve of an rl stage, for the eval report: gold and proxy against sqrt(KL).

An rl stage with a learned reward, a gold reward and held-out prompts (`eval_examples`) records, at
each of its held-out evaluations, the gold and proxy means with their 95 % intervals and the mean
per-token KL from the policy to its start (the SFT policy), in its results (`COMPLETE`:
`overoptimisation.heldout`, see ntp_rl/stages/overoptimisation.py). Plotted against sqrt(KL) this is
Gao et al. 2022's Figure 1: the proxy rises throughout while the gold rises, peaks and falls. The
report carries it per checkpoint that came from such a stage (`overoptimisation` in report.json), as
a table in report.md and report.html and a plot in report.html, and beside it what the policy wrote
on a few held-out prompts at its first evaluation, at the gold's best and at its last (`examples`,
from the stage's `heldout_samples.jsonl`): over-optimisation is easiest to believe when read. Nothing
here runs a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ntp_rl.stats import finite_number

STAGE_RESULTS = "COMPLETE"  # a finished stage's results (stages/common.py writes it)
HELDOUT_SAMPLES = (
    "heldout_samples.jsonl"  # every held-out completion, scored (stages/heldout_kl.py writes it)
)
EXAMPLE_PROMPTS = 3  # held-out prompts whose completions the report shows at each chosen evaluation
EXAMPLE_HEADER = ["step", "prompt", "completion", "gold", "proxy"]
CARRIED = (
    "proxy",
    "gold",
    "samples",
    "min_z",
    "kl_estimator",
    "peak_step",
    "flagged_peak_step",
    "flagged_at_step",
    "flagged_kind",
    "warnings",
    "proxy_drops",
)
HEADER = ["step", "KL / token", "sqrt(KL)", "gold [95% CI]", "proxy [95% CI]", "mark"]


def read_curve(stage_dir: Path | None) -> dict[str, Any] | None:
    """The held-out curve a finished rl stage recorded, with what the monitor found; None without one."""
    if stage_dir is None:
        return None
    try:
        results = json.loads((stage_dir / STAGE_RESULTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    monitor = results.get("overoptimisation") if isinstance(results, dict) else None
    heldout = monitor.get("heldout") if isinstance(monitor, dict) else None
    if not isinstance(heldout, dict) or not heldout.get("curve"):
        return None
    names = {"proxy": monitor.get("proxy"), "gold": monitor.get("gold")}
    data = {**names, **{key: heldout.get(key) for key in CARRIED[2:]}, "curve": heldout["curve"]}
    curve = heldout["curve"]
    steps = [p.get("step") for p in curve]
    best = data.get("peak_step")
    after = [
        p for p in curve if best is not None and p.get("step", 0) > best and finite_number(p.get("gold"))
    ]
    lowest = min(after, key=lambda p: p["gold"])["step"] if after else None
    chosen = [("start", steps[0]), ("gold's best", best), ("gold's lowest after its best", lowest)]
    chosen += [("last", steps[-1])]
    data["examples"] = read_examples(stage_dir / HELDOUT_SAMPLES, chosen, names["gold"], names["proxy"])
    # Which prompts the examples are: chosen by their fall where the gold has a point after its best.
    data["examples_of"] = (
        "the held-out prompts whose gold fell most after its best"
        if lowest is not None
        else "the first held-out prompts (no evaluation after the gold's best)"
    )
    return data


def read_heldout_rows(path: Path, until_step: int) -> dict[int, list[dict[str, Any]]]:
    """The rows of `heldout_samples.jsonl` (stages/heldout_kl.py writes them) per evaluation step, up
    to `until_step`, in the file's order; {} without the file. A line cut short by an interruption
    is skipped."""
    rows: dict[int, list[dict[str, Any]]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int) and step <= until_step:
            rows.setdefault(step, []).append(record)
    return rows


def read_examples(path: Path, chosen: list[tuple[str, Any]], gold: Any, proxy: Any) -> list[dict[str, Any]]:
    """At each (what, step) of `chosen` (None: skipped), one completion of each of `EXAMPLE_PROMPTS`
    held-out prompts, the same at every step, with its gold and proxy scores; [] without the file.

    The prompts shown are those whose mean gold fell most from the gold's best (`chosen[1]`) to the
    lowest evaluation after it (`chosen[2]`, else the last): where the turn shows, if anywhere.
    """
    from ntp_rl.rewards.completions import completion_text

    wanted = {step for _, step in chosen if isinstance(step, int)}
    recorded = read_heldout_rows(path, max(wanted)) if wanted else {}
    by_step: dict[Any, dict[str, list[dict[str, Any]]]] = {}
    for step in wanted & recorded.keys():
        for row in recorded[step]:
            by_step.setdefault(step, {}).setdefault(str(row.get("prompt")), []).append(row)

    def mean_gold(step: Any, prompt: str) -> float | None:
        scores = [(r.get("rewards") or {}).get(gold) for r in by_step.get(step, {}).get(prompt, [])]
        scores = [v for v in scores if finite_number(v)]
        return sum(scores) / len(scores) if scores else None

    best_step = chosen[1][1]
    low_step = chosen[2][1] if chosen[2][1] is not None else chosen[-1][1]
    candidates = list(by_step.get(best_step, {}))

    def fall(prompt: str) -> float:
        before, after = mean_gold(best_step, prompt), mean_gold(low_step, prompt)
        return before - after if before is not None and after is not None else float("-inf")

    prompts = sorted(candidates, key=fall, reverse=True)[:EXAMPLE_PROMPTS]  # stable: file order on ties
    examples, seen = [], set()
    for _, step in chosen:
        if step is None or step in seen or step not in by_step:
            continue
        seen.add(step)
        rows = []
        for prompt in prompts:
            completions = by_step[step].get(prompt)
            if not completions:
                continue
            rewards = completions[0].get("rewards") or {}
            rows.append(
                {
                    "prompt": prompt,
                    "completion": completion_text(completions[0].get("completion")),
                    "gold": rewards.get(gold),
                    "proxy": rewards.get(proxy),
                }
            )
        labels = [w for w, s in chosen if s == step]
        examples.append({"step": step, "what": ", ".join(labels), "rows": rows})
    return examples


def example_rows(data: dict[str, Any]) -> list[list[str]]:
    """The examples as table rows: step (and which evaluation), prompt, completion, gold, proxy."""
    return [
        [
            f"{example['step']} ({example['what']})",
            row["prompt"],
            row["completion"],
            _num(row["gold"]),
            _num(row["proxy"]),
        ]
        for example in data.get("examples") or []
        for row in example["rows"]
    ]


def _num(value: Any, digits: int = 3) -> str:
    return "-" if not isinstance(value, (int, float)) or value != value else f"{value:.{digits}f}"


def _with_interval(value: Any, interval: Any) -> str:
    if not isinstance(interval, (int, float)):
        return _num(value)
    return f"{_num(value)} [{_num(value - interval)}, {_num(value + interval)}]"


def rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per held-out evaluation: step, KL, sqrt(KL), gold and proxy with intervals, a mark."""
    out = []
    for point in data["curve"]:
        marks = []
        if point["step"] == data.get("peak_step"):
            marks.append("gold's best")
        marks += [f"flagged: {kind}" for kind, _, at in warnings_of(data) if at == point["step"]]
        out.append(
            [
                str(point["step"]),
                _num(point.get("kl"), 4),
                _num(point.get("sqrt_kl")),
                _with_interval(point.get("gold"), point.get("gold_interval")),
                _with_interval(point.get("proxy"), point.get("proxy_interval")),
                ", ".join(marks),
            ]
        )
    return out


def _x(data: dict[str, Any], step: Any) -> str:
    point = next((p for p in data["curve"] if p["step"] == step), None)
    sqrt_kl = point.get("sqrt_kl") if point else None
    return f"step {step}" + (f", sqrt(KL) {sqrt_kl:.3f}" if isinstance(sqrt_kl, (int, float)) else "")


def headline(label: str, data: dict[str, Any]) -> str:
    """What the curve says in one paragraph: the rewards, where the gold peaked, whether it was flagged."""
    evaluations = [p["step"] for p in data["curve"]]
    text = (
        f"{label}: the learned reward {data.get('proxy')} (the proxy) and the gold {data.get('gold')} on "
        f"held-out prompts at {len(evaluations)} evaluations during RL ({data.get('samples')} completions "
        f"each; intervals 95 %), against sqrt of the mean per-token KL from the policy to its start "
        f"({data.get('kl_estimator') or '-'} estimator). The gold's best: {_x(data, data.get('peak_step'))}."
    )
    text += _proxy_words(data.get("proxy_drops"))
    warnings = warnings_of(data)
    if not warnings:
        return text + " The over-optimisation monitor did not warn."
    recorded = [w for w in data.get("warnings") or [] if isinstance(w, dict)]
    for index, (kind, peak, at) in enumerate(warnings):
        later = evaluations.index(at) - evaluations.index(peak) if {peak, at} <= set(evaluations) else None
        since = f" ({_x(data, peak)}" + (
            f"; {later} evaluation{'s' if later != 1 else ''} earlier)" if later is not None else ")"
        )
        warning = recorded[index] if index < len(recorded) else {}
        test = _test_words(warning, data)
        if kind == "fall":
            text += (
                f" The monitor flagged a fall at {_x(data, at)}: the gold below its best so far{since} "
                f"{test}, the proxy not below its value there."
            )
        else:
            text += (
                f" The monitor flagged a stall at {_x(data, at)}: the proxy up since the gold's best so "
                f"far{since} {test}, the gold no higher."
            )
        text += _top_words(warning.get("top_steps"), evaluations, at)
    if warnings[0][1] != data.get("peak_step"):
        text += " The gold later rose above the best the first warning referred to."
    return text


def _proxy_words(drops: Any) -> str:
    """Whether the proxy rose throughout: its drops below its best so far beyond its 95 % noise (an
    older record has none: nothing said)."""
    if not isinstance(drops, list):
        return ""
    if not drops:
        return " The proxy never fell below its best so far beyond its 95 % noise."
    listed = "; ".join(
        f"step {d.get('step')} ({_num(d.get('change'))} from its best at step {d.get('best_step')})"
        for d in drops
        if isinstance(d, dict)
    )
    return f" The proxy fell below its best so far beyond its 95 % noise at {listed}."


def _top_words(top: Any, evaluations: list[Any], at: Any) -> str:
    """The gold's top before a warning, where it was more than its best (older records have none): on
    a flat top of several evaluations, the turn may have begun at any of them."""
    if not isinstance(top, list) or len(top) < 2 or top[-1] not in evaluations or at not in evaluations:
        return ""
    later = evaluations.index(at) - evaluations.index(top[-1])
    return (
        f" The gold's top, the evaluations within the 95 % noise of that best (paired by prompt where "
        f"known): steps {', '.join(str(s) for s in top)}, the last of them {later} evaluation"
        f"{'s' if later != 1 else ''} before the warning."
    )


def _test_words(warning: dict[str, Any], data: dict[str, Any]) -> str:
    """How far beyond its noise the change was, as the warning recorded it (older records: the rule)."""
    statistic, threshold = warning.get("statistic"), warning.get("threshold")
    if "statistic" in warning and statistic is None:
        return "beyond its noise (the samples had no spread to measure the change against)"
    if not isinstance(statistic, (int, float)) or not isinstance(threshold, (int, float)):
        return f"by more than {_num(data.get('min_z'), 1)} combined standard errors"
    if warning.get("paired_prompts"):
        return (
            f"beyond its noise (paired by prompt over {warning['paired_prompts']} held-out prompts: "
            f"t = {statistic:+.1f}, threshold {threshold:.2f})"
        )
    return f"by {abs(statistic):.1f} combined standard errors (threshold {threshold:g})"


def warnings_of(data: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(kind, the gold's best it refers to, the step that warned) per warning, first first.

    A stage recorded before stall warnings existed has only the fall's `flagged_*` keys.
    """
    recorded = data.get("warnings")
    if isinstance(recorded, list):
        return [
            (w.get("kind"), w.get("peak_step"), w.get("at_step")) for w in recorded if isinstance(w, dict)
        ]
    if data.get("flagged_at_step") is None:
        return []
    return [("fall", data.get("flagged_peak_step"), data.get("flagged_at_step"))]
