"""ntp-rl's GRPO/RLOO step computes what TRL's computes, with less work (ntp_rl/stages/rl_trainer.py).

Each case runs one optimizer step twice from the same tiny model, LoRA weights and seed: once with
TRL's own trainer and once with ntp-rl's subclass, on prompts of which half always get the same
reward (zero-advantage groups). Compared: the sampled completions (generation from merged weights
must sample the same tokens), each completion's advantage, the per-token log-probabilities of every
completion ntp-rl back-propagated, and the gradient of every LoRA weight (SGD, no clipping: the
gradient as the loss defines it), within float32 round-off of sums taken in another order.
ntp-rl must also have run the policy over fewer rows.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

NUM_GENERATIONS = 4
PROMPTS = [f"Say {kind} {i}" for i in range(2) for kind in ("A", "B")]  # 4 prompts: 2 with signal, 2 without
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-7
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


def one_step(tiny_model_path, tmp_path, side: str, algorithm: str, loss_type: str | None):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import trl
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
    trainer = cls(
        model=model, reward_funcs=[reward], args=config, train_dataset=dataset, processing_class=tokenizer
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


@pytest.mark.parametrize(("algorithm", "loss_type"), CASES, ids=[f"{a}-{l}" for a, l in CASES])
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
        torch.testing.assert_close(ours.grads[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=name)
    assert our_loss == pytest.approx(their_loss, rel=1e-4, abs=1e-7)

    useful = [entry["useful_share"] for entry in trainer.state.log_history if "useful_share" in entry]
    assert useful and useful[0] == pytest.approx(len(ours.advantages) / len(theirs.completions))


def test_skipping_is_off_where_a_zero_advantage_row_has_a_gradient(tiny_model_path, tmp_path, caplog):
    """beta > 0: the KL term of every row counts, so every row is back-propagated (and the log says why)."""
    import logging

    from ntp_rl.stages import rl_trainer

    with caplog.at_level(logging.INFO, logger=rl_trainer.__name__):
        trainer = rl_trainer.GRPOTrainer.__new__(rl_trainer.GRPOTrainer)
        trainer.skip_zero_advantage = True
        trainer.beta = 0.04
        trainer.loss_type = "dapo"
        trainer.top_entropy_quantile = 1.0
        trainer._skip_setup()
    assert trainer._skip_normaliser is None
    assert "beta > 0" in caplog.text


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
