"""`score_completions` scores as TRL's GRPO trainer does: checked against a real GRPOTrainer step on tiny.

The trainer is given three rewards with weights; each returns None on some rows (by the `kind`
column) and on `kind == "none"` rows all three do. The rewards record what the trainer called them
with; `score_completions` is then called on those same prompts, completions and columns, and its
per-reward values and weighted sums are compared with the trainer's own numbers: the per-sample
rewards it logs, its advantages (with `scale_rewards: none`, the weighted sum minus the group's
mean) and its logged means.
"""

from __future__ import annotations

import logging
import math

import pytest
from ntp_rl.rewards.scoring import RewardScores, call_reward, score_completions, weighted_sum

# kind -> the rewards that do not apply to its rows
KINDS = {"all": (), "no_length": ("length_reward",), "only_length": ("answer_reward", "step_reward")}
KINDS["none"] = ("length_reward", "answer_reward", "step_reward")
WEIGHTS = [0.5, 2.0, -1.0]
NUM_GENERATIONS = 2
FLOAT32 = {"rel": 1e-5, "abs": 1e-5}  # TRL keeps rewards in a float32 tensor


def _skipped(name: str, kind: list[str]) -> list[bool]:
    return [name in KINDS[k] for k in kind]


def length_reward(completions, completion_ids, kind, **kwargs):
    return [
        None if skip else len(ids) / 10
        for skip, ids in zip(_skipped("length_reward", kind), completion_ids, strict=True)
    ]


def answer_reward(completions, answer, kind, **kwargs):
    texts = [c[0]["content"] for c in completions]
    return [
        None if skip else float(a in text) + len(text) % 3
        for skip, a, text in zip(_skipped("answer_reward", kind), answer, texts, strict=True)
    ]


def step_reward(completions, completion_ids, trainer_state, kind, log_metric, **kwargs):
    """Reads the trainer state, as a reward shaped by training progress does."""
    log_metric("step_reward/probe", 1.0)
    return [
        None if skip else 0.25 * (ids[-1] % 5) + trainer_state.global_step
        for skip, ids in zip(_skipped("step_reward", kind), completion_ids, strict=True)
    ]


REWARDS = [length_reward, answer_reward, step_reward]


class Recorded:
    """A reward that keeps the keyword arguments of every call the trainer makes."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = fn.__name__
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        # The trainer passes its live state, which moves on after the call: keep the step of the call.
        self.calls.append({**kwargs, "global_step": kwargs["trainer_state"].global_step})
        return self.fn(**kwargs)


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    """(the recorded rewards, the trainer, its logs with rewards) after one GRPO step on tiny."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": str(2 * i), "kind": kind}
        for i, kind in enumerate(KINDS)
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    recorded = [Recorded(fn) for fn in REWARDS]
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        reward_funcs=recorded,
        args=GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("grpo")),
            max_steps=1,
            per_device_train_batch_size=len(rows) * NUM_GENERATIONS,
            num_generations=NUM_GENERATIONS,
            max_completion_length=6,
            reward_weights=WEIGHTS,
            scale_rewards="none",  # advantage = weighted sum - the group's mean: the sum can be read back
            beta=0.0,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            seed=0,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    return recorded, trainer, logs


def _ours(recorded) -> RewardScores:
    """`score_completions` on exactly what the trainer passed to its rewards."""
    (call,) = recorded[0].calls  # one generation batch, scored once
    for reward in recorded[1:]:
        assert reward.calls[0]["completion_ids"] == call["completion_ids"]
    columns = {name: call[name] for name in ("answer", "kind")}
    texts = [completion[0]["content"] for completion in call["completions"]]
    return score_completions(REWARDS, WEIGHTS, call["prompts"], texts, call["completion_ids"], columns)


def test_the_batch_has_rows_where_some_and_where_all_rewards_are_none(trained):
    recorded, _, _ = trained
    kinds = set(recorded[0].calls[0]["kind"])
    assert kinds == set(KINDS), "the step must score every kind of row for this test to mean anything"


def test_per_reward_values_match_the_trainer(trained):
    recorded, trainer, _ = trained
    ours = _ours(recorded)
    assert ours.names == [fn.__name__ for fn in REWARDS]
    for name, values in zip(ours.names, ours.per_reward, strict=True):
        theirs = list(trainer._logs["rewards"][name])  # the trainer's per-sample rewards, None as NaN
        assert len(theirs) == len(values)
        for mine, trl in zip(values, theirs, strict=True):
            if mine is None:
                assert math.isnan(trl)
            else:
                assert mine == pytest.approx(trl, **FLOAT32)


def test_weighted_sum_matches_the_trainer_advantages(trained):
    """With scale_rewards "none" TRL's advantage is the weighted sum minus its group's mean (NaN-aware),
    and 0 for a completion no reward applied to."""
    recorded, trainer, _ = trained
    ours = _ours(recorded)
    advantages = list(trainer._logs["advantages"])
    assert len(advantages) == len(ours.total)
    kinds = recorded[0].calls[0]["kind"]
    for start in range(0, len(ours.total), NUM_GENERATIONS):
        group = ours.total[start : start + NUM_GENERATIONS]
        present = [t for t in group if t is not None]
        for offset, total in enumerate(group):
            index = start + offset
            if total is None:
                assert kinds[index] == "none"
                assert advantages[index] == 0.0
            else:
                expected = total - sum(present) / len(present)
                assert expected == pytest.approx(advantages[index], **FLOAT32)
    assert [t is None for t in ours.total] == [k == "none" for k in kinds]


def test_means_match_the_trainer_logs(trained):
    recorded, _, logs = trained
    ours = _ours(recorded)
    (log,) = logs
    present = [t for t in ours.total if t is not None]
    assert sum(present) / len(present) == pytest.approx(log["reward"], **FLOAT32)
    for name, values in zip(ours.names, ours.per_reward, strict=True):
        applied = [v for v in values if v is not None]
        assert sum(applied) / len(applied) == pytest.approx(log[f"rewards/{name}/mean"], **FLOAT32)
    assert log["step_reward/probe"] == 1.0  # log_metric reached the trainer


def test_the_same_keyword_arguments_as_the_trainer(trained):
    recorded, _, _ = trained
    trl_call = recorded[2].calls[0]
    again = Recorded(step_reward)
    texts = [completion[0]["content"] for completion in trl_call["completions"]]
    columns = {name: trl_call[name] for name in ("answer", "kind")}
    call_reward(again, trl_call["prompts"], texts, trl_call["completion_ids"], columns)
    (ours,) = again.calls
    assert set(ours) == set(trl_call)
    for key in ("prompts", "completions", "completion_ids", "answer", "kind"):
        assert ours[key] == trl_call[key], key
    # Outside a trainer: a fresh TrainerState, at the step of the trainer's first call.
    assert type(ours["trainer_state"]) is type(trl_call["trainer_state"])
    assert ours["global_step"] == trl_call["global_step"] == 0


# --- without a trainer -------------------------------------------------------------------------


def test_none_is_left_out_of_the_sum_and_all_none_is_none(caplog):
    per_reward = [[1.0, None, None, 2.0], [3.0, 4.0, None, float("nan")]]

    def first(completions, **kwargs):
        return per_reward[0]

    def second(completions, **kwargs):
        return per_reward[1]

    with caplog.at_level(logging.WARNING, logger="ntp_rl.rewards.scoring"):
        scores = score_completions(
            [first, second], [2.0, -1.0], [[{"role": "user", "content": "q"}]] * 4, ["a"] * 4, [[1]] * 4
        )
    assert scores.per_reward == [[1.0, None, None, 2.0], [3.0, 4.0, None, None]]  # NaN is None, as in TRL
    assert scores.total == [-1.0, -4.0, None, 4.0]  # a None counted as 0.0 would make the third 0.0
    assert "every reward returned None for 1 of 4 completions" in caplog.text
    assert weighted_sum(per_reward[:1], [0.5]) == [0.5, None, None, 1.0]


def test_a_reward_with_the_wrong_number_of_values_is_an_error():
    def short(completions, **kwargs):
        return [1.0]

    with pytest.raises(ValueError, match="returned 1 rewards, but 2 were expected"):
        score_completions([short], [1.0], ["p", "q"], ["a", "b"], [[1], [2]])


def test_completions_are_messages_for_conversational_prompts_and_text_otherwise():
    seen = []

    def record(completions, **kwargs):
        seen.append(completions)
        return [0.0] * len(completions)

    call_reward(record, [[{"role": "user", "content": "q"}]], ["a"], [[1]])
    call_reward(record, ["q"], ["a"], [[1]])
    assert seen == [[[{"role": "assistant", "content": "a"}]], ["a"]]
