"""Hidden states of every layer at chosen positions: batched forward passes, no gradient.

`hidden_states_at(model, sequences, positions)` runs the model over token id sequences (right
padded, length-sorted batches, `output_hidden_states=True`) and keeps, for each requested (sequence,
position), the vector of every entry of `hidden_states`: entry 0 is the embedding output, entry l
the residual stream after block l, and the last entry is what the unembedding reads (after the final
norm in Llama-style models). Only the requested positions are kept, so memory is rows x layers x
width, not the whole activations.
"""

from __future__ import annotations

from collections.abc import Sequence


def hidden_states_at(
    model,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
):
    """A float32 tensor [layers, rows, width]; rows in the order of `positions` (sequence by sequence)."""
    import torch

    offsets, total = [], 0
    for wanted in positions:
        offsets.append(total)
        total += len(wanted)
    order = sorted((i for i in range(len(sequences)) if positions[i]), key=lambda i: -len(sequences[i]))
    device = next(model.parameters()).device
    out = None
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(sequences[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for r, i in enumerate(rows):
                input_ids[r, : len(sequences[i])] = torch.tensor(list(sequences[i]), dtype=torch.long)
                attention[r, : len(sequences[i])] = 1
            inputs = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
            try:  # logits at one position only: the vocabulary projection would cost a fifth of the pass
                states = model(**inputs, output_hidden_states=True, logits_to_keep=1).hidden_states
            except TypeError:  # a model class without logits_to_keep
                states = model(**inputs, output_hidden_states=True).hidden_states
            if out is None:
                out = torch.empty(len(states), total, states[0].shape[-1], dtype=torch.float32)
            for r, i in enumerate(rows):
                index = torch.tensor(list(positions[i]), dtype=torch.long, device=device)
                for layer, tensor in enumerate(states):
                    out[layer, offsets[i] : offsets[i] + len(positions[i])] = tensor[r, index].float().cpu()
    if out is None:
        raise ValueError("no positions requested")
    return out


def last_token_states(model, sequences: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16):
    """Hidden states [layers, sequences, width] at the last token of each sequence."""
    return hidden_states_at(model, sequences, [[len(s) - 1] for s in sequences], pad_id, batch_size)
