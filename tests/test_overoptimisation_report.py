"""The eval report's over-optimisation section: an rl stage's held-out curve, gold and proxy vs sqrt(KL).

No model: the curve comes from the monitor fed a constructed rise-then-fall, written as a finished
stage's results, and read back by the report as the eval harness does.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from types import SimpleNamespace

from ntp_rl.evaluation.html import plot_overoptimisation, render_html
from ntp_rl.evaluation.overoptimisation_curve import headline, read_curve
from ntp_rl.evaluation.report import render_markdown
from ntp_rl.stages.overoptimisation import OveroptimisationMonitor

GOLDS = [0.40, 0.44, 0.48, 0.52, 0.56, 0.60, 0.52, 0.44, 0.36, 0.28]


def _stage(tmp_path, with_kl: bool = True):
    """An rl stage folder whose results hold the monitor's record of ten held-out evaluations."""
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=256)
    for i, gold in enumerate(GOLDS):
        logs = {
            "eval_rewards/math_accuracy/mean": gold,
            "eval_rewards/math_accuracy/std": 0.49,
            "eval_rewards/reward_model/mean": 0.5 * i,
            "eval_rewards/reward_model/std": 1.2,
        }
        if with_kl:
            logs["eval_kl"] = (0.1 * i) ** 2
        monitor.on_log(None, SimpleNamespace(global_step=5 * i), None, logs=logs)
    stage = tmp_path / ("rl" if with_kl else "rl-no-kl")
    stage.mkdir()
    (stage / "COMPLETE").write_text(json.dumps({"global_step": 45, "overoptimisation": monitor.result()}))
    return stage


def _report(curves: dict) -> dict:
    return {
        "title": "t",
        "num_items": 4,
        "data_source": "synthetic:arithmetic",
        "split": "test",
        "generation": {"greedy": True, "max_new_tokens": 8, "seed": 0},
        "summary": {
            "rl": {"greedy_accuracy": 0.5, "greedy_accuracy_ci": [0.3, 0.7], "greedy_mean_tokens": 5}
        },
        "comparisons": {},
        "overoptimisation": curves,
    }


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("alt", ""))


def test_the_stage_curve_reaches_the_report(tmp_path):
    data = read_curve(_stage(tmp_path))
    assert data["proxy"] == "reward_model" and data["gold"] == "math_accuracy"
    assert data["peak_step"] == 25 and data["samples"] == 256
    # The proxy up 0.5 (more than 3 x 1.2 x sqrt(2 / 256) = 0.32) while the gold fell 0.08: a stall at
    # 30; the fall clears 3 combined standard errors at 35.
    assert data["flagged_kind"] == "stall" and data["flagged_at_step"] == 30
    assert [(w["kind"], w["peak_step"], w["at_step"]) for w in data["warnings"]] == [
        ("stall", 25, 30),
        ("fall", 25, 35),
    ]
    assert [p["step"] for p in data["curve"]] == [5 * i for i in range(10)]
    assert [round(p["sqrt_kl"], 6) for p in data["curve"]] == [round(0.1 * i, 6) for i in range(10)]
    assert read_curve(tmp_path / "missing") is None and read_curve(None) is None
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "COMPLETE").write_text(json.dumps({"global_step": 2}))
    assert read_curve(tmp_path / "sft") is None  # a stage without the monitor


def test_markdown_has_a_row_per_evaluation_and_says_where_it_flagged(tmp_path):
    markdown = render_markdown(_report({"rl": read_curve(_stage(tmp_path))}))
    section = markdown[markdown.index("## Over-optimisation") :]
    rows = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(GOLDS)
    peak = next(row for row in rows if row.startswith("| 25 |"))
    # KL 0.25, sqrt 0.5; gold 0.6 +- 1.96 * 0.49 / 16; proxy 2.5 +- 1.96 * 1.2 / 16
    assert "| 0.2500 | 0.500 | 0.600 [0.540, 0.660] | 2.500 [2.353, 2.647] | gold's best |" in peak
    assert next(row for row in rows if row.startswith("| 30 |")).endswith("| flagged: stall |")
    assert next(row for row in rows if row.startswith("| 35 |")).endswith("| flagged: fall |")
    assert "flagged a stall at step 30, sqrt(KL) 0.600:" in section and "1 evaluation earlier" in section
    assert "flagged a fall at step 35, sqrt(KL) 0.700:" in section and "2 evaluations earlier" in section
    # Each warning's own test, as the monitor recorded it: here the unpaired means (no per-prompt scores).
    assert "by 4.7 combined standard errors (threshold 3)" in section  # stall: 0.5 / (1.2 * sqrt(2 / 256))


def test_a_paired_warning_reads_as_one(tmp_path):
    stage = _stage(tmp_path)
    results = json.loads((stage / "COMPLETE").read_text())
    warning = results["overoptimisation"]["heldout"]["warnings"][0]
    warning.update(statistic=4.137, threshold=3.3613, paired_prompts=24)
    (stage / "COMPLETE").write_text(json.dumps(results))
    section = render_markdown(_report({"rl": read_curve(stage)}))
    assert (
        "the proxy up since the gold's best so far (step 25, sqrt(KL) 0.500; 1 evaluation earlier) beyond "
        "its noise (paired by prompt over 24 held-out prompts: t = +4.1, threshold 3.36), the gold no higher"
    ) in section


def test_a_stage_recorded_before_stall_warnings_reads_as_a_fall(tmp_path):
    stage = _stage(tmp_path)
    results = json.loads((stage / "COMPLETE").read_text())
    heldout = results["overoptimisation"]["heldout"]
    for key in ("warnings", "flagged_kind"):
        del heldout[key]
    heldout["flagged_peak_step"], heldout["flagged_at_step"] = 25, 35
    (stage / "COMPLETE").write_text(json.dumps(results))
    section = render_markdown(_report({"rl": read_curve(stage)}))
    assert "flagged a fall at step 35" in section and "flagged a stall" not in section
    assert "by more than 3.0 combined standard errors" in section  # no statistic recorded then
    assert "## Over-optimisation" not in render_markdown(_report({}))


def test_html_plots_gold_and_proxy_against_sqrt_kl(tmp_path):
    data = read_curve(_stage(tmp_path))
    html = render_html(_report({"rl": data}))
    parsed = _Images()
    parsed.feed(html)
    assert "gold and proxy reward against sqrt(KL) to the start" in parsed.images
    assert "Over-optimisation: gold and proxy against sqrt(KL)" in html and "<script" not in html
    without = _Images()
    without.feed(render_html(_report({})))
    assert len(parsed.images) == len(without.images) + 1
    png = base64.b64decode(plot_overoptimisation({"rl": data}))
    assert png.startswith(b"\x89PNG")


def test_a_run_without_kl_is_plotted_against_the_step(tmp_path):
    data = read_curve(_stage(tmp_path, with_kl=False))
    assert all(p["sqrt_kl"] is None for p in data["curve"])
    assert plot_overoptimisation({"rl": data}) is not None
    markdown = render_markdown(_report({"rl": data}))
    assert "| 25 | - | - | 0.600" in markdown


def test_labels_and_reward_names_are_escaped(tmp_path):
    data = read_curve(_stage(tmp_path))
    data["gold"] = "<img src=x onerror=alert(1)>"
    html = render_html(_report({"<b>rl</b>": data}))
    assert "<b>rl</b>" not in html and "onerror=alert(1)>" not in html and "&lt;b&gt;rl&lt;/b&gt;" in html


def test_the_report_shows_what_the_policy_wrote_where_the_gold_fell(tmp_path):
    """From heldout_samples.jsonl: the prompts whose gold fell most from the best to the lowest point
    after it, at the start, the best, that lowest point and the last evaluation."""
    stage = _stage(tmp_path)
    rows = []
    for i in range(len(GOLDS)):
        for p in range(5):
            # prompt p4 falls most after the best (step 25), then p3, p2; p0 and p1 do not fall
            fell = max(0, i - 5) * 0.1 * p
            rows.append({"step": 5 * i, "prompt": f"p{p}", "completion": [{"role": "assistant", "content": f"reply {i}"}],
                         "rewards": {"math_accuracy": 1.0 - fell, "reward_model": 0.5 * i}})  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 45, "pro'  # a torn last line
    (stage / "heldout_samples.jsonl").write_text(text)
    data = read_curve(stage)
    # GOLDS: best 0.60 at 25, lowest after it 0.28 at 45, which is also the last evaluation.
    assert [(e["step"], e["what"]) for e in data["examples"]] == [
        (0, "start"),
        (25, "gold's best"),
        (45, "gold's lowest after its best, last"),
    ]
    assert [r["prompt"] for r in data["examples"][2]["rows"]] == ["p4", "p3", "p2"]
    assert data["examples"][2]["rows"][0] == {"prompt": "p4", "completion": "reply 9", "gold": 1.0 - 1.6,
                                              "proxy": 4.5}  # fmt: skip
    markdown = render_markdown(_report({"rl": data}))
    assert "what the policy wrote on the held-out prompts whose gold fell most" in markdown
    assert "| 45 (gold's lowest after its best, last) | p4 | reply 9 | -0.600 | 4.500 |" in markdown
    assert "reply 9" in render_html(_report({"rl": data}))
    # Without the file (a stage from before it was written): no examples, the rest as before.
    (stage / "heldout_samples.jsonl").unlink()
    assert read_curve(stage)["examples"] == [] and "what the policy wrote" not in render_markdown(
        _report({"rl": read_curve(stage)})
    )


def test_examples_of_a_gold_that_never_fell_are_the_first_prompts(tmp_path):
    monitor = OveroptimisationMonitor("reward_model", "math_accuracy", heldout_samples=8)
    rows = []
    for i in range(3):
        logs = {"eval_rewards/math_accuracy/mean": 0.2 * i, "eval_rewards/math_accuracy/std": 0.1,
                "eval_rewards/reward_model/mean": 0.1 * i, "eval_rewards/reward_model/std": 1.0}  # fmt: skip
        monitor.on_log(None, SimpleNamespace(global_step=5 * i), None, logs=logs)
        rows += [{"step": 5 * i, "prompt": f"p{p}", "completion": f"c{i}", "rewards": {"math_accuracy": 0.2 * i}}
                 for p in (3, 1, 2, 0)]  # fmt: skip
    stage = tmp_path / "rl"
    stage.mkdir()
    (stage / "COMPLETE").write_text(json.dumps({"overoptimisation": monitor.result()}))
    (stage / "heldout_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_curve(stage)
    assert [(e["step"], e["what"]) for e in data["examples"]] == [(0, "start"), (10, "gold's best, last")]
    assert [r["prompt"] for r in data["examples"][0]["rows"]] == ["p3", "p1", "p2"]  # in the file's order
    assert "what the policy wrote on the first held-out prompts (no evaluation after the gold's best)" in (
        render_markdown(_report({"rl": data}))
    )


def test_the_headline_gives_the_golds_top_before_each_warning(tmp_path):
    """The gold 0.52, 0.56, 0.60 at steps 15-25 (a 95 % difference is 1.96 * 0.49 * sqrt(2 / 256) =
    0.085): a flat top; 0.48 at step 10 is below it."""
    curve = read_curve(_stage(tmp_path))
    assert [w["top_steps"] for w in curve["warnings"]] == [[15, 20, 25], [15, 20, 25, 30]]
    text = headline("rl", curve)
    assert (
        "the gold no higher. The gold's top, the evaluations within the 95 % noise of that best (paired by "
        "prompt where known): steps 15, 20, 25, the last of them 1 evaluation before the warning."
    ) in text
    # A record from before the top was kept reads as before.
    for warning in curve["warnings"]:
        del warning["top_steps"]
    assert "top" not in headline("rl", curve)


def test_the_headline_says_whether_the_proxy_rose_throughout(tmp_path):
    """The stage's proxy rises 0.5 an evaluation: no drop. A record with a drop names it; an older
    record without `proxy_drops` says nothing of it."""
    curve = read_curve(_stage(tmp_path))
    assert curve["proxy_drops"] == []
    assert "The proxy never fell below its best so far beyond its 95 % noise." in headline("rl", curve)
    curve["proxy_drops"] = [{"step": 35, "best_step": 30, "change": -0.4}]
    text = headline("rl", curve)
    assert (
        "The proxy fell below its best so far beyond its 95 % noise at step 35 (-0.400 from its best at step 30)."
        in text
    )
    del curve["proxy_drops"]
    assert "The proxy" not in headline("rl", curve)
