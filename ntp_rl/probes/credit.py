"""Gradient credit by distance (after Wu et al. 2024, "Do language models plan ahead for future tokens?").

Training by next-token prediction sends each position's hidden state gradient from its own loss
(the prediction of the next token, distance k = 1) and, through attention, from the losses of later
positions (k > 1): the "pre-caching" signal that can make a state useful for tokens further ahead.
This instrument measures the split on a small batch.

For target positions j (up to `max_targets` per batch, evenly spaced), the loss of predicting token
j alone is backpropagated (`torch.autograd.grad`, no parameter gradients) to the hidden states that
enter every block (`hidden_states[0..L-1]`: the embeddings and the residual stream between blocks),
and the norm |d loss_j / d h^l_t| is recorded for every earlier position t at distance k = j - t.
Reported:

- `mean_norm[k]` (k = 1..K): mean over sequences, targets and layers of that norm;
- `share[k]`: mean_norm[k] / sum over k' = 1..K: of the gradient reaching a state from the next K
  losses, the share that comes from k steps ahead;
- `mass_beyond_k`: the share of the total gradient norm (all distances) from distances > K;
- `share_beyond_1_by_layer`: the k > 1 share per layer.

The control (`detach_kv=True`) runs the same forward pass with every attention key and value
projection's output detached (forward hooks on modules named `k_proj` / `v_proj`): the computation is
unchanged, but gradient can no longer cross positions, so credit at k > 1 must be zero; anything else
is a bug in the instrument.

Limits: gradient norms at one point of the weights, for one batch; a norm says how strongly a later
loss pulls on a state, not in which direction or whether training follows; norms of different layers
are on different scales and are averaged as they are. The control needs separate k and v projections
(Llama, Qwen, Mistral, ...); models with a fused qkv projection are refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

KV_PROJECTIONS = ("k_proj", "v_proj")


@contextmanager
def detached_keys_values(model) -> Iterator[int]:
    """Forward hooks that detach the output of every key and value projection; yields how many."""
    handles = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in KV_PROJECTIONS:
            handles.append(module.register_forward_hook(lambda _module, _inputs, output: output.detach()))
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def _targets(length: int, count: int) -> list[int]:
    """Up to `count` target positions in 1..length-1, evenly spaced, the last one included."""
    if length < 2:
        return []
    if count >= length - 1:
        return list(range(1, length))
    step = (length - 1) / count
    return sorted({length - 1 - round(i * step) for i in range(count)})


def _credit_batch(model, batch: Sequence[Sequence[int]], pad_id: int, max_targets: int, totals: dict) -> None:
    """Add this batch's gradient norms by (layer, distance) into totals["sums"] and totals["counts"]."""
    import torch

    width = max(len(s) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for r, ids in enumerate(batch):
        input_ids[r, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        attention[r, : len(ids)] = 1
    device = next(model.parameters()).device
    input_ids, attention = input_ids.to(device), attention.to(device)
    # Gradient flows from the (frozen) embeddings on, without parameter gradients.
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, attention_mask=attention, output_hidden_states=True)
    states = out.hidden_states[:-1]  # the last entry is the final norm's output: no block reads it
    if "sums" not in totals:
        shape = (len(states), totals["longest"])
        totals["sums"] = torch.zeros(shape, dtype=torch.float64)
        totals["counts"] = torch.zeros(shape, dtype=torch.float64)
    sums, counts = totals["sums"], totals["counts"]
    lengths = attention.sum(1)
    for j in _targets(width, max_targets):
        valid = lengths > j
        if not bool(valid.any()):
            continue
        log_probs = torch.log_softmax(out.logits[:, j - 1].float(), dim=-1)
        nll = -log_probs.gather(1, input_ids[:, j : j + 1]).squeeze(1)
        grads = torch.autograd.grad((nll * valid).sum(), states, retain_graph=True, allow_unused=True)
        for layer, grad in enumerate(grads):
            if grad is None:
                continue
            norms = grad[valid, :j].float().norm(dim=-1)  # [rows, j]: position t = 0..j-1
            per_distance = norms.flip(1).sum(0).cpu()  # index d-1 holds distance d = j - t
            sums[layer, :j] += per_distance.double()
            counts[layer, :j] += int(valid.sum())


def gradient_credit(
    model,
    sequences: Sequence[Sequence[int]],
    k: int = 4,
    max_targets: int = 8,
    pad_id: int = 0,
    batch_size: int = 8,
    detach_kv: bool = False,
) -> dict[str, Any]:
    """Credit by distance on `sequences`; see the module docstring."""
    import torch

    sequences = [list(s) for s in sequences if len(s) >= 2]
    if not sequences:
        raise ValueError("credit by distance needs sequences of at least 2 tokens")
    totals: dict[str, Any] = {"longest": max(len(s) for s in sequences)}
    if totals["longest"] <= k:
        raise ValueError(f"the longest sequence has {totals['longest']} tokens: too short for k = {k}")
    was_training = model.training
    model.eval()
    with torch.enable_grad(), detached_keys_values(model) if detach_kv else _no_hooks() as hooked:
        if detach_kv and not hooked:
            raise ValueError(
                "the stop-gradient control needs separate k_proj/v_proj modules; this model has none"
            )
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        for start in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[start : start + batch_size]]
            _credit_batch(model, batch, pad_id, max_targets, totals)
    if was_training:
        model.train()
    sums, counts = totals["sums"], totals["counts"]
    num_layers = sums.shape[0]
    mean = sums / counts.clamp(min=1)  # [layers, distance-1]
    near = mean[:, :k]
    mean_norm = near.mean(0)
    total = float(mean_norm.sum())
    share = (mean_norm / total).tolist() if total > 0 else [0.0] * k
    by_layer = near.sum(1)
    share_beyond_1 = [
        round(float(near[layer, 1:].sum() / by_layer[layer]), 6) if by_layer[layer] > 0 else 0.0
        for layer in range(num_layers)
    ]
    mass = sums.sum(0)
    return {
        "distances": list(range(1, k + 1)),
        "num_sequences": len(sequences),
        "num_layers": num_layers,
        "max_tokens": totals["longest"],
        "detach_kv": detach_kv,
        "mean_norm": [float(f"{v:.6g}") for v in mean_norm.tolist()],
        "share": [round(v, 6) for v in share],
        "share_beyond_1": round(1.0 - share[0], 6) if total > 0 else 0.0,
        "mass_beyond_k": round(float(mass[k:].sum() / mass.sum()), 6) if float(mass.sum()) > 0 else 0.0,
        "share_beyond_1_by_layer": share_beyond_1,
    }


@contextmanager
def _no_hooks() -> Iterator[int]:
    yield 0
