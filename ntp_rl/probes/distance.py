"""Distance from next-token prediction against reward gained, from numbers the eval report already has.

Per checkpoint: the per-token NLL of reference text (how well it still predicts the SFT targets),
the per-token KL to the base on its own completions (how far its next-token distributions moved;
0 for the base itself), and the reward gained: accuracy (greedy, else sampled pass@1) minus the
reference checkpoint's. The plot puts NLL and KL on the y axis against reward gained: a run that
buys accuracy with a small KL moved the predictor little; a large KL for no gain is drift.

Limits: three points (base, SFT, RL) are a picture, not a trend; KL is measured on each
checkpoint's own completions, so it is not on the same texts for every checkpoint; the NLL is of
reference text the SFT stage trained on (on held-out prompts), so SFT lowers it by design.
"""

from __future__ import annotations

from typing import Any


def _value(entry: Any) -> float | None:
    if isinstance(entry, dict):
        entry = entry.get("value")
    if isinstance(entry, (int, float)) and entry == entry:
        return float(entry)
    return None


def distance_from_ntp(summary: dict[str, Any], reference: str, adapters: dict[str, bool]) -> dict[str, Any]:
    """{label: {accuracy, reward_gained, reference_nll, kl_to_base}} and which accuracy was used."""
    metric = "greedy_accuracy" if any("greedy_accuracy" in s for s in summary.values()) else "sampled_pass1"
    base_accuracy = _value(summary.get(reference, {}).get(metric))
    points = {}
    for label, s in summary.items():
        accuracy = _value(s.get(metric))
        kl = _value(s.get("kl_to_base"))
        if kl is None and label == reference and not adapters.get(label, False):
            kl = 0.0  # the base itself (KL is only measured for adapter checkpoints)
        points[label] = {
            "accuracy": accuracy,
            "reward_gained": None if accuracy is None or base_accuracy is None else accuracy - base_accuracy,
            "reference_nll": _value(s.get("reference_nll")),
            "kl_to_base": kl,
        }
    return {"accuracy_metric": metric, "reference": reference, "points": points}
