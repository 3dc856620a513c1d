"""The "Beyond next-token prediction" section as Markdown, HTML (plots inlined) and PNG files.

`section` is the `beyond_ntp` dict of a report (`run.beyond_ntp_section`). Plots are drawn with
matplotlib's Agg backend: probe accuracy by layer (one line per checkpoint, the majority baseline
dashed), rhyme rates, credit shares by distance and by layer, and NLL / KL against reward gained.
Labels and model text are HTML-escaped.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from html import escape
from typing import Any

TITLE = "Beyond next-token prediction"
WHAT = {
    "future": "Future-token probes: a linear probe reads the token at t+k from the hidden state at t "
    "(held-out texts; k = 0 is the current token, a check that the probe can read tokens at all).",
    "answer": "Answer before generation: the gold answer's last digit and size bucket, read at the last "
    "prompt token, before any answer token exists (held-out items).",
    "rhyme": "Rhyme planning: the rhyme family of the line to come, read at the line break of built-in "
    "couplets; and how often the generated second line really rhymes.",
    "credit": "Gradient credit by distance: of the gradient reaching the hidden state at t from the next "
    "K losses, the share that comes from the loss k steps ahead (k = 1 is the next-token loss). The "
    "control detaches attention keys and values, so k > 1 must be 0.",
    "distance_from_ntp": "Distance from next-token prediction: per-token NLL of reference text and KL to "
    "the base against the accuracy gained over the reference.",
}


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) or x != x else f"{100 * x:.1f}"


def _num(x: Any, digits: int = 3) -> str:
    return "-" if not isinstance(x, (int, float)) or x != x else f"{x:.{digits}f}"


# --------------------------------------------------------------------------------------------
# Rows shared by the Markdown and HTML tables


def _probe_row(entry: dict[str, Any]) -> list[str]:
    return [
        _pct(entry.get("majority")),
        str(entry.get("best_layer", "-")),
        _pct(entry.get("best_accuracy")),
        _pct((entry.get("accuracy") or [None])[-1]),
        _pct(max(entry.get("shuffled") or [float("nan")])),
    ]


PROBE_HEADER = ["majority %", "best layer", "best acc %", "last layer acc %", "shuffled-label max %"]


def tables(section: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(instrument, title, header, rows) for every instrument in the section."""
    out = []
    future = section.get("future") or {}
    if future:
        rows = []
        for label, result in future.items():
            for k, entry in result["by_distance"].items():
                rows.append([label, k, *_probe_row(entry), _pct(result["coverage"].get(k))])
        out.append(("future", "Future-token probes", ["checkpoint", "k", *PROBE_HEADER, "in vocab %"], rows))
    answer = section.get("answer") or {}
    if answer:
        rows = [
            [label, target, _pct(entry.get("chance")), *_probe_row(entry)]
            for label, result in answer.items()
            for target, entry in result["targets"].items()
        ]
        out.append(
            ("answer", "Answer before generation", ["checkpoint", "target", "chance %", *PROBE_HEADER], rows)
        )
    rhyme = section.get("rhyme") or {}
    if rhyme:
        rows = [
            [label, split, *_probe_row(entry)]
            for label, result in rhyme.items()
            for split, entry in result["probe"].items()
        ]
        out.append(
            ("rhyme", "Rhyme planning: probe at the line break", ["checkpoint", "split", *PROBE_HEADER], rows)
        )
        rows = []
        for label, result in rhyme.items():
            generation = result.get("generation")
            if generation:
                rates = generation["rates"]
                rows.append(
                    [label, str(generation["num_generated"]), _pct(rates["rhymes"]), _pct(rates["same_word"]),
                     _pct(rates["other_family"]), _pct(rates["no_family"]), _pct(rates["empty"]),
                     _pct(generation["chance_rate"])]
                )  # fmt: skip
        if rows:
            header = ["checkpoint", "generated", "rhymes %", "same word %", "other family %", "no family %",
                      "no word %", "chance %"]  # fmt: skip
            out.append(("rhyme", "Rhyme planning: generated second lines", header, rows))
    credit = section.get("credit") or {}
    if credit:
        ks = next(iter(credit.values()))["distances"]
        rows = []
        for label, result in credit.items():
            for name, entry in ((label, result), (f"{label} (control: k/v detached)", result.get("control"))):
                if entry:
                    rows.append(
                        [name, *[_pct(s) for s in entry["share"]], _pct(entry["share_beyond_1"]),
                         _pct(entry["mass_beyond_k"])]
                    )  # fmt: skip
        header = ["checkpoint", *[f"k={k} %" for k in ks], "k>1 %", f"mass beyond k={ks[-1]} %"]
        out.append(("credit", "Gradient credit by distance", header, rows))
    distance = section.get("distance_from_ntp")
    if distance:
        rows = [
            [label, _pct(p["accuracy"]), _num(None if p["reward_gained"] is None else 100 * p["reward_gained"], 1),
             _num(p["reference_nll"]), _num(p["kl_to_base"], 4)]
            for label, p in distance["points"].items()
        ]  # fmt: skip
        header = ["checkpoint", f"{distance['accuracy_metric']} %", "gained (points)", "reference NLL / token",
                  "KL to base / token"]  # fmt: skip
        out.append(("distance_from_ntp", "Distance from next-token prediction", header, rows))
    return out


# --------------------------------------------------------------------------------------------
# Plots (PNG bytes)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _png(fig) -> bytes:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _by_layer_panels(panels: list[tuple[str, dict[str, dict[str, Any]]]], title: str) -> bytes:
    """One panel per (name, {checkpoint: probe entry}): accuracy by layer, majority dashed."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    for ax, (name, entries) in zip(axes[0], panels, strict=True):
        for index, (label, entry) in enumerate(entries.items()):
            color = f"C{index % 10}"
            accuracy = [100 * a for a in entry["accuracy"]]
            ax.plot(range(len(accuracy)), accuracy, "-", marker=".", color=color, label=label)
            ax.axhline(100 * entry["majority"], color=color, linestyle="--", linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("held-out accuracy % (dashed: majority)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig)


def plot_future(future: dict[str, Any]) -> bytes:
    distances = list(next(iter(future.values()))["by_distance"])
    panels = [
        (f"k = {k}" + (" (current token)" if k == "0" else ""),
         {label: r["by_distance"][k] for label, r in future.items()})
        for k in distances
    ]  # fmt: skip
    return _by_layer_panels(panels, "Token at t+k read from the hidden state at t")


def plot_answer(answer: dict[str, Any]) -> bytes:
    targets = list(next(iter(answer.values()))["targets"])
    panels = [(target, {label: r["targets"][target] for label, r in answer.items()}) for target in targets]
    return _by_layer_panels(panels, "Answer property read at the last prompt token")


def plot_rhyme(rhyme: dict[str, Any]) -> bytes:
    splits = list(next(iter(rhyme.values()))["probe"])
    panels = [
        (split.replace("_", " "), {label: r["probe"][split] for label, r in rhyme.items()})
        for split in splits
    ]
    return _by_layer_panels(panels, "Rhyme family read at the line break")


def plot_rhyme_rates(rhyme: dict[str, Any]) -> bytes | None:
    rates = {label: r["generation"] for label, r in rhyme.items() if r.get("generation")}
    if not rates:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.5, 1.2 * len(rates) + 2), 3.0))
    labels = list(rates)
    ax.bar(range(len(labels)), [100 * rates[label]["rhyme_rate"] for label in labels])
    ax.axhline(100 * next(iter(rates.values()))["chance_rate"], color="k", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("% second lines that rhyme")
    ax.set_ylim(0, 100)
    ax.set_title("Generated second lines (dashed: 1 / families)")
    return _png(fig)


def plot_credit(credit: dict[str, Any]) -> bytes:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    series = []
    for label, result in credit.items():
        series.append((label, result))
        if result.get("control"):
            series.append((f"{label} control", result["control"]))
    ks = next(iter(credit.values()))["distances"]
    width = 0.8 / len(series)
    for j, (label, entry) in enumerate(series):
        xs = [k + (j - (len(series) - 1) / 2) * width for k in ks]
        left.bar(xs, [100 * s for s in entry["share"]], width=width, label=label,
                 hatch="//" if label.endswith("control") else None)  # fmt: skip
        right.plot(range(len(entry["share_beyond_1_by_layer"])),
                   [100 * s for s in entry["share_beyond_1_by_layer"]], marker=".", label=label)  # fmt: skip
    left.set_xticks(ks)
    left.set_xlabel("k (loss k steps ahead)")
    left.set_ylabel("% of credit from the next K losses")
    left.legend(fontsize=7)
    right.set_xlabel("layer (0 = embeddings)")
    right.xaxis.set_major_locator(_integer_ticks())
    right.set_ylabel("% from k > 1")
    right.set_ylim(0, 100)
    fig.suptitle("Where the gradient reaching position t comes from")
    return _png(fig)


def plot_distance(distance: dict[str, Any]) -> bytes | None:
    points = {label: p for label, p in distance["points"].items() if p["reward_gained"] is not None}
    if not points:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2))
    for ax, key, name in (
        (axes[0], "reference_nll", "reference NLL / token"),
        (axes[1], "kl_to_base", "KL to base / token"),
    ):
        for index, (label, p) in enumerate(points.items()):
            if p[key] is None:
                continue
            ax.scatter([100 * p["reward_gained"]], [p[key]], color=f"C{index % 10}", label=label)
            ax.annotate(label, (100 * p["reward_gained"], p[key]), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")  # fmt: skip
        metric = distance["accuracy_metric"].replace("_", " ")
        ax.set_xlabel(f"{metric} gained over {distance['reference']} (points)")
        ax.margins(0.2)  # room for the labels of the outermost points
        ax.set_ylabel(name)
    fig.suptitle("Distance from next-token prediction against reward gained")
    return _png(fig)


def plots(section: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(file stem, alt text, PNG) for every plot the section supports."""
    makers: list[tuple[str, str, str, Callable[[Any], bytes | None]]] = [
        ("future", "probe_future", "future-token probe accuracy by layer and distance", plot_future),
        ("answer", "probe_answer", "answer probe accuracy by layer", plot_answer),
        ("rhyme", "probe_rhyme", "rhyme-family probe accuracy by layer", plot_rhyme),
        ("rhyme", "probe_rhyme_rates", "share of generated second lines that rhyme", plot_rhyme_rates),
        ("credit", "probe_credit", "gradient credit by distance and by layer", plot_credit),
        ("distance_from_ntp", "distance_from_ntp", "NLL and KL against reward gained", plot_distance),
    ]
    out = []
    for key, stem, alt, make in makers:
        if section.get(key):
            png = make(section[key])
            if png:
                out.append((stem, alt, png))
    return out


# --------------------------------------------------------------------------------------------
# Markdown and HTML


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown_section(
    section: dict[str, Any], images: dict[str, str] | None = None, level: int = 2
) -> str:
    """The section in Markdown; `images` maps plot stems to files to link (none in eval reports)."""
    head = "#" * level
    lines = [f"{head} {TITLE}", ""]
    if section.get("note"):
        lines += [f"Note: {_md(section['note'])}.", ""]
    seen = set()
    for key, title, header, rows in tables(section):
        if key not in seen:
            lines += [f"_{WHAT[key]}_", ""]
            seen.add(key)
        lines += [f"{head}# {title}", ""]
        lines += ["| " + " | ".join(_md(h) for h in header) + " |", "|---" * len(header) + "|"]
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
        lines.append("")
    for name, failed in (section.get("errors") or {}).items():
        for label, message in failed.items():
            lines += [f"- {name} on {_md(label)}: not measured ({_md(message)})"]
        lines.append("")
    for stem, file in (images or {}).items():
        lines += [f"![{stem}]({file})", ""]
    seconds = {
        label: sum(section[name][label].get("seconds", 0) for name in ("future", "answer", "rhyme", "credit")
                   if label in (section.get(name) or {}))
        for label in section.get("checkpoints", [])
    }  # fmt: skip
    if seconds:
        lines.append("Probe time: " + ", ".join(f"{label} {s:.0f} s" for label, s in seconds.items()) + ".")
    return "\n".join(lines).rstrip() + "\n"


def render_html_section(section: dict[str, Any]) -> str:
    parts = [f"<h2>{escape(TITLE)}</h2>"]
    if section.get("note"):
        parts.append(f"<p>Note: {escape(section['note'])}.</p>")
    seen = set()
    for key, title, header, rows in tables(section):
        if key not in seen:
            parts.append(f"<p><em>{escape(WHAT[key])}</em></p>")
            seen.add(key)
        head = "".join(f"<th>{escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        parts.append(
            f"<h3>{escape(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    for name, failed in (section.get("errors") or {}).items():
        for label, message in failed.items():
            parts.append(f"<p>{escape(name)} on {escape(label)}: not measured ({escape(message)})</p>")
    for _, alt, png in plots(section):
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">')
    examples = [
        (label, example)
        for label, result in (section.get("rhyme") or {}).items()
        for example in (result.get("generation") or {}).get("examples", [])
    ]
    if examples:
        rows = "".join(
            f"<tr><td>{escape(label)}</td><td><pre>{escape(e['first_line'])}</pre></td>"
            f"<td><pre>{escape(e['second_line'])}</pre></td><td>{escape(e['outcome'])}</td></tr>"
            for label, e in examples
        )
        parts.append(
            "<details><summary>generated second lines (examples)</summary><table><thead><tr><th>checkpoint</th>"
            f"<th>first line</th><th>second line</th><th>outcome</th></tr></thead><tbody>{rows}</tbody></table></details>"
        )
    return "\n".join(parts)
