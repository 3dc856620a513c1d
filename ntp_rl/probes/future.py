"""Future-token probes (after Future Lens, Pal et al. 2023): is the token at t+k readable at t?

For every layer, a linear probe (`linear.py`) is fitted from the hidden state at position t to the
token at t+k, k = 1..K, on the fit texts, and scored by top-1 accuracy on held-out texts beside the
majority-class (unigram) baseline and a shuffled-label control. k = 0 (the current token) is probed
too, as a check that the probe can read token identity at all. Targets are the `vocab` most frequent
tokens of the fit texts plus one "other" class, so the problem stays small; `coverage` says which
share of held-out targets fall inside that vocabulary ("other" counts as a class: predicting
"other" for an out-of-vocabulary target is counted correct, for probe and baseline alike).

Positions are sampled from every text after the prefix all texts share (a chat template's system
prompt, which would make far tokens trivially predictable), up to `max_positions` in all.

Limits: k = 1 is what the model is trained to predict, so a high k = 1 accuracy at the top layer is
expected; k > 1 above the baseline shows that the state carries information about later tokens, not
that the model plans them: much of it is predictable from the current context by anyone (a probe
reads "the next token after '=' is a digit"). Compare checkpoints against each other and against
the baseline, not against an absolute bar. A linear probe is a lower bound (see `linear.py`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ntp_rl.probes.hidden import hidden_states_at
from ntp_rl.probes.linear import probe_layers, split_groups


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix every sequence starts with (0 for a single sequence)."""
    if len(sequences) < 2:
        return 0
    shortest = min(len(s) for s in sequences)
    for index in range(shortest):
        token = sequences[0][index]
        if any(s[index] != token for s in sequences[1:]):
            return index
    return shortest


def sample_positions(
    sequences: Sequence[Sequence[int]], k: int, max_positions: int, seed: int, start: int = 0
) -> list[list[int]]:
    """Positions t (start <= t, t + k < length) per sequence, at most `max_positions` in all."""
    candidates = [(i, t) for i, s in enumerate(sequences) for t in range(start, len(s) - k)]
    if len(candidates) > max_positions:
        candidates = sorted(random.Random(seed).sample(candidates, max_positions))
    positions: list[list[int]] = [[] for _ in sequences]
    for i, t in candidates:
        positions[i].append(t)
    return positions


def future_token_probe(
    model,
    sequences: Sequence[Sequence[int]],
    k: int = 3,
    vocab: int = 64,
    max_positions: int = 3000,
    fit_fraction: float = 0.7,
    seed: int = 0,
    pad_id: int = 0,
    batch_size: int = 16,
    skip_shared_prefix: bool = True,
) -> dict[str, Any]:
    """Probe accuracy by layer and distance 0..k; see the module docstring."""
    import torch

    start = shared_prefix_length(sequences) if skip_shared_prefix else 0
    positions = sample_positions(sequences, k, max_positions, seed, start)
    rows = [(i, t) for i, wanted in enumerate(positions) for t in wanted]
    if len(rows) < 10:
        raise ValueError(f"too few positions to probe ({len(rows)}); give more or longer texts")
    fit_by_text = split_groups(list(range(len(sequences))), fit_fraction, seed)
    groups = [i for i, _ in rows]
    fit = [fit_by_text[i] for i in groups]
    counts = Counter(token for i, s in enumerate(sequences) if fit_by_text[i] for token in s[start:])
    classes = {token: c for c, (token, _) in enumerate(counts.most_common(vocab))}
    other = len(classes)
    labels, coverage = {}, {}
    for distance in range(k + 1):
        targets = [sequences[i][t + distance] for i, t in rows]
        labels[str(distance)] = torch.tensor([classes.get(x, other) for x in targets], dtype=torch.long)
        held = [x for x, f in zip(targets, fit, strict=True) if not f]
        coverage[str(distance)] = round(sum(x in classes for x in held) / max(1, len(held)), 4)
    features = hidden_states_at(model, sequences, positions, pad_id, batch_size)
    probed = probe_layers(features, labels, dict.fromkeys(labels, other + 1), fit, groups, seed)
    return {
        "distances": list(range(k + 1)),
        "num_layers": int(features.shape[0]),
        "num_texts": len(sequences),
        "num_positions": len(rows),
        "skipped_prefix_tokens": start,
        "vocab": other,
        "coverage": coverage,
        "by_distance": probed,
    }
