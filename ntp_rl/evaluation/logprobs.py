"""How far a checkpoint moved from its start: KL to the base and NLL of reference text, per token.

Both read next-token distributions over (prompt, completion) pairs in one batched forward pass per
model state: sequences are laid out as [left padding][prompt][completion][right padding], so every
prompt ends at the same column and only the last `max completion length + 1` positions need logits
(`logits_to_keep`), which keeps the vocabulary-sized tensor small.

- `per_token_kl`: for each completion token, KL(p || q) between the checkpoint's next-token
  distribution p (its adapter on) and the base's q (adapters disabled), summed exactly over the
  vocabulary at temperature 1, given the same prefix. Exact per position, so it needs no sampling
  and is defined for greedy completions too.
- `per_token_nll`: -log p(token) of each target token (the reference text) given its prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

Pair = tuple[list[int], list[int]]  # (prompt ids, completion ids)


def _batches(pairs: Sequence[Pair], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _layout(pairs: Sequence[Pair], rows: list[int], pad_id: int):
    import torch

    width = max(len(pairs[i][0]) for i in rows)
    longest = max(len(pairs[i][1]) for i in rows)
    input_ids = torch.full((len(rows), width + longest), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for r, i in enumerate(rows):
        prompt, completion = pairs[i]
        input_ids[r, width - len(prompt) : width] = torch.tensor(prompt, dtype=torch.long)
        attention[r, width - len(prompt) : width] = 1
        if completion:
            input_ids[r, width : width + len(completion)] = torch.tensor(completion, dtype=torch.long)
            attention[r, width : width + len(completion)] = 1
    # Positions count real tokens only, as generate() does with left padding.
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention, positions, longest


def _log_probs(model, input_ids, attention, positions, longest: int):
    """Log-softmax over the vocabulary at the `longest` positions that predict completion tokens."""
    import torch

    device = next(model.parameters()).device
    kwargs = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention.to(device),
        "position_ids": positions.to(device),
    }
    with torch.inference_mode():
        try:
            logits = model(**kwargs, logits_to_keep=longest + 1).logits
        except TypeError:  # a model class without logits_to_keep
            logits = model(**kwargs).logits[:, -(longest + 1) :]
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


def per_token_kl(
    model,
    pairs: Sequence[Pair],
    policy: Callable[[], AbstractContextManager[Any]],
    reference: Callable[[], AbstractContextManager[Any]],
    pad_id: int,
    batch_size: int = 8,
) -> list[list[float]]:
    """KL(policy || reference) at each completion token; `policy()`/`reference()` switch the model."""
    results: list[list[float]] = [[] for _ in pairs]
    for rows in _batches(pairs, batch_size):
        input_ids, attention, positions, longest = _layout(pairs, rows, pad_id)
        if longest == 0:
            continue
        with policy():
            log_p = _log_probs(model, input_ids, attention, positions, longest)
        with reference():
            log_q = _log_probs(model, input_ids, attention, positions, longest)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0)  # [rows, longest]
        for r, i in enumerate(rows):
            results[i] = kl[r, : len(pairs[i][1])].tolist()
    return results


def per_token_nll(model, pairs: Sequence[Pair], pad_id: int, batch_size: int = 8) -> list[list[float]]:
    """-log p(target token | prompt, earlier target tokens) for each target token."""
    import torch

    results: list[list[float]] = [[] for _ in pairs]
    for rows in _batches(pairs, batch_size):
        input_ids, attention, positions, longest = _layout(pairs, rows, pad_id)
        if longest == 0:
            continue
        log_p = _log_probs(model, input_ids, attention, positions, longest)
        width = input_ids.shape[1] - longest
        targets = input_ids[:, width:].unsqueeze(-1).to(log_p.device)
        nll = -torch.gather(log_p, -1, targets).squeeze(-1)
        for r, i in enumerate(rows):
            results[i] = nll[r, : len(pairs[i][1])].tolist()
    return results


def encode_reference(tokenizer, prompt: Any, response: str) -> Pair:
    """(prompt ids, response ids) of a chat: the prompt as in generation, the response as its reply."""
    from ntp_rl.generation import encode_prompts

    prompt_ids = encode_prompts(tokenizer, [prompt])[0]
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, full_ids[len(prompt_ids) :]
    # A template that renders the prompt differently once a reply follows: score the reply alone.
    return prompt_ids, tokenizer(response, add_special_tokens=False)["input_ids"]
