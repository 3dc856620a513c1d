"""The reward trainer that scores each distinct row once: the same loss and gradient as TRL's, fewer rows.

Checked against TRL's RewardTrainer on the same batch (tiny model, float32), and the sampler that
keeps a prompt's pairs together: every row once per epoch, prompts contiguous, the same order for
the same (seed, epoch).
"""

from __future__ import annotations

import pytest
import torch

from ntp_rl.stages.reward_trainer import (
    DISTINCT_SHARE_KEY,
    PromptGroupSampler,
    SharedResponseRewardTrainer,
    distinct_rows,
    prompt_groups,
)


def _message(text: str, role: str = "assistant") -> list[dict[str, str]]:
    return [{"role": role, "content": text}]


def _pairs() -> list[dict]:
    """Pairs of three samples of one prompt (every pair) and one pair of another: shared responses."""
    first, second = _message("Review the lamp.", "user"), _message("Review the mug.", "user")
    a, b, c = "I love this lamp.", "The lamp is fine.", "The lamp broke."
    rows = [(first, a, b), (first, a, c), (first, b, c), (second, "A great mug.", "A cheap mug.")]
    return [{"prompt": p, "chosen": _message(x), "rejected": _message(y)} for p, x, y in rows]


def test_distinct_rows_finds_repeats_and_maps_every_row_back():
    ids = torch.tensor([[5, 6, 0], [7, 8, 9], [5, 6, 0], [5, 6, 6]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    unique_ids, unique_mask, inverse = distinct_rows(ids, mask)
    assert unique_ids.shape[0] == 3  # [5, 6, pad] twice; [5, 6, 6] differs by its mask
    assert torch.equal(unique_ids[inverse], ids) and torch.equal(unique_mask[inverse], mask)
    assert distinct_rows(ids[:2], mask[:2]) is None  # nothing repeated: nothing to save


def test_prompt_group_sampler_keeps_prompts_together_and_is_a_function_of_seed_and_epoch():
    prompts = ["p", "q", "p", "r", "q", "p", "s"]
    groups = prompt_groups(prompts)
    assert groups == [[0, 2, 5], [1, 4], [3], [6]]
    sampler = PromptGroupSampler(groups, seed=3)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(prompts))) and len(sampler) == len(prompts)
        runs = [prompts[i] for i in order]
        assert all(  # each prompt's rows form one contiguous run
            runs.index(p) + runs.count(p) - 1 == len(runs) - 1 - runs[::-1].index(p) for p in set(runs)
        )
        orders.append(order)
    assert orders[0] == orders[2]  # a resumed epoch replays the uninterrupted one's order
    assert {tuple(PromptGroupSampler(groups, seed=s)) for s in range(8)} != {tuple(orders[0])}


@pytest.fixture(scope="module")
def trainers(tiny_model_path, tmp_path_factory):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import RewardConfig, RewardTrainer

    from ntp_rl.models import load_sequence_classifier, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_path)
    built = {}
    for name, cls in (("trl", RewardTrainer), ("ours", SharedResponseRewardTrainer)):
        set_seed(0)  # the same score head and LoRA weights on both sides
        model = load_sequence_classifier(tiny_model_path, pad_token_id=tokenizer.pad_token_id)
        args = RewardConfig(
            output_dir=str(tmp_path_factory.mktemp(name)),
            per_device_train_batch_size=4,
            max_length=128,
            bf16=False,
            gradient_checkpointing=False,
            report_to="none",
            seed=0,
        )
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS")
        lora.modules_to_save = ["score"]
        built[name] = cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(_pairs()),
            processing_class=tokenizer,
            peft_config=lora,
        )
    return built


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_the_loss_and_gradient_of_a_batch_are_trl_s_with_fewer_rows_forwarded(trainers):
    ours, trl = trainers["ours"], trainers["trl"]
    batch = next(iter(trl.get_train_dataloader()))  # every pair of the dataset, in TRL's order
    seen = []
    hook = ours.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        loss_ours, grads_ours = _loss_and_grads(ours, batch)
    finally:
        hook.remove()
    loss_trl, grads_trl = _loss_and_grads(trl, batch)
    assert batch["input_ids"].shape[0] == 8 and seen == [5]  # 8 rows, 5 distinct texts (3 + 2)
    assert ours._metrics["train"][DISTINCT_SHARE_KEY][-1] == pytest.approx(5 / 8)
    torch.testing.assert_close(loss_ours, loss_trl, rtol=1e-5, atol=1e-6)
    assert grads_ours.keys() == grads_trl.keys() and grads_ours
    for name, grad in grads_trl.items():
        scale = grad.abs().max().item() or 1.0
        assert (grads_ours[name] - grad).abs().max().item() <= 1e-4 * scale, name


def test_the_training_sampler_groups_the_pairs_of_a_prompt(trainers):
    ours = trainers["ours"]
    sampler = ours._get_train_sampler()
    assert isinstance(sampler, PromptGroupSampler)
    prompts = [row["prompt"][0]["content"] for row in ours.train_dataset]
    order = [prompts[i] for i in sampler]
    assert order in (
        ["Review the lamp."] * 3 + ["Review the mug."],
        ["Review the mug."] + ["Review the lamp."] * 3,
    )
    ours.group_pairs_by_prompt = False
    try:
        assert not isinstance(ours._get_train_sampler(), PromptGroupSampler)
    finally:
        ours.group_pairs_by_prompt = True


def test_score_conversations_scores_a_repeated_conversation_once(trainers):
    from ntp_rl.rewards.learned import score_conversations

    model, tokenizer = trainers["trl"].model, trainers["trl"].processing_class
    pairs = _pairs()
    conversations = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
    seen = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        scores = score_conversations(model, tokenizer, conversations, batch_size=16)
    finally:
        hook.remove()
    assert sum(seen) == 5  # five distinct conversations among eight
    alone = [score_conversations(model, tokenizer, [c], batch_size=1)[0] for c in conversations]
    assert scores == pytest.approx(alone, abs=1e-5)
    assert scores[0] == scores[1]  # the same chosen text of the same prompt, one score
