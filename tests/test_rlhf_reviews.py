"""RLHF on synthetic:reviews: the recipes end to end on the tiny model, and the eval of a task without
answers (the gold scorer's means, paired comparisons, ranking agreement against a continuous gold)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from ntp_rl.cli import main
from ntp_rl.evaluation.html import render_html
from ntp_rl.evaluation.metrics import ranking_agreement, reward_stats
from ntp_rl.evaluation.report import compare_rewards, paired_sections, render_markdown, summary_text
from tests.conftest import REPO


def _smoke(tmp_path, recipe: str):
    assert main(["train", str(REPO / "recipes" / recipe), "--smoke", "--output-dir", str(tmp_path)]) == 0
    return tmp_path


def _complete(run, stage):
    return json.loads((run / stage / "COMPLETE").read_text())


def _lora_b_moved(folder) -> bool:
    weights = load_file(folder / "adapter" / "adapter_model.safetensors")
    return any(float(t.abs().sum()) > 0 for k, t in weights.items() if "lora_B" in k)  # B starts at zero


def test_rlhf_recipe_smoke(tmp_path, tiny_model_path):
    run = _smoke(tmp_path, "rlhf.yaml") / "rlhf-smoke"
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"].values()] == ["complete"] * 4
    rm = _complete(run, "reward_model")
    pairs = rm["policy_pairs"]
    # The reward model saw the labelled pairs of the policy's samples and nothing else.
    assert rm["train_rows"] == pairs["pairs"] > 0 and pairs["noise"] == "bradley_terry"
    assert pairs["expected_disagreement"] == pytest.approx(0.3) and pairs["realised_disagreement"] is not None
    assert rm["heldout_before"]["pairs"] == pairs["heldout_pairs"] > 0
    assert _lora_b_moved(run / "reward_model") and _lora_b_moved(run / "rl")
    logs = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "rewards/reward_model/mean" in r]
    assert steps and all(
        "rewards/review_warmth/mean" in r and "kl" in r for r in steps
    )  # gold beside; beta > 0
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["gold_scorer"] == "review_warmth"
    assert {"reward_model", "review_warmth"} <= set(report["summary"]["rl"]["rewards"]["sampled"])
    assert "review_warmth" in report["reward_comparisons"]["rl vs sft"]
    assert report["side_by_side"] and set(report["side_by_side"][0]["completions"]) == {"sft", "rl"}
    assert "kl_to_base" in report["summary"]["rl"] and "sampled" in report["summary"]["rl"]["lengths"]
    assert (
        report["summary"]["rl"]["kl_to_sft"]["num_tokens"] > 0 and "kl_to_sft" not in report["summary"]["sft"]
    )
    assert _complete(run, "eval")["rl/kl_to_sft"] == report["summary"]["rl"]["kl_to_sft"]["value"]
    text = (run / "eval" / "report.md").read_text()
    assert "review_warmth sampled [95% CI]" in text and "## Samples side by side" in text


def test_rlhf_overoptimisation_recipe_smoke(tmp_path, tiny_model_path):
    run = _smoke(tmp_path, "rlhf_overoptimisation.yaml") / "rlhf-overopt-smoke"
    rl = _complete(run, "rl")
    heldout = rl["overoptimisation"]["heldout"]
    assert heldout["step"][0] == 0 and len(heldout["gold"]) == len(heldout["proxy"]) == len(heldout["step"])
    logs = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logs if "eval_rewards/review_warmth/mean" in r]
    assert len(evals) >= 2 and all("eval_rewards/reward_model/mean" in r for r in evals)
    assert not any("kl" in r for r in logs if "loss" in r and "eval_loss" not in r)  # beta 0: no KL term
    assert _lora_b_moved(run / "rl")


def test_ranking_agreement_against_a_continuous_gold():
    gold = [[0.9, 0.5, 0.1, 0.5], [0.2, 0.2], [0.7, None, 0.3]]
    # Item 0: 5 pairs the gold orders (0.5 vs 0.5 is no preference), the scorer orders 4 of them so;
    # item 2: one pair (a None is left out), tied by the scorer (counts half).
    scorer = [[3.0, 2.0, 1.0, 0.5], [1.0, 0.0], [1.0, 5.0, 1.0]]
    result = ranking_agreement(scorer, gold, seed=0)
    assert result["items"] == 2 and result["pairs"] == 5 + 1  # item 1 ties in gold; item 2 has one pair
    assert result["value"] == pytest.approx((4 / 5 + 0.5) / 2)
    # Verdicts are the special case: right above wrong.
    assert ranking_agreement([[1.0, 0.0]], [[True, False]], seed=0)["value"] == 1.0
    stats = reward_stats({"review_warmth": gold, "reward_model": scorer}, seed=0, gold="review_warmth")
    assert "ranking_agreement" not in stats["review_warmth"]  # not against itself
    assert stats["reward_model"]["ranking_agreement"]["against"] == "review_warmth"
    assert stats["reward_model"]["ranking_agreement"]["value"] == pytest.approx(result["value"])


def _results(texts_scores):
    return {
        "sampled": {
            "texts": [[t for t, _ in item] for item in texts_scores],
            "num_tokens": [[5] * len(item) for item in texts_scores],
            "truncated": [[False] * len(item) for item in texts_scores],
            "rewards": {"review_warmth": [[s for _, s in item] for item in texts_scores]},
        }
    }


def test_a_report_without_verdicts_compares_mean_scores_and_shows_samples():
    sft = _results([[("a", 0.4), ("b", 0.6)], [("c", 0.5), ("d", 0.5)], [("e", None), ("f", 0.2)]])
    rl = _results([[("g", 0.8), ("h", 0.9)], [("i", 0.7), ("j", 0.9)], [("k", None), ("l", None)]])
    diff = compare_rewards(sft, rl, seed=0)["review_warmth"]["sampled"]
    assert diff["items"] == 2 and diff["diff"] == pytest.approx(((0.85 - 0.5) + (0.8 - 0.5)) / 2)
    items = {"prompts": ["p0", "p1", "p2"], "gold": [None] * 3, "results": {"sft": sft, "rl": rl}}
    sections = paired_sections(items, ["sft", "rl"], seed=0, max_examples=3)
    assert sections["comparisons"] == {} and sections["flips"] == {}
    assert sections["side_by_side"][0]["completions"]["rl"] == {"text": "g", "scores": {"review_warmth": 0.8}}
    report = {
        "title": "t",
        "num_items": 3,
        "data_source": "synthetic:reviews",
        "split": "test",
        "generation": {"greedy": False, "num_samples": 2, "temperature": 1.0},
        "gold_scorer": "review_warmth",
        "summary": {
            name: {"rewards": {"sampled": {"review_warmth": {"value": v, "ci": [v, v]}}}}
            for name, v in (("sft", 0.5), ("rl", 0.8))
        },
        **sections,
    }
    text = render_markdown(report)
    assert (
        "| rl | - | 0.800 [0.800, 0.800] |" in text and "rl vs sft | review_warmth | sampled | +0.325" in text
    )
    assert "rl: review_warmth sampled 0.800" in summary_text(report)
    html = render_html(
        report
    )  # the gold's means, the paired comparison and the samples, not empty accuracy columns
    assert "review_warmth sampled [95% CI]" in html and "greedy acc %" not in html
    assert "+0.325" in html and "Samples side by side" in html and "<pre>g</pre>" in html


def test_the_overoptimisation_recipe_shares_the_rlhf_recipe_s_sft_and_labeller():
    """Its header says so: the same SFT and the same labeller (gold, noise, sampling), fewer labelled
    pairs, so that the two runs differ in the reward model's strength and the rl stage only."""
    from ntp_rl.config import load_recipe

    plain, overopt = (
        load_recipe(REPO / "recipes" / name) for name in ("rlhf.yaml", "rlhf_overoptimisation.yaml")
    )
    assert plain.model == overopt.model and plain.data == overopt.data

    def by_kind(kind):  # each recipe's one stage of that kind
        return ([s for s in r.stages if s.kind == kind] for r in (plain, overopt))

    (sft_a,), (sft_b,) = by_kind("sft")
    assert sft_a == sft_b
    (rm_a,), (rm_b,) = by_kind("reward_model")
    same = ("policy", "gold", "disagreement", "samples", "temperature", "max_new_tokens")
    assert {k: getattr(rm_a.policy_pairs, k) for k in same} == {
        k: getattr(rm_b.policy_pairs, k) for k in same
    }
    weak, strong = (p.policy_pairs.prompts * p.policy_pairs.max_pairs_per_prompt for p in (rm_b, rm_a))
    assert weak < strong / 4, (weak, strong)
    assert rm_a.eval_examples == rm_b.eval_examples  # held-out accuracy on the same prompts
