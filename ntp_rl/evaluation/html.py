"""`report.html`: one self-contained page (no scripts, no external files) from a report dict.

Plots are drawn with matplotlib's Agg backend and inlined as base64 PNG: accuracy with 95 % interval
bars per checkpoint, pass@k and maj@k curves, completion-length histograms and, for checkpoints that
came from a run, the run's training reward curves (`metrics.jsonl`) and, for an rl stage with a
learned and a gold reward, gold and proxy against sqrt(KL) at its held-out evaluations. Every piece
of text that came from a model, a data set or a user (completions, prompts, labels, paths) is
HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from typing import Any

from ntp_rl.evaluation.formatting import (
    gold_rows,
    kl_cells,
    kl_headers,
    num_ci,
    pct_ci,
    ranking_agreement_rows,
    reward_comparison_rows,
    settings_line,
    split_tables,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; margin: 0; font-size: 90%; max-width: 60em; }
.ok { background: #e9f7ec; } .bad { background: #fbeaea; }
img { max-width: 100%; }
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(data: str, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(summary: dict[str, Any]) -> str | None:
    series = [("greedy_accuracy", "greedy accuracy"), ("sampled_pass1", "sampled pass@1")]
    series = [(key, name) for key, name in series if any(key in s for s in summary.values())]
    if not series:
        return None
    plt = _figure()
    labels = list(summary)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(labels) + 2), 3.2))
    width = 0.8 / len(series)
    for j, (key, name) in enumerate(series):
        xs, ys, low, high = [], [], [], []
        for i, label in enumerate(labels):
            s = summary[label]
            if key not in s:
                continue
            ci = s.get(f"{key}_ci") or [s[key], s[key]]
            xs.append(i + (j - (len(series) - 1) / 2) * width)
            ys.append(100 * s[key])
            low.append(100 * (s[key] - ci[0]))
            high.append(100 * (ci[1] - s[key]))
        ax.bar(xs, ys, width=width, yerr=[low, high], capsize=4, label=name)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("% correct (95% CI)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per checkpoint")
    return _png(fig)


def plot_pass_at_k(summary: dict[str, Any]) -> str | None:
    if not any(s.get("pass_at_k") for s in summary.values()):
        return None
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for index, (label, s) in enumerate(summary.items()):
        color = f"C{index % 10}"
        for key, style, name in (("pass_at_k", "-o", "pass"), ("maj_at_k", "--s", "maj")):
            values = s.get(key) or {}
            if values:
                ks = sorted(values, key=int)
                ax.plot(
                    [int(k) for k in ks],
                    [100 * values[k] for k in ks],
                    style,
                    color=color,
                    label=f"{label} {name}@k",
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title("pass@k (solid) and maj@k (dashed)")
    return _png(fig)


def plot_lengths(summary: dict[str, Any]) -> str | None:
    modes = sorted({m for s in summary.values() for m in s.get("lengths", {})})
    if not modes:
        return None
    plt = _figure()
    fig, axes = plt.subplots(1, len(modes), figsize=(5.0 * len(modes), 3.0), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for label, s in summary.items():
            histogram = s.get("lengths", {}).get(mode, {}).get("histogram")
            if histogram:
                ax.stairs(histogram["counts"], histogram["edges"], label=label)
        ax.set_xlabel(f"completion tokens ({mode})")
        ax.set_ylabel("completions")
        ax.legend(fontsize=7)
    fig.suptitle("Completion lengths")
    return _png(fig)


def plot_training_curves(curves: dict[str, dict[str, list]]) -> str | None:
    curves = {label: series for label, series in curves.items() if series}
    if not curves:
        return None
    plt = _figure()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 3.0), squeeze=False)
    for ax, (label, series) in zip(axes[0], curves.items(), strict=True):
        for key, points in series.items():
            if points:  # markers, so that a run with one logging step still shows its point
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=key)
        ax.set_title(f"training: {label}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return _png(fig)


def plot_overoptimisation(curves: dict[str, dict[str, Any]]) -> str | None:
    """Gold (left axis) and proxy (right axis) against sqrt(KL) to the start, per rl checkpoint: Gao et
    al.'s Figure 1. Bars: 95 % intervals. Dotted: the gold's best; dash-dotted and dashed: where the
    monitor flagged a stall and a fall."""
    from ntp_rl.evaluation.overoptimisation_curve import warnings_of

    curves = {label: data for label, data in curves.items() if data.get("curve")}
    if not curves:
        return None
    plt = _figure()
    fig, axes = plt.subplots(1, len(curves), figsize=(6.0 * len(curves), 3.6), squeeze=False)
    for ax, (label, data) in zip(axes[0], curves.items(), strict=True):
        points = data["curve"]
        # sqrt(KL) when every evaluation has one, else the step (an older run without the KL)
        by_kl = all(isinstance(p.get("sqrt_kl"), (int, float)) for p in points)
        xs = [p["sqrt_kl"] if by_kl else p["step"] for p in points]
        where = {p["step"]: x for p, x in zip(points, xs, strict=True)}
        gold_bars = [p.get("gold_interval") or 0.0 for p in points]
        proxy_bars = [p.get("proxy_interval") or 0.0 for p in points]
        gold = ax.errorbar(
            xs, [p["gold"] for p in points], yerr=gold_bars, fmt="-o", color="C0", capsize=3, label="gold"
        )
        ax.set_ylabel(f"gold ({data.get('gold')})", color="C0")
        twin = ax.twinx()
        proxy = twin.errorbar(
            xs, [p["proxy"] for p in points], yerr=proxy_bars, fmt="-s", color="C1", capsize=3, label="proxy"
        )
        twin.set_ylabel(f"proxy ({data.get('proxy')})", color="C1")
        handles = [gold, proxy]
        if data.get("peak_step") in where:
            handles.append(
                ax.axvline(where[data["peak_step"]], color="C0", linestyle=":", label="gold's best")
            )
        for kind, _, at in warnings_of(data):
            if at in where:
                style = "--" if kind == "fall" else "-."
                handles.append(ax.axvline(where[at], color="C3", linestyle=style, label=f"flagged: {kind}"))
        ax.set_xlabel("sqrt(KL to the start, per token)" if by_kl else "step (no KL recorded)")
        ax.set_title(f"over-optimisation: {label} (held-out)")
        # Below the axes: inside, the two axes' points would run under it.
        ax.legend(
            handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, frameon=False
        )
    return _png(fig)


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if i >= numeric_from else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pre(text: Any) -> str:
    return f"<pre>{escape(str(text))}</pre>"


def _gold_sections(report: dict[str, Any]) -> list[str]:
    """Summary, paired comparisons of scorer means and samples side by side, for a report without verdicts."""
    gold = report.get("gold_scorer") or "-"
    header = ["checkpoint", f"{gold} greedy [95% CI]", f"{gold} sampled [95% CI]", "truncated %"]
    header += ["mean tokens", *kl_headers(report, " / token"), "reference NLL / token"]
    parts = ["<h2>Summary</h2>", _table(header, gold_rows(report))]
    compared = reward_comparison_rows(report)
    if compared:
        parts += [
            "<h2>Paired comparisons of mean scores (same items)</h2>",
            "<p>Difference of each scorer's mean per item, paired bootstrap [95% CI].</p>",
            _table(["comparison", "scorer", "mode", "diff [95% CI]", "items"], compared, numeric_from=3),
        ]
    if report.get("side_by_side"):
        parts += [
            "<h2>Samples side by side</h2>",
            "<p>Each checkpoint's first sample of the first items, with its scores.</p>",
        ]
        for item in report["side_by_side"]:
            parts += [
                f"<h3>#{escape(str(item['index']))} ({escape(str(item['mode']))})</h3>",
                _pre(item["prompt"]),
            ]
            for who, entry in item["completions"].items():
                scores = ", ".join(
                    f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in entry["scores"].items()
                )
                parts += [f"<p><b>{escape(str(who))}</b> ({escape(scores)}):</p>", _pre(entry["text"])]
    return parts


def render_html(report: dict[str, Any]) -> str:
    summary = report["summary"]
    title = report.get("title") or f"{report.get('run')} / {report.get('stage')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Eval: {escape(str(title))}</title><style>{STYLE}</style></head><body>",
        f"<h1>Eval: {escape(str(title))}</h1>",
        f"<p>{escape(settings_line(report))}</p>",
    ]
    if "side_by_side" in report:  # no answers were checked: the gold scorer's means measure
        parts += _gold_sections(report)
    else:
        rows = []
        for name, s in summary.items():
            mode = "greedy" if "greedy_mean_tokens" in s else "sampled"
            rows.append(
                [
                    name,
                    pct_ci(s.get("greedy_accuracy"), s.get("greedy_accuracy_ci")),
                    pct_ci(s.get("sampled_pass1"), s.get("sampled_pass1_ci")),
                    pct_ci(s.get(f"{mode}_parse_failure_rate"), s.get(f"{mode}_parse_failure_rate_ci")),
                    pct_ci(s.get(f"{mode}_truncation_rate"), s.get(f"{mode}_truncation_rate_ci")),
                    f"{s.get(f'{mode}_mean_tokens', 0):.1f}",
                    *kl_cells(report, s),
                    num_ci(s.get("reference_nll"), 3),
                ]
            )
        parts += [
            "<h2>Summary</h2>",
            _table(
                [
                    "checkpoint",
                    "greedy acc % [95% CI]",
                    "sampled pass@1 % [95% CI]",
                    "parse failures %",
                    "truncated %",
                    "mean tokens",
                    *kl_headers(report, " / token"),
                    "reference NLL / token",
                ],
                rows,
            ),
        ]
        for plot, alt in ((plot_accuracy(summary), "accuracy per checkpoint with 95% CI"),):
            if plot:
                parts.append(_img(plot, alt))
    tables = split_tables(report)
    if tables:
        parts.append("<h2>Splits side by side</h2>")
    for caption, header, table_rows, numeric_from in tables:
        parts += [f"<p>{escape(caption)}</p>", _table(header, table_rows, numeric_from)]

    ks = sorted({k for s in summary.values() for k in s.get("pass_at_k", {})}, key=int)
    if ks:
        rows = [
            [name]
            + [pct_ci(s.get("pass_at_k", {}).get(k), (s.get("pass_at_k_ci") or {}).get(k)) for k in ks]
            + [pct_ci(s.get("maj_at_k", {}).get(k), (s.get("maj_at_k_ci") or {}).get(k)) for k in ks]
            for name, s in summary.items()
        ]
        parts += ["<h2>pass@k and maj@k (sampled)</h2>"]
        parts.append(_table(["checkpoint"] + [f"pass@{k} %" for k in ks] + [f"maj@{k} %" for k in ks], rows))
        plot = plot_pass_at_k(summary)
        if plot:
            parts.append(_img(plot, "pass@k and maj@k curves"))

    scorers = sorted({r for s in summary.values() for m in s.get("rewards", {}).values() for r in m})
    if scorers:
        rows = [
            [name, mode] + [num_ci(rewards.get(r), 3) for r in scorers]
            for name, s in summary.items()
            for mode, rewards in s.get("rewards", {}).items()
        ]
        parts += [
            "<h2>Mean reward per scorer [95% CI]</h2>",
            _table(["checkpoint", "mode", *scorers], rows, 2),
        ]
        agreement = ranking_agreement_rows(summary)
        if agreement:
            parts += [
                "<h2>Does each scorer rank a right answer above a wrong one?</h2>",
                "<p>Share of (right, wrong) pairs of samples of the same prompt that the scorer orders "
                "correctly (ties half; 0.5 is chance), mean over prompts with both [95% CI].</p>",
                _table(
                    ["checkpoint", "mode", "scorer", "agreement [95% CI]", "prompts", "pairs"], agreement, 3
                ),
            ]

    rows = []
    for name, s in summary.items():
        for mode, lengths in s.get("lengths", {}).items():
            rows.append(
                [name, mode]
                + [f"{lengths[k]:.1f}" for k in ("mean", "median", "p90")]
                + [
                    str(lengths["max"]),
                    pct_ci(lengths["truncation_rate"], lengths.get("truncation_rate_ci")),
                ]
            )
    if rows:
        parts += [
            "<h2>Completion lengths (tokens)</h2>",
            _table(["checkpoint", "mode", "mean", "median", "p90", "max", "truncated % [95% CI]"], rows, 2),
        ]
        plot = plot_lengths(summary)
        if plot:
            parts.append(_img(plot, "completion length histograms"))

    if report.get("comparisons"):
        rows = []
        for label, comparison in report["comparisons"].items():
            for metric, v in comparison.items():
                rows.append(
                    [
                        label,
                        metric,
                        f"{100 * v['diff']:+.1f} [{100 * v['ci_low']:+.1f}, {100 * v['ci_high']:+.1f}]",
                        str(v.get("wrong_to_right", "-")),
                        str(v.get("right_to_wrong", "-")),
                        f"{v['p_value']:.3g}" if "p_value" in v else "-",
                    ]
                )
        parts += [
            "<h2>Paired comparisons (same items)</h2>",
            _table(
                ["comparison", "metric", "diff (points) [95% CI]", "wrong→right", "right→wrong", "McNemar p"],
                rows,
                2,
            ),
        ]
    elif report.get("note"):
        parts.append(f"<p><em>{escape(report['note'])}</em></p>")

    for label, flip in (report.get("flips") or {}).items():
        parts.append(
            f"<h2>Flips: {escape(label)} ({escape(flip['mode'])})</h2>"
            f"<p>wrong→right: {flip['wrong_to_right']}, right→wrong: {flip['right_to_wrong']}</p>"
        )
        for kind, examples in flip["examples"].items():
            if not examples:
                continue
            who = list(examples[0]["completions"])
            rows_html = "".join(
                "<tr>"
                + f"<td>{example['index']}</td><td>{_pre(example['prompt'])}</td><td>{_pre(example['answer'])}</td>"
                + "".join(f"<td>{_pre(example['completions'][w])}</td>" for w in who)
                + "</tr>"
                for example in examples
            )
            head = "".join(f"<th>{escape(h)}</th>" for h in ["#", "prompt", "gold", *who])
            parts.append(
                f"<h3>{escape(kind.replace('_', ' '))}</h3><table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>"
            )

    if report.get("disagreements"):
        labels = list(summary)
        head = "".join(f"<th>{escape(h)}</th>" for h in ["#", "prompt", "gold", *labels])
        body = ""
        for item in report["disagreements"]:
            cells = ""
            for label in labels:
                completion = item["completions"].get(label)
                if completion is None:
                    cells += "<td></td>"
                    continue
                css = "ok" if completion["correct"] else "bad"
                cells += f'<td class="{css}">{_pre(completion["text"])}</td>'
            body += f"<tr><td>{item['index']}</td><td>{_pre(item['prompt'])}</td><td>{_pre(item['answer'])}</td>{cells}</tr>"
        parts += [
            "<h2>Side by side where checkpoints disagree</h2>",
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
        ]

    plot = plot_training_curves(report.get("training_curves") or {})
    if plot:
        parts += ["<h2>Training curves (metrics.jsonl)</h2>", _img(plot, "training reward curves")]

    curves = report.get("overoptimisation") or {}
    if curves:
        from ntp_rl.evaluation.overoptimisation_curve import (
            EXAMPLE_HEADER,
            HEADER,
            example_rows,
            headline,
            rows,
        )

        parts.append("<h2>Over-optimisation: gold and proxy against sqrt(KL), held-out, during RL</h2>")
        for label, data in curves.items():
            parts += [f"<p>{escape(headline(label, data))}</p>", _table(HEADER, rows(data))]
            if examples := example_rows(data):
                parts += [
                    f"<p>{escape(label)}: what the policy wrote on {escape(str(data.get('examples_of')))}"
                    " (one completion each):</p>",
                    _table(EXAMPLE_HEADER, examples, numeric_from=3),
                ]
        plot = plot_overoptimisation(curves)
        if plot:
            parts.append(_img(plot, "gold and proxy reward against sqrt(KL) to the start"))

    if report.get("beyond_ntp"):
        from ntp_rl.probes.render import render_html_section

        parts.append(render_html_section(report["beyond_ntp"]))

    provenance = report.get("provenance")
    if provenance:
        parts += [
            "<h2>Provenance</h2>",
            "<details><summary>suite, models and adapter hashes, versions, seeds, decoding</summary>",
            _pre(json.dumps(provenance, indent=1, default=str)),
            "</details>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
