"""ntp-rl's GRPO/RLOO step computes what TRL's computes, with less work (ntp_rl/stages/rl_trainer.py).

Each case runs one optimizer step twice from the same tiny model, LoRA weights and seed: once with
TRL's own trainer and once with ntp-rl's subclass, on prompts of which half always get the same
reward (zero-advantage groups). Compared: the sampled completions (generation from merged weights
must sample the same tokens), each completion's advantage, the per-token log-probabilities of every
completion ntp-rl back-propagated, and the gradient of every LoRA weight (SGD, no clipping: the
gradient as the loss defines it), within float32 round-off of sums taken in another order (1e-5 in a
log-probability, 1e-4 of a gradient tensor's largest entry).
ntp-rl must also have run the policy over fewer rows.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

NUM_GENERATIONS = 4
PROMPTS = [f"Say {kind} {i}" for i in range(2) for kind in ("A", "B")]  # 4 prompts: 2 with signal, 2 without
GRAD_RTOL = 1e-4
LOGP_ATOL = 1e-5


def reward(prompts, completion_ids, **kwargs):
    """Prompts 'Say A i' score the first token's parity (varies); 'Say B i' always score 1."""
    out = []
    for prompt, ids in zip(prompts, completion_ids, strict=True):
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        out.append(1.0 if " B " in text + " " else float(ids[0] % 2))
    return out


class Recorder:
    """Wraps the trainer's hooks to record what each step computed."""

    def __init__(self, trainer):
        self.completions: list[tuple[int, ...]] = []
        self.advantages: dict[tuple[int, ...], float] = {}
        self.logps: dict[tuple[int, ...], list[float]] = {}
        self.rows_forwarded = 0
        self.grads: dict[str, torch.Tensor] = {}
        original_loss = trainer._compute_loss
        original_logps = trainer._get_per_token_logps_and_entropies

        def compute_loss(model, inputs):
            for ids, mask, adv in zip(
                inputs["completion_ids"], inputs["completion_mask"], inputs["advantages"], strict=True
            ):
                self.advantages[tuple(ids[mask.bool()].tolist())] = float(adv)
            self._mask = inputs["completion_mask"]
            self._ids = inputs["completion_ids"]
            return original_loss(model, inputs)

        def logps(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
            out = original_logps(model, input_ids, attention_mask, logits_to_keep, *args, **kwargs)
            if torch.is_grad_enabled():  # the training forward, not a reference pass
                self.rows_forwarded += input_ids.size(0)
                for row, ids, mask in zip(out[0], self._ids, self._mask, strict=True):
                    keep = mask.bool()
                    self.logps[tuple(ids[keep].tolist())] = row[: keep.size(0)][keep].tolist()
            return out

        trainer._compute_loss = compute_loss
        trainer._get_per_token_logps_and_entropies = logps
        recorder = self

        from transformers import TrainerCallback

        class Grads(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                for name, param in model.named_parameters():
                    if param.requires_grad and param.grad is not None:
                        recorder.grads[name] = param.grad.detach().clone()

        trainer.add_callback(Grads())


def one_step(
    tiny_model_path, tmp_path, side: str, algorithm: str, loss_type: str | None, fast_sampling: bool = False
):
    import trl
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ntp_rl.stages import rl_trainer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    # B initialised at random too: the adapter moves the weights, so merged generation is tested.
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    common = dict(
        output_dir=str(tmp_path / f"{side}-{algorithm}-{loss_type}"),
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,  # 16 completions: 4 prompts x 4, in micro-batches of 4
        num_generations=NUM_GENERATIONS,
        max_completion_length=8,
        temperature=1.0,
        beta=0.0,
        optim="sgd",
        learning_rate=1e-3,
        max_grad_norm=0.0,
        gradient_checkpointing=False,  # as the quickstart: with it, prompts are not shared (no KV cache)
        bf16=False,  # float32 throughout (TRL's default autocasts to bf16): differences are round-off only
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
    )
    if algorithm == "grpo":
        config = trl.GRPOConfig(**common, loss_type=loss_type)
        cls = trl.GRPOTrainer if side == "trl" else rl_trainer.GRPOTrainer
    else:
        config = trl.RLOOConfig(**common)
        cls = trl.RLOOTrainer if side == "trl" else rl_trainer.RLOOTrainer
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS])
    # ntp-rl's sampler draws other tokens from the same seed: off, so that both sides sample the same
    ours = {"fast_sampling": fast_sampling} if side == "ntp-rl" else {}
    trainer = cls(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        **ours,
    )
    recorder = Recorder(trainer)
    original_rewards = trainer._calculate_rewards

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        recorder.completions.extend(tuple(ids) for ids in completion_ids_list)
        return original_rewards(inputs, prompts, completions, completion_ids_list)

    trainer._calculate_rewards = calculate_rewards
    trainer.train()
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    return recorder, trainer, loss


CASES = [("grpo", "dapo"), ("grpo", "grpo"), ("grpo", "bnpo"), ("grpo", "dr_grpo"), ("rloo", None)]


@pytest.mark.parametrize(("algorithm", "loss_type"), CASES, ids=[f"{algo}-{loss}" for algo, loss in CASES])
def test_a_step_matches_trl(tiny_model_path, tmp_path, algorithm, loss_type):
    theirs, _, their_loss = one_step(tiny_model_path, tmp_path, "trl", algorithm, loss_type)
    ours, trainer, our_loss = one_step(tiny_model_path, tmp_path, "ntp-rl", algorithm, loss_type)

    assert ours.completions == theirs.completions, "generation from merged weights sampled other tokens"
    zero = [c for c, a in theirs.advantages.items() if a == 0.0]
    assert 0 < len(zero) < len(theirs.advantages), "the batch must mix groups with and without signal"
    for completion, advantage in ours.advantages.items():
        assert advantage == pytest.approx(theirs.advantages[completion], abs=1e-7)
    assert set(ours.advantages) == {c for c, a in theirs.advantages.items() if a != 0.0}

    assert ours.rows_forwarded < theirs.rows_forwarded
    assert ours.rows_forwarded == len(ours.advantages)
    for completion, logps in ours.logps.items():
        assert logps == pytest.approx(theirs.logps[completion], abs=LOGP_ATOL)

    assert set(ours.grads) == set(theirs.grads) and ours.grads
    for name, grad in theirs.grads.items():
        assert grad.abs().max() > 0, f"{name}: no gradient at all, the comparison would be empty"
        # Relative to the tensor's largest entry: a gradient summed from rows of opposite advantage
        # cancels, so small entries carry the round-off of the large terms they were summed from.
        error = float((ours.grads[name] - grad).abs().max())
        assert error <= GRAD_RTOL * float(grad.abs().max()), f"{name}: off by {error:.3g}"
    # At ratio 1 the loss is a sum of advantages (near 0 here): absolute round-off of order-1 terms.
    assert our_loss == pytest.approx(their_loss, rel=1e-4, abs=1e-6)

    useful = [entry["useful_share"] for entry in trainer.state.log_history if "useful_share" in entry]
    assert useful and useful[0] == pytest.approx(len(ours.advantages) / len(theirs.completions))


def test_fast_sampling_draws_the_rollouts(tiny_model_path, tmp_path, monkeypatch):
    """With `fast_sampling` the trainer's rollouts go through InverseCdfSampler, once per token."""
    from ntp_rl import generation

    calls: list[int] = []
    original = generation.InverseCdfSampler.__call__

    def counted(self, input_ids, scores):
        calls.append(scores.size(0))
        return original(self, input_ids, scores)

    monkeypatch.setattr(generation.InverseCdfSampler, "__call__", counted)
    recorder, trainer, loss = one_step(
        tiny_model_path, tmp_path, "ntp-rl", "grpo", "dapo", fast_sampling=True
    )
    assert len(recorder.completions) == 16 and all(len(c) > 0 for c in recorder.completions)
    assert calls and len(calls) <= 8 and sum(calls) >= 16  # 4 prompts x 4 rows, at most 8 new tokens
    assert "generate" not in trainer.accelerator.unwrap_model(trainer.model).__dict__  # context left


def test_skipping_is_off_where_a_zero_advantage_row_has_a_gradient():
    """beta > 0 (GRPO: the KL term of every row counts), an entropy mask or bonus: every row is back-propagated."""
    from ntp_rl.stages import rl_trainer

    trainer = rl_trainer.GRPOTrainer.__new__(rl_trainer.GRPOTrainer)
    trainer.beta, trainer.loss_type, trainer.top_entropy_quantile = 0.0, "dapo", 1.0
    assert trainer._skip_blocker() is None
    trainer.beta = 0.04
    assert "beta > 0" in trainer._skip_blocker()
    trainer.beta, trainer.top_entropy_quantile = 0.0, 0.5
    assert "top_entropy_quantile" in trainer._skip_blocker()
    trainer.top_entropy_quantile, trainer._entropy_bonus_enabled = 1.0, True
    assert "entropy bonus" in trainer._skip_blocker()
    trainer._entropy_bonus_enabled, trainer.loss_type = False, "some_new_loss"
    assert "some_new_loss" in trainer._skip_blocker()


def test_drop_rows_rescales_each_normaliser():
    """The factor that turns the kept rows' loss into TRL's: rows, tokens, or none for batch-wide counts."""
    from ntp_rl.stages.rl_trainer import LOSS_SCALE_KEY, drop_rows

    inputs = {
        "prompt_ids": torch.ones(4, 3, dtype=torch.long),
        "prompt_mask": torch.ones(4, 3, dtype=torch.long),
        "completion_ids": torch.arange(20).reshape(4, 5),
        "completion_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 0, 0]]),
        "advantages": torch.tensor([0.0, 0.5, 0.0, -0.5]),
        "num_items_in_batch": torch.tensor(40.0),
    }
    rows, kept, total = drop_rows(inputs, "rows", keep_one=False)
    assert (kept, total) == (2, 4) and rows[LOSS_SCALE_KEY] == 0.5
    assert rows["completion_ids"].tolist() == [[5, 6, 7], [15, 16, 17]]  # trailing padding trimmed to 3
    assert rows["num_items_in_batch"] is inputs["num_items_in_batch"]
    tokens, _, _ = drop_rows(inputs, "tokens", keep_one=False)
    assert tokens[LOSS_SCALE_KEY] == pytest.approx(5 / 11)
    batch, _, _ = drop_rows(inputs, "batch", keep_one=False)
    assert batch[LOSS_SCALE_KEY] == 1.0

    none = {**inputs, "advantages": torch.zeros(4)}
    empty, kept, _ = drop_rows(none, "rows", keep_one=False)
    assert kept == 0 and empty["advantages"].numel() == 0
    one, kept, _ = drop_rows(none, "rows", keep_one=True)  # several processes: every rank runs the loss
    assert kept == 0 and one["advantages"].tolist() == [0.0]

    images = {**inputs, "pixel_values": torch.zeros(4, 1)}
    whole, kept, total = drop_rows(images, "rows", keep_one=False)
    assert whole is images and kept == total == 4


def test_repack_groups_prompts_and_keeps_the_step_loss():
    """Kept rows of one prompt sit together in full micro-batches; empty ones first; the scale per normaliser."""
    from ntp_rl.stages.rl_trainer import LOSS_SCALE_KEY, repack

    def micro(prompts, advantages):
        return {
            "prompt_ids": torch.tensor([[p, p] for p in prompts]),
            "prompt_mask": torch.ones(len(prompts), 2, dtype=torch.long),
            "completion_ids": torch.arange(len(prompts) * 3).reshape(len(prompts), 3),
            "completion_mask": torch.ones(len(prompts), 3, dtype=torch.long),
            "advantages": torch.tensor(advantages),
            "num_items_in_batch": torch.tensor(36.0),
        }

    # TRL's shuffled split: prompts 7 and 9 carry signal, prompt 8 does not.
    buffer = [
        micro([7, 8, 9], [0.5, 0.0, -0.5]),
        micro([9, 8, 7], [0.5, 0.0, -0.5]),
        micro([8, 7, 9], [0.0, 0.0, 0.0]),
    ]
    packed, kept, total = repack(buffer, "rows")
    assert (kept, total) == (4, 9)
    assert [mb["advantages"].numel() for mb in packed] == [0, 3, 1]
    assert [mb["prompt_ids"][:, 0].tolist() for mb in packed[1:]] == [[7, 7, 9], [9]]
    assert [mb[LOSS_SCALE_KEY] for mb in packed] == [0.0, 1.0, pytest.approx(1 / 3)]
    batch, _, _ = repack(buffer, "batch")
    assert [mb[LOSS_SCALE_KEY] for mb in batch] == [1.0, 1.0, 1.0]
    assert all(mb["num_items_in_batch"] is buffer[0]["num_items_in_batch"] for mb in batch)
    assert repack([{**buffer[0], "pixel_values": torch.zeros(3, 1)}], "rows") is None


def test_a_shared_prompt_gives_trl_log_probabilities_and_gradients(tiny_model_path):
    """Each distinct prompt run once with a KV cache equals TRL's one pass per row, gradients included."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from ntp_rl.generation import cache_keyword
    from ntp_rl.stages.rl_trainer import shared_prefix_logps

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    add_fused_lm_head(model.get_base_model(), temperature=0.7, outputs=("log_probs", "entropy"))
    model.train()
    prompts = torch.randint(100, 4000, (2, 12))
    prompt_mask = torch.ones(2, 12, dtype=torch.long)
    prompt_mask[1, :3] = 0  # left padding
    rows = torch.tensor([0, 1, 0, 1, 0])
    completions = torch.randint(100, 4000, (5, 6))
    completion_mask = torch.ones(5, 6, dtype=torch.long)
    completion_mask[2, 4:] = 0  # ended early
    input_ids = torch.cat([prompts[rows], completions], 1)
    attention_mask = torch.cat([prompt_mask[rows], completion_mask], 1)

    def lora_grads(logps):
        model.zero_grad()
        (logps * completion_mask).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-6] = -100
    full = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    full_logps, full_entropy = full.log_probs[:, -6:], full.entropy[:, -6:]
    theirs = lora_grads(full_logps)
    logps, entropy = shared_prefix_logps(model, input_ids, attention_mask, 6, True, cache_keyword(model))
    ours = lora_grads(logps)
    mask = completion_mask.bool()
    torch.testing.assert_close(logps[mask], full_logps[mask], rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy[mask], full_entropy[mask], rtol=0, atol=1e-5)
    for name, grad in theirs.items():
        assert float((ours[name] - grad).abs().max()) <= GRAD_RTOL * float(grad.abs().max()), name
    distinct = torch.cat([input_ids[:, :12], attention_mask[:, :12]], 1)
    assert shared_prefix_logps(model, input_ids[:2], attention_mask[:2], 6, False) is None  # nothing repeats
    assert torch.unique(distinct, dim=0).size(0) == 2


def test_shared_prompt_prefill_samples_the_same_tokens(tiny_model_path):
    """Repeated (left-padded) prompts prefilled once: the same sampled tokens, one prefill row per prompt."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GenerationConfig

    from ntp_rl.generation import shared_prompt_prefill

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    ).eval()
    prompts = torch.randint(100, 4000, (3, 20))
    prompt_mask = torch.ones(3, 20, dtype=torch.long)
    prompt_mask[1, :4] = 0
    prompt_mask[2, :9] = 0
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    input_ids, attention_mask = prompts[rows].masked_fill(prompt_mask[rows] == 0, 2), prompt_mask[rows]
    config = GenerationConfig(
        max_new_tokens=12, do_sample=True, temperature=1.2, pad_token_id=2, eos_token_id=2
    )
    torch.manual_seed(1)
    plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    embedded: list[tuple[int, ...]] = []
    hook = model.get_base_model().model.embed_tokens.register_forward_hook(
        lambda module, args, output: embedded.append(tuple(args[0].shape))
    )
    with shared_prompt_prefill(model):
        torch.manual_seed(1)
        shared = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    hook.remove()
    assert torch.equal(shared, plain)
    assert embedded[:2] == [(3, 19), (9, 1)]  # 3 prompts prefilled, then every row from the last prompt token
    assert "generate" not in model.__dict__  # the model's own generate is back


def test_prefix_aligned_batch_puts_the_common_prefix_in_the_same_columns():
    from ntp_rl.generation import MIN_SHARED_PREFIX, prefix_aligned_batch

    prefix = [7, 8, 9, 10, 11]
    ids, mask = prefix_aligned_batch([prefix + [1, 2, 3], prefix + [4], prefix + [5, 6]], pad_id=0)
    assert ids.tolist() == [prefix + [1, 2, 3], prefix + [0, 0, 4], prefix + [0, 5, 6]]
    assert mask.tolist() == [[1] * 8, [1] * 5 + [0, 0, 1], [1] * 5 + [0, 1, 1]]
    # every row keeps its last token after the prefix; a prefix that is a whole prompt is cut by one
    ids, mask = prefix_aligned_batch([prefix, prefix + [1]], pad_id=0)
    assert ids.tolist() == [prefix[:4] + [0, 11], prefix + [1]] and mask[0].tolist() == [1] * 4 + [0, 1]
    # too short a prefix to share: plain left padding
    short = [1] * (MIN_SHARED_PREFIX - 1)
    ids, mask = prefix_aligned_batch([short + [2, 3], short + [4]], pad_id=0)
    assert ids.tolist() == [short + [2, 3], [0] + short + [4]]


def test_common_prefix_prefilled_once_gives_the_greedy_tokens_of_left_padding(tiny_model_path):
    """Prompts sharing the chat template's system prompt: the prefix is run once (one row), the rest once
    per prompt, and decoding writes what `generate` writes on the same prompts left-padded: greedy, and
    sampled with the same seed (a random tiny model's greedy tokens barely depend on the prompt)."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ntp_rl.generation import Decoding, encode_prompts, generate, sampling_processors

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = ["What is 2 + 2?", "Name a colour, please.", "Count to three in French, then stop."]
    encoded = encode_prompts(tokenizer, prompts)
    common = len(os.path.commonprefix(encoded))
    assert common >= 8  # the template's system prompt
    embedded: list[tuple[int, ...]] = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda module, args, output: embedded.append(tuple(args[0].shape))
    )
    greedy = generate(model, tokenizer, prompts, Decoding(max_new_tokens=8), batch_size=3)
    hook.remove()
    width = max(map(len, encoded))
    assert embedded[:3] == [(1, common), (3, width - 1 - common), (3, 1)]
    sampled = generate(model, tokenizer, prompts, Decoding(temperature=1.0, max_new_tokens=8, seed=3), 3)

    order = sorted(range(3), key=lambda i: -len(encoded[i]))  # as generate batches them
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in order])
    mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in order])
    plain = {"input_ids": input_ids, "attention_mask": mask, "max_new_tokens": 8, "pad_token_id": pad}
    out_greedy = model.generate(**plain, do_sample=False)[:, width:]
    torch.manual_seed(3 * 100_003)
    out_sampled = model.generate(**plain, **sampling_processors(1.0))[:, width:]
    for r, i in enumerate(order):
        for ours, theirs in ((greedy, out_greedy), (sampled, out_sampled)):
            ids = ours[i].token_ids[0]
            assert ids == theirs[r].tolist()[: len(ids)]


def test_shared_prefill_leaves_num_return_sequences_to_generate(tiny_model_path):
    """`generate` repeats rows for `num_return_sequences` after any cache was built: the wrapper steps aside."""
    from transformers import AutoModelForCausalLM

    from ntp_rl.generation import prefix_aligned_batch, shared_prompt_prefill

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    prefix = list(range(100, 110))
    input_ids, mask = prefix_aligned_batch([prefix + [5, 6, 7], prefix + [8]], pad_id=2)
    settings = {"max_new_tokens": 5, "do_sample": True, "num_return_sequences": 2, "pad_token_id": 2}
    torch.manual_seed(0)
    plain = model.generate(input_ids=input_ids, attention_mask=mask, **settings)
    with shared_prompt_prefill(model):
        torch.manual_seed(0)
        shared = model.generate(input_ids=input_ids, attention_mask=mask, **settings)
    assert shared.shape[0] == 4 and torch.equal(shared, plain)


def test_eval_generate_samples_what_num_return_sequences_samples(tiny_model_path):
    """ntp-rl's batched `generate` (prompts prefilled once for their samples) draws the tokens that
    transformers' `generate` draws with `num_return_sequences` and the same sampler."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ntp_rl.generation import Decoding, encode_prompts, generate, sampling_processors

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = ["What is 2 + 2?", "Name a colour, please."]  # different lengths: left padding
    decoding = Decoding(num_samples=3, temperature=1.0, max_new_tokens=6, seed=5)
    ours = generate(model, tokenizer, prompts, decoding, batch_size=6)

    encoded = encode_prompts(tokenizer, prompts)
    order = sorted(range(2), key=lambda i: -len(encoded[i]))  # as generate batches them
    width = max(map(len, encoded))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in order])
    mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in order])
    torch.manual_seed(decoding.seed * 100_003)
    out = model.generate(  # each prompt's rows repeated, as `num_return_sequences` would (greedy mode refuses it)
        input_ids=input_ids.repeat_interleave(3, dim=0),
        attention_mask=mask.repeat_interleave(3, dim=0),
        max_new_tokens=6,
        **sampling_processors(1.0),
        pad_token_id=pad,
        eos_token_id=[tokenizer.eos_token_id],
    )[:, width:]
    for r, i in enumerate(order):
        for s in range(3):
            ids = out[r * 3 + s].tolist()
            assert ours[i].token_ids[s] == ids[: len(ours[i].token_ids[s])]


def test_inverse_cdf_sampler_draws_from_the_tempered_softmax():
    """One uniform per row, the cumulative distribution inverted: frequencies match softmax(scores / T)."""
    from ntp_rl.generation import sampling_processors

    scores = torch.tensor([2.0, 1.0, 0.0, -1.0, -8.0, float("-inf")])
    temperature, draws = 1.3, 200_000
    processors = sampling_processors(temperature)["logits_processor"]
    torch.manual_seed(0)
    out = processors(torch.zeros(draws, 1, dtype=torch.long), scores.repeat(draws, 1))
    # one finite score per row, 0 at the drawn token: transformers' greedy argmax takes it
    assert torch.isfinite(out).sum(dim=1).eq(1).all() and out.max(dim=1).values.eq(0).all()
    counts = torch.bincount(out.argmax(dim=1), minlength=6).double()
    expected = torch.softmax(scores / temperature, dim=0).double() * draws
    assert counts[5] == 0  # a token of zero probability is never drawn
    sigma = (expected * (1 - expected / draws)).sqrt()
    assert ((counts[:5] - expected[:5]).abs() <= 5 * sigma[:5] + 1).all(), (counts, expected)
    assert counts[4] > 0  # the rare token (p ~ 2e-4) is drawn about as often as it should be


def test_two_level_draw_across_blocks_a_ragged_vocabulary_and_zero_mass_tokens():
    """The sampler's blocks: mass spread over several blocks and a last, partial block, every other
    token impossible; frequencies match the softmax and no impossible token is ever drawn."""
    from ntp_rl.generation import SAMPLER_BLOCK, inverse_cdf_draw

    vocab = 3 * SAMPLER_BLOCK + 37  # the last block is padded
    scores = torch.full((vocab,), float("-inf"))
    chosen = torch.tensor([0, SAMPLER_BLOCK - 1, SAMPLER_BLOCK + 1, 2 * SAMPLER_BLOCK + 5, vocab - 1])
    scores[chosen] = torch.tensor([1.0, 0.5, 0.0, -6.0, 0.8])
    scores[1 : 3 * SAMPLER_BLOCK : 2] = torch.maximum(scores[1 : 3 * SAMPLER_BLOCK : 2], torch.tensor(-1.0))
    draws = 200_000
    torch.manual_seed(0)
    tokens = inverse_cdf_draw(scores.repeat(draws, 1)).squeeze(1)
    counts = torch.bincount(tokens, minlength=vocab).double()
    expected = torch.softmax(scores, dim=0).double() * draws
    assert counts[expected == 0].sum() == 0  # never a token of zero probability
    sigma = (expected * (1 - expected / draws)).sqrt()
    assert ((counts - expected).abs() <= 5 * sigma + 1).all()
    assert counts[vocab - 1] > 0 and counts[2 * SAMPLER_BLOCK + 5] > 0  # the ragged block, the rare token


def test_top_p_leaves_only_the_nucleus():
    from ntp_rl.generation import sampling_processors

    scores = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    processors = sampling_processors(1.0, top_p=0.7)["logits_processor"]
    torch.manual_seed(0)
    drawn = processors(torch.zeros(20_000, 1, dtype=torch.long), scores.repeat(20_000, 1)).argmax(dim=1)
    assert set(drawn.tolist()) == {0, 1}  # 0.5 + 0.3 covers 0.7


def test_finished_rows_leave_the_batch_and_the_output_is_generate_s(tiny_model_path, monkeypatch):
    """Greedy `generate` with rows dropped as they finish writes what one `model.generate` call writes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ntp_rl import generation

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    with torch.no_grad():  # large random weights: greedy rows that differ (the tiny model repeats one token)
        for weight in model.parameters():
            if weight.dim() > 1:
                weight.normal_(0, 0.3)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = ["What is 2 + 2?", "Name a colour, please.", "Count to three.", "Say hello."]
    decoding = generation.Decoding(max_new_tokens=12)
    free = generation.generate(model, tokenizer, prompts, decoding, batch_size=4)
    # An end-of-sequence token that one row writes third and the others never: rows finish apart.
    stop = free[0].token_ids[0][2]
    assert all(stop not in g.token_ids[0] for g in free[1:])
    model.generation_config.eos_token_id = stop
    forwarded: list[int] = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda module, args, output: forwarded.append(args[0].size(0))
    )
    monkeypatch.setattr(generation, "EVICT_EVERY", 4)
    ours = generation.generate(model, tokenizer, prompts, decoding, batch_size=4)
    hook.remove()
    monkeypatch.setattr(generation, "EVICT_EVERY", 10**6)
    whole = generation.generate(model, tokenizer, prompts, decoding, batch_size=4)
    assert [g.token_ids for g in ours] == [g.token_ids for g in whole]
    assert len(ours[0].token_ids[0]) == 3 and all(len(g.token_ids[0]) == 12 for g in ours[1:])
    assert min(forwarded) < len(prompts)  # finished rows were dropped before the last chunk


def test_generate_wrappers_nest_and_unwind():
    """Two contexts that replace `generate` (shared prefill, sampler): leaving the inner one puts the
    outer one's wrapper back, leaving both puts back the class's own method."""
    from ntp_rl.generation import _generate_replaced

    class Model:
        def generate(self):
            return "own"

    model = Model()
    with _generate_replaced(model, lambda: "outer"):
        with _generate_replaced(model, lambda: "inner"):
            assert model.generate() == "inner"
        assert model.generate() == "outer"
    assert model.generate() == "own" and "generate" not in model.__dict__
