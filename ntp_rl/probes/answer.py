"""Answer before generation: is a property of the final answer readable before any answer token exists?

Each prompt is chat-templated with the generation prompt, exactly as for generation, and the hidden
state of every layer is read at its last token: the model has seen the whole question and nothing
of its reply. Linear probes (`linear.py`), fitted on some items and scored on held-out items, decode

- `last_digit`: the gold answer's last digit (10 classes; chance 10 %);
- `bucket`: which of `buckets` size ranges the gold answer falls in (edges are quantiles of the fit
  items' answers, so the classes are about equally frequent).

Limits: the label is the gold answer, not the answer the checkpoint will write, so a model that
gets the sum wrong can still hold a readable (wrong) plan that the probe scores as a miss. The size
bucket is largely given away by the operation in the question (products are large, differences
small), so read it beside the majority baseline and across checkpoints, not as computation; the
last digit is the stricter test (for a + b it needs both operands' last digits combined). With a few
hundred items and hundreds of dimensions, the shuffled-label control shows how much is overfitting.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from ntp_rl.probes.hidden import last_token_states
from ntp_rl.probes.linear import probe_layers, split_groups


def bucket_edges(values: Sequence[int], buckets: int) -> list[float]:
    """`buckets - 1` interior quantile edges of `values` (sorted, deduplicated)."""
    ordered = sorted(values)
    edges = []
    for i in range(1, buckets):
        edge = ordered[min(len(ordered) - 1, round(i * len(ordered) / buckets))]
        if not edges or edge > edges[-1]:
            edges.append(edge)
    return edges


def answer_probe_features(model, tokenizer, prompts: Sequence[Any], batch_size: int = 16):
    from ntp_rl.generation import encode_prompts

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return last_token_states(model, encode_prompts(tokenizer, list(prompts)), pad_id, batch_size)


def probe_answers(
    features, answers: Sequence[int], buckets: int = 4, fit_fraction: float = 0.7, seed: int = 0
) -> dict[str, Any]:
    """Probe the answers' last digit and size bucket from `features` [layers, items, width]."""
    import torch

    fit = split_groups(list(range(len(answers))), fit_fraction, seed)
    edges = bucket_edges([a for a, f in zip(answers, fit, strict=True) if f], buckets)
    labels = {
        "last_digit": torch.tensor([abs(a) % 10 for a in answers], dtype=torch.long),
        "bucket": torch.tensor([bisect.bisect_right(edges, a) for a in answers], dtype=torch.long),
    }
    classes = {"last_digit": 10, "bucket": len(edges) + 1}
    probed = probe_layers(features, labels, classes, fit, list(range(len(answers))), seed)
    for name, entry in probed.items():
        entry["chance"] = round(1.0 / classes[name], 4)
    probed["bucket"]["edges"] = edges
    return {"num_items": len(answers), "num_layers": int(features.shape[0]), "targets": probed}


def answer_probe(
    model,
    tokenizer,
    items: Sequence[tuple[Any, int]],
    buckets: int = 4,
    fit_fraction: float = 0.7,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    features = answer_probe_features(model, tokenizer, [p for p, _ in items], batch_size)
    return probe_answers(features, [a for _, a in items], buckets, fit_fraction, seed)
