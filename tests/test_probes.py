"""Probe machinery on planted structure: a probe must beat chance by a wide margin where the structure
is there and fall to chance where it is shuffled away; credit by distance must be non-zero beyond
k = 1 and vanish when gradients are stopped across positions. Plus the rhyme set, the answer labels,
the settings and the distance-from-NTP points."""

from __future__ import annotations

import random

import pytest
import torch

from ntp_rl.probe_settings import ProbeSettings
from ntp_rl.probes.answer import bucket_edges, probe_answers
from ntp_rl.probes.credit import gradient_credit
from ntp_rl.probes.distance import distance_from_ntp
from ntp_rl.probes.future import future_token_probe, shared_prefix_length
from ntp_rl.probes.linear import probe_layers, split_groups
from ntp_rl.probes.rhyme import FAMILIES, couplets, last_word, rhyme_family, score_second_lines, second_line
from ntp_rl.probes.texts import integer_answer

ALPHABET = list(range(1000, 1016))  # 16 token ids of the default tokenizer
PLANTED_DISTANCE = 2


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from ntp_rl.models import load_causal_lm

    model = load_causal_lm(tiny_model_path)
    model.eval()
    return model


def planted(count: int, length: int, seed: int = 0) -> list[list[int]]:
    """x[t + 2] = f(x[t]) for a fixed permutation f of the alphabet."""
    rng = random.Random(seed)
    image = ALPHABET[:]
    random.Random(123).shuffle(image)
    f = dict(zip(ALPHABET, image, strict=True))
    out = []
    for _ in range(count):
        sequence = [rng.choice(ALPHABET) for _ in range(PLANTED_DISTANCE)]
        while len(sequence) < length:
            sequence.append(f[sequence[-PLANTED_DISTANCE]])
        out.append(sequence)
    return out


def independent(count: int, length: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.choice(ALPHABET) for _ in range(length)] for _ in range(count)]


def test_linear_probe_reads_a_planted_linear_code_and_not_shuffled_labels():
    generator = torch.Generator().manual_seed(0)
    rows, width, classes = 1500, 32, 8
    labels = torch.randint(0, classes, (rows,), generator=generator)
    centres = torch.randn(classes, width, generator=generator)
    planted_layer = centres[labels] + 2.0 * torch.randn(rows, width, generator=generator)
    noise_layer = torch.randn(rows, width, generator=generator)
    features = torch.stack([planted_layer, noise_layer])
    groups = [i // 5 for i in range(rows)]
    fit = split_groups(groups, 0.7, seed=0)
    result = probe_layers(features, {"y": labels}, {"y": classes}, fit, groups, seed=0)["y"]
    chance = result["majority"]
    assert chance < 0.2
    assert result["accuracy"][0] > chance + 0.5  # the planted layer
    assert abs(result["accuracy"][1] - chance) < 0.08  # pure noise: chance
    assert max(result["shuffled"]) < chance + 0.08  # the control: labels shuffled across rows
    assert result["best_layer"] == 0
    # Whole groups on one side of the split.
    held_groups = {g for g, f in zip(groups, fit, strict=True) if not f}
    assert not held_groups & {g for g, f in zip(groups, fit, strict=True) if f}


def test_future_probe_on_tiny_reads_a_planted_future_token_and_falls_to_chance_without_it(tiny):
    result = future_token_probe(tiny, planted(60, 40), k=3, vocab=16, max_positions=1500, seed=0)
    by_k = result["by_distance"]
    assert result["distances"] == [0, 1, 2, 3] and result["num_layers"] == 3
    assert by_k["2"]["majority"] < 0.2
    assert by_k["2"]["best_accuracy"] > 0.9  # x[t+2] = f(x[t]): read off the current token
    assert by_k["0"]["best_accuracy"] > 0.9

    shuffled = future_token_probe(tiny, independent(60, 40), k=3, vocab=16, max_positions=1500, seed=0)
    for k in ("1", "2", "3"):
        entry = shuffled["by_distance"][k]
        assert entry["best_accuracy"] < entry["majority"] + 0.08, (k, entry)
    assert shuffled["by_distance"]["0"]["best_accuracy"] > 0.9  # the current token is still readable


def test_shared_prefix_is_skipped():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2]]) == 0


def test_credit_by_distance_is_nonzero_beyond_one_and_zero_with_gradients_stopped(tiny):
    sequences = planted(6, 24)
    credit = gradient_credit(tiny, sequences, k=4, max_targets=6)
    assert credit["distances"] == [1, 2, 3, 4] and credit["num_layers"] == 2
    assert all(norm > 0 for norm in credit["mean_norm"])
    assert credit["share_beyond_1"] > 0.05
    assert sum(credit["share"]) == pytest.approx(1.0, abs=1e-4)
    control = gradient_credit(tiny, sequences, k=4, max_targets=6, detach_kv=True)
    assert control["mean_norm"][0] > 0
    assert control["mean_norm"][1:] == [0.0, 0.0, 0.0]
    assert control["share_beyond_1"] == 0.0 and control["mass_beyond_k"] == 0.0
    # The forward pass is unchanged by the control: only gradient paths are cut.
    assert control["mean_norm"][0] == pytest.approx(credit["mean_norm"][0], rel=0.5)


def test_credit_control_refuses_a_model_without_separate_key_value_projections():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    sequences = [[1, 2, 3, 4, 5, 6]] * 2
    assert gradient_credit(model, sequences, k=2)["share_beyond_1"] > 0  # fused qkv: measured fine
    with pytest.raises(ValueError, match="k_proj/v_proj"):
        gradient_credit(model, sequences, k=2, detach_kv=True)


def test_rhyme_set_is_deterministic_and_every_word_is_in_its_family():
    rows = couplets()
    assert rows == couplets()
    assert 6 <= len(FAMILIES) <= 10 and len(rows) >= 200
    for family, (_, words) in FAMILIES.items():
        assert len(words) >= 8 and len(set(words)) == len(words)
        for word in words:
            assert rhyme_family(word) == family, word
    assert all(row["first_line"].rstrip(",").endswith(row["word"]) for row in rows)


@pytest.mark.parametrize(
    ("completion", "line", "word", "family"),
    [
        ("And danced until the morning light.", "And danced until the morning light.", "light", "-ight"),
        ("\n  We sailed away\nmore text", "We sailed away", "away", "-ay"),
        ("The bells began to ring!", "The bells began to ring!", "ring", "-ing"),
        ("Into the SHORE", "Into the SHORE", "shore", "-ore"),
        ("And then we said hello", "And then we said hello", "hello", None),
        ("", "", None, None),
    ],
)
def test_rhyme_second_line_parsing(completion, line, word, family):
    assert second_line(completion) == line
    assert last_word(line) == word
    assert (rhyme_family(word) if word else None) == family


def test_rhyme_outcomes_are_counted():
    rows = [r for r in couplets() if r["template"] == 0][:4]  # four -ight words
    scored = score_second_lines(rows, ["a bright light", "a " + rows[1]["word"], "the day", "12 34"])
    assert scored["rates"] == {"rhymes": 0.5, "same_word": 0.25, "other_family": 0.25, "no_family": 0.0,
                               "empty": 0.25}  # fmt: skip
    assert scored["rhyme_rate"] == 0.5 and scored["chance_rate"] == pytest.approx(1 / len(FAMILIES), abs=1e-4)


@pytest.mark.parametrize(
    ("text", "value"), [("85", 85), ("#### 1,234", 1234), ("so -7", -7), ("3 then 42", 42), ("none", None)]
)
def test_integer_answer(text, value):
    assert integer_answer(text) == value


def test_answer_probe_reads_a_planted_last_digit():
    rng = random.Random(0)
    answers = [rng.randint(10, 500) for _ in range(400)]
    digit_code = torch.randn(10, 24, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(400, 24, generator=torch.Generator().manual_seed(2))
    features = torch.stack([noise, digit_code[[a % 10 for a in answers]] + 0.5 * noise])
    result = probe_answers(features, answers, buckets=4, seed=0)["targets"]
    digit = result["last_digit"]
    assert digit["chance"] == 0.1
    assert digit["accuracy"][1] > 0.8 and digit["accuracy"][0] < digit["majority"] + 0.1
    assert len(result["bucket"]["edges"]) == 3


def test_bucket_edges_are_quantiles():
    assert bucket_edges(list(range(100)), 4) == [25, 50, 75]
    assert bucket_edges([5] * 10, 4) == [5]  # no empty buckets from repeated values


def test_probe_settings_shorthands():
    assert ProbeSettings.model_validate(True).enabled() == ["future", "answer", "rhyme", "credit"]
    only = ProbeSettings.model_validate({"future": {"k": 2}, "rhyme": True, "credit": False})
    assert only.enabled() == ["future", "rhyme"] and only.future.k == 2
    with pytest.raises(ValueError, match="texts"):
        ProbeSettings.model_validate({"credit": {"texts": 0}})


def test_distance_from_ntp_points():
    summary = {
        "base": {"greedy_accuracy": 0.2, "reference_nll": {"value": 1.5}},
        "sft": {"greedy_accuracy": 0.5, "reference_nll": {"value": 0.4}, "kl_to_base": {"value": 0.3}},
        "rl": {"greedy_accuracy": 0.6, "reference_nll": {"value": 0.5}, "kl_to_base": {"value": 0.4}},
    }
    out = distance_from_ntp(summary, "base", {"base": False, "sft": True, "rl": True})
    assert out["accuracy_metric"] == "greedy_accuracy"
    assert out["points"]["base"] == {
        "accuracy": 0.2,
        "reward_gained": 0.0,
        "reference_nll": 1.5,
        "kl_to_base": 0.0,
    }
    assert out["points"]["rl"]["reward_gained"] == pytest.approx(0.4)
    assert out["points"]["sft"]["kl_to_base"] == 0.3
