"""Batched generation for eval: the same prompts, template, decoding and seeds for every checkpoint.

Prompts are chat-templated exactly as in training (`apply_chat_template(add_generation_prompt=True)`),
sorted by length so batches carry little padding, padded between their common prefix and the rest
(`prefix_aligned_batch`; left padding when they share none), and generated with transformers'
`generate`, with four additions for speed that leave the decoding as it is: the n samples of a
prompt share one prefill, and the prompts of a batch one prefill of their common prefix, such as a
chat template's system prompt (`shared_prompt_prefill`); rows that have finished leave the batch
(`generate_evicting`); sampling draws one random number per row and step (`InverseCdfSampler`),
not one per vocabulary entry; on a CPU the linear layers multiply by weights laid out once for
oneDNN (`prepacked_linears`). Sampling is seeded per batch, so a checkpoint's numbers do not depend
on what ran before it in the same process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoding:
    """How completions are drawn: greedy when `temperature == 0`, else `num_samples` samples."""

    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Generation:
    texts: list[str]  # one per sample
    num_tokens: list[int]  # completion length in tokens (EOS included when produced)
    truncated: list[bool]  # stopped at max_new_tokens without EOS
    # Completion token ids per sample (EOS included when produced): for scoring log-probs afterwards,
    # and what TRL passes to rewards as `completion_ids`.
    token_ids: list[list[int]] = field(default_factory=list)


def merged_copy(model):
    """A copy of a PEFT model with its active adapter merged into the weights, for fast sampling.

    Unmerged LoRA adds a dozen small operations per layer and token, which dominate decoding a small
    model on a CPU; the merged copy runs none of them (docs/LOG.md has the measured gain). The
    original is untouched (merging in place and unmerging again does not restore bf16 weights
    exactly). A plain model is returned as it is.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    merged = copy.deepcopy(model).merge_and_unload(adapter_names=[model.active_adapter])
    return merged.eval()


@contextlib.contextmanager
def merged_lora_weights(model):
    """Run a PEFT model with its active LoRA adapters folded into the base weights; restored exactly after.

    Each adapted `Linear` gets a fresh tensor W + delta for the duration and its own W back afterwards
    (never W + delta - delta, which drifts by a rounding error at every use). peft's forward takes the
    merged path (`merged_adapters` set) and runs none of the adapter's small operations. DoRA layers and
    non-Linear adapted layers are left unmerged. A model without LoRA layers runs as it is.
    """
    import torch

    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # no peft, no adapters
        yield model
        return
    swapped = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if not isinstance(module, LoraLinear) or module.merged or module.disable_adapters:
                    continue
                active = [a for a in module.active_adapters if a in module.lora_A]
                if not active or any(module.use_dora.get(a) for a in active):
                    continue
                base = module.get_base_layer()
                original = base.weight.data
                merged = original.clone()
                for adapter in active:
                    merged += module.get_delta_weight(adapter).to(merged.dtype)
                base.weight.data = merged
                module.merged_adapters.extend(active)
                swapped.append((module, base, original, active))
        yield model
    finally:
        for module, base, original, active in swapped:
            base.weight.data = original
            for adapter in active:
                module.merged_adapters.remove(adapter)


@contextlib.contextmanager
def prepacked_linears(model):
    """The `torch.nn.Linear` layers of a model on the CPU multiply by weights laid out once for oneDNN, inside.

    On a CPU, `F.linear` hands every product its weight in the plain layout: oneDNN re-lays a bf16
    weight out at each call, and a float32 product goes to a BLAS that on some CPUs runs well below
    oneDNN. For the few rows of a decoding step that is most of a product's time. Here each weight is
    reordered once (`torch.ops.mkldnn._reorder_linear_weight`, as inductor's frozen CPU graphs do) and
    the layer calls oneDNN's `_linear_pointwise` on it: the same product (bf16: the same bits on the
    machines measured; float32: the same up to rounding), faster (docs/LOG.md has the figures).
    For inference only: a call autograd would need (grad enabled and an input or weight that requires
    it) or an input of another dtype (autocast) runs `F.linear` as before. Layers with a `forward` of
    their own (accelerate's hooks), weights off the CPU or of other dtypes than float32 and bfloat16,
    and a torch whose oneDNN fails a first-use check are left as they are. The packed copies of the
    weights live as long as the context.
    """
    import torch

    swapped = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if (
                    type(module) is not torch.nn.Linear
                    or "forward" in module.__dict__
                    or module.weight.device.type != "cpu"
                    or not _prepacking_works(module.weight.dtype)
                ):
                    continue
                module.forward = _packed_forward(module, pack_linear_weight(module.weight.detach()))
                swapped.append(module)
        yield model
    finally:
        for module in swapped:
            del module.forward


def _packed_forward(module, packed):
    import torch

    def forward(x):
        if x.dtype != packed.dtype or (
            torch.is_grad_enabled() and (x.requires_grad or module.weight.requires_grad)
        ):
            return torch.nn.functional.linear(x, module.weight, module.bias)
        return packed_linear(x, packed, module.bias)

    return forward


def pack_linear_weight(weight):
    """`weight` (out x in) laid out once for oneDNN's linear, for `packed_linear`."""
    import torch

    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def packed_linear(x, packed, bias=None):
    """`F.linear(x, weight, bias)` on a weight from `pack_linear_weight` (no autograd)."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def _prepacking_works(dtype) -> bool:
    """Whether oneDNN's packed linear runs here in `dtype` and agrees with `F.linear` (once per dtype)."""
    import torch

    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(48, 40, generator=generator).to(dtype)
        bias = torch.randn(48, generator=generator).to(dtype)
        x = torch.randn(3, 5, 40, generator=generator).to(dtype)
        with torch.no_grad():
            got = packed_linear(x, pack_linear_weight(weight), bias)
            want = torch.nn.functional.linear(x, weight, bias)
        tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
        works = got.shape == want.shape and torch.allclose(
            got.float(), want.float(), rtol=tolerance, atol=tolerance
        )
    except (RuntimeError, AttributeError, TypeError) as exc:
        logger.info("oneDNN's packed linear is not available here (%s); generation uses F.linear", exc)
        return False
    if not works:
        logger.warning(
            "oneDNN's packed linear disagrees with F.linear in %s here; generation uses F.linear", dtype
        )
    return works


def cache_keyword(model) -> str:
    """The forward keyword a model takes its KV cache by (`cache` from transformers 5.2x, else the old name)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


@contextlib.contextmanager
def shared_prompt_prefill(model):
    """`model.generate` computes keys and values that several rows share once, for all of them.

    Two kinds of sharing, each paid for once inside this context:
    - **repeated rows**: GRPO and sampled eval draw a group of completions per prompt as that many rows
      of one batch; `generate` would run the prompt through the model once per row;
    - **a common prefix**: leading columns that every row holds, all unmasked (a chat template's system
      prompt, when the caller lays rows out as `prefix_aligned_batch` does), are run once for the batch.
    A `generate(input_ids, attention_mask, ...)` call with either runs the common prefix once (one row),
    then each distinct row's remaining prompt but its last token once, with the positions `generate`
    gives its rows (from the attention mask, so padding between the prefix and the rest is skipped),
    expands the KV cache to every row, and hands it to `generate`, which then starts from the last
    prompt token: the same logits at every step (up to float round-off), the same random draws. Calls
    with other tensor inputs (images), a cache of their own, `num_return_sequences` > 1, or nothing
    shared run as they are.
    """
    import torch

    cache_kw = cache_keyword(model)
    original = model.generate

    def generate(*args, input_ids=None, attention_mask=None, **kwargs):
        others = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
        config = kwargs.get("generation_config")
        # `generate` would repeat the rows for num_return_sequences after the cache was built for them.
        expands = (kwargs.get("num_return_sequences") or getattr(config, "num_return_sequences", 1) or 1) > 1
        if args or input_ids is None or attention_mask is None or others or kwargs.get(cache_kw) is not None:
            return original(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        width = input_ids.size(1)
        if expands or width < 2:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        # Leading columns identical in every row and unmasked; the last prompt token stays uncached.
        same = (input_ids == input_ids[:1]).all(0) & (attention_mask == 1).all(0)
        prefix = min(int(same.long().cumprod(0).sum()), width - 1)
        prefix = prefix if prefix >= MIN_SHARED_PREFIX and input_ids.size(0) > 1 else 0
        rows = torch.cat([input_ids, attention_mask], dim=1)
        distinct, row_of = torch.unique(rows, dim=0, return_inverse=True)
        if distinct.size(0) == input_ids.size(0) and prefix == 0:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        first = torch.full((distinct.size(0),), rows.size(0), dtype=torch.long, device=rows.device)
        first.scatter_reduce_(0, row_of, torch.arange(rows.size(0), device=rows.device), reduce="amin")
        mask = attention_mask[first, :-1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate's own prefill
        cache = None
        with torch.no_grad():
            if prefix > 0:
                shared = model(
                    input_ids=input_ids[:1, :prefix],
                    attention_mask=mask[:1, :prefix],
                    position_ids=positions[:1, :prefix],
                    use_cache=True,
                    logits_to_keep=1,
                )
                cache = getattr(shared, cache_kw, None)
                if cache is None:  # a model that returned no cache: generate the usual way
                    return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
                cache.batch_repeat_interleave(distinct.size(0))
            if prefix < width - 1:
                rest = model(
                    input_ids=input_ids[first, prefix:-1],
                    attention_mask=mask,
                    position_ids=positions[:, prefix:],
                    use_cache=True,
                    logits_to_keep=1,
                    **({cache_kw: cache} if cache is not None else {}),
                )
                cache = getattr(rest, cache_kw, None)
        if cache is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        cache.batch_select_indices(row_of)
        return original(input_ids=input_ids, attention_mask=attention_mask, **{cache_kw: cache}, **kwargs)

    with _generate_replaced(model, generate):
        yield model


# A common prefix shorter than this is not worth the extra forward call of prefilling it separately.
MIN_SHARED_PREFIX = 4


def prefix_aligned_batch(sequences: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) for prompts of different lengths, their common prefix first.

    Left padding puts each row's first token at another column, so a prefix that every prompt shares
    (a chat template's system prompt) lands in no common column. Here each row is the common prefix,
    then its padding, then the rest of its prompt: the prefix sits in the same leading columns of every
    row, where `shared_prompt_prefill` runs it once, and every row still ends in its last prompt token,
    as `generate` needs. Position ids come from the attention mask, so the model sees each row as it
    would left-padded. Without a common prefix of `MIN_SHARED_PREFIX` tokens this is left padding.
    """
    import os

    import torch

    width = max(len(ids) for ids in sequences)
    # Each row keeps at least its last token after the prefix.
    prefix = min(len(os.path.commonprefix(sequences)), min(len(ids) for ids in sequences) - 1)
    if prefix < MIN_SHARED_PREFIX:
        prefix = 0
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, ids in enumerate(sequences):
        input_ids[r, :prefix] = torch.tensor(ids[:prefix], dtype=torch.long)
        attention[r, :prefix] = 1
        rest = ids[prefix:]
        input_ids[r, width - len(rest) :] = torch.tensor(rest, dtype=torch.long)
        attention[r, width - len(rest) :] = 1
    return input_ids, attention


@contextlib.contextmanager
def _generate_replaced(model, generate):
    """`model.generate` is `generate` inside; on leaving, what it was before (another context's wrapper
    or the class's own method)."""
    previous = model.__dict__.get("generate")
    model.generate = generate
    try:
        yield
    finally:
        if previous is not None:
            model.generate = previous
        else:
            del model.generate


class InverseCdfSampler:
    """A last logits processor that draws the next token itself, for `generate` in greedy mode.

    transformers samples with `torch.multinomial`, which on a CPU draws one exponential random number
    per vocabulary entry and row at every step: for a 49k-token vocabulary that costs more than the
    softmax and, on a small model, a large part of the decoding step (docs/LOG.md). This draws one
    uniform number per row instead and inverts the cumulative distribution in two levels: over blocks
    of `SAMPLER_BLOCK` tokens (each block's probability summed in float64), then within the chosen
    block (a float64 cumulative sum of its entries). The same distribution as one cumulative sum over
    the vocabulary, without writing a float64 copy of every probability at every step. A block or
    token of zero probability is never drawn. It returns scores that are -inf everywhere but at the
    drawn token, so `generate`'s greedy argmax picks that token; the temperature and top-p warpers run
    before it (`sampling_processors`).
    """

    def __call__(self, input_ids, scores):
        import torch

        drawn = torch.full_like(scores, float("-inf"))
        return drawn.scatter_(1, inverse_cdf_draw(scores), 0.0)


# Tokens per block of the sampler's first level: a few hundred blocks and a few hundred tokens in the
# chosen one, so that both levels' float64 sums are short.
SAMPLER_BLOCK = 256


def inverse_cdf_draw(scores):
    """One token per row of `scores` (logits), drawn from softmax(scores) with one uniform number per row."""
    import torch

    probs = torch.softmax(scores.float(), dim=-1)  # float32, as transformers' own sampling
    rows, vocab = probs.shape
    blocks = -(-vocab // SAMPLER_BLOCK)
    if blocks * SAMPLER_BLOCK != vocab:
        probs = torch.nn.functional.pad(probs, (0, blocks * SAMPLER_BLOCK - vocab))
    grid = probs.view(rows, blocks, SAMPLER_BLOCK)
    block_cdf = grid.sum(-1, dtype=torch.float64).cumsum(-1)
    u = torch.rand((rows, 1), dtype=torch.float64, device=scores.device) * block_cdf[:, -1:]
    # right=True: the first block (then token) whose cumulative probability exceeds u, never one of
    # zero mass.
    block = torch.searchsorted(block_cdf, u, right=True).clamp_(max=blocks - 1)
    low = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), torch.zeros_like(u))
    high = block_cdf.gather(1, block)
    within = grid[torch.arange(rows, device=scores.device), block.squeeze(1)].cumsum(-1, dtype=torch.float64)
    total = within[:, -1:]
    # u's place inside its block, on the block's own cumulative sum (the two sums of one block can
    # differ in the last bit); kept below the block's total so that a token of the block is drawn.
    target = ((u - low) / (high - low)).clamp_(max=1.0) * total
    target = torch.minimum(target, total * (1.0 - 2.0**-50))
    inner = torch.searchsorted(within, target, right=True).clamp_(max=SAMPLER_BLOCK - 1)
    return block * SAMPLER_BLOCK + inner


def sampling_processors(temperature: float, top_p: float = 1.0):
    """`generate` keywords that sample at `temperature` (and `top_p`) through `InverseCdfSampler`."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    processors = [TemperatureLogitsWarper(temperature)]
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(InverseCdfSampler())
    return {
        "do_sample": False,  # the argmax of InverseCdfSampler's one-hot scores is the drawn token
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "logits_processor": LogitsProcessorList(processors),
    }


@contextlib.contextmanager
def inverse_cdf_sampling(model):
    """`model.generate(generation_config=...)` samples through `InverseCdfSampler` inside this context.

    For a trainer's rollouts (TRL's `generate` call passes a sampling `GenerationConfig`): a config that
    samples with temperature and top-p only (no top-k, min-p, typical or epsilon cut, no beams) runs in
    greedy mode with `sampling_processors` instead. The same distribution; other random numbers than
    `torch.multinomial` would draw. Anything else runs as it is.
    """
    original = model.generate

    def generate(*args, generation_config=None, logits_processor=None, **kwargs):
        config = generation_config
        plain = (
            config is not None
            and logits_processor is None
            and config.do_sample
            and (config.num_beams or 1) == 1
            and not config.top_k
            and config.min_p is None
            and config.typical_p in (None, 1.0)
            and not config.epsilon_cutoff
            and not config.eta_cutoff
        )
        if not plain:
            return original(*args, generation_config=config, logits_processor=logits_processor, **kwargs)
        sampling = sampling_processors(config.temperature or 1.0, config.top_p or 1.0)
        greedy = copy.deepcopy(config)
        for key in ("do_sample", "temperature", "top_p", "top_k"):
            setattr(greedy, key, sampling.pop(key))
        return original(*args, generation_config=greedy, **sampling, **kwargs)

    with _generate_replaced(model, generate):
        yield model


# Tokens generated between evictions of finished rows: fewer = finished rows leave sooner, more =
# fewer `generate` calls (each has a fixed set-up cost).
EVICT_EVERY = 16


def generate_evicting(model, input_ids, attention_mask, max_new_tokens: int, eos_ids, pad_id: int, **kwargs):
    """`model.generate` in chunks of `EVICT_EVERY` tokens, dropping rows that have finished between chunks.

    `generate` runs every row of its batch until the last one stops: a row that wrote its EOS at token
    20 of 64 is still computed (and padded) for the other 44. Here each chunk is one `generate` call
    that continues from the previous chunk's KV cache (transformers' documented way to resume a
    generation); rows that wrote an EOS are then dropped from the ids, mask and cache
    (`batch_select_indices`) before the next chunk. Decoding is unchanged: the same logits for every
    surviving row at every position, so greedy output is `generate`'s (up to float round-off of a
    smaller batch); sampling draws from the same distribution, but its random numbers are consumed
    in another order than one `generate` call would. Returns the new tokens of every row,
    `rows x max_new_tokens`, `pad_id` after a row's EOS.
    """
    import torch

    cache_kw = cache_keyword(model)
    rows = input_ids.size(0)
    out = torch.full((rows, max_new_tokens), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    active = torch.arange(rows, device=input_ids.device)
    eos = torch.tensor(sorted(eos_ids), device=input_ids.device)
    cache, done = None, 0
    while done < max_new_tokens:
        chunk = min(EVICT_EVERY, max_new_tokens - done)
        extra = {cache_kw: cache} if cache is not None else {}
        result = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=chunk,
            pad_token_id=pad_id,
            eos_token_id=eos.tolist(),
            return_dict_in_generate=True,
            **extra,
            **kwargs,
        )
        new = result.sequences[:, input_ids.size(1) :]
        out[active, done : done + new.size(1)] = new
        done += new.size(1)
        running = ~torch.isin(new, eos).any(dim=1)
        if new.size(1) < chunk or not running.any():
            break  # every row has finished
        keep = running.nonzero().squeeze(1)
        # The output names the cache as `forward` takes it. A model that keeps none gets its whole
        # sequence again next chunk: slower, the same tokens.
        cache = getattr(result, cache_kw, None)
        if cache is not None and keep.numel() < active.numel():
            cache.batch_select_indices(keep)
        input_ids = result.sequences[keep]
        attention_mask = torch.cat([attention_mask, torch.ones_like(new)], dim=1)[keep]
        active = active[keep]
    return out


def encode_prompts(tokenizer, prompts: list[Any]) -> list[list[int]]:
    """Token ids of chat-templated prompts (a prompt is a message list or a plain user string)."""
    encoded = []
    for prompt in prompts:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        encoded.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return encoded


def generate(
    model,
    tokenizer,
    prompts: list[Any],
    decoding: Decoding,
    batch_size: int = 32,
    progress=None,
) -> list[Generation]:
    """Generate for every prompt; returns one Generation per prompt, in the prompts' order.

    `progress` is an optional callable(n_done_prompts) for a progress bar.
    """
    import torch

    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = {tokenizer.eos_token_id}
    if getattr(model.generation_config, "eos_token_id", None) is not None:
        extra = model.generation_config.eos_token_id
        eos_ids |= set(extra if isinstance(extra, list) else [extra])
    # Fewer prompts per batch when each carries several samples, to keep the batch of sequences constant.
    prompts_per_batch = max(1, batch_size // decoding.num_samples)
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    with prepacked_linears(model):  # one packing for every batch of the call
        for batch_index, start in enumerate(range(0, len(order), prompts_per_batch)):
            rows = order[start : start + prompts_per_batch]
            input_ids, attention = prefix_aligned_batch([encoded[i] for i in rows], pad_id)
            torch.manual_seed(decoding.seed * 100_003 + batch_index)
            kwargs: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            if not decoding.greedy:
                kwargs = sampling_processors(decoding.temperature, decoding.top_p)
            samples = decoding.num_samples
            # Each prompt's samples as rows of their own, as `num_return_sequences` would expand them (the
            # same rows, so the same random draws); each prompt is prefilled once for all of them, and the
            # prompts' common prefix once for the batch.
            with torch.inference_mode(), shared_prompt_prefill(model):
                completions = generate_evicting(
                    model,
                    input_ids.repeat_interleave(samples, dim=0).to(device),
                    attention.repeat_interleave(samples, dim=0).to(device),
                    decoding.max_new_tokens,
                    eos_ids,
                    pad_id,
                    **kwargs,
                ).cpu()
            for r, i in enumerate(rows):
                texts, lengths, truncated, token_ids = [], [], [], []
                for s in range(decoding.num_samples):
                    ids = completions[r * decoding.num_samples + s].tolist()
                    stop = next((k for k, t in enumerate(ids) if t in eos_ids), None)
                    kept = ids if stop is None else ids[: stop + 1]
                    texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
                    lengths.append(len(kept))
                    truncated.append(stop is None)
                    token_ids.append(kept)
                results[i] = Generation(texts, lengths, truncated, token_ids)
            if progress is not None:
                progress(len(rows))
    if was_training:
        model.train()
    return results  # type: ignore[return-value]
