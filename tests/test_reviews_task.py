"""`synthetic:reviews` and its gold, `review_warmth`: splits, SFT targets mid-scale, degenerate text low."""

from __future__ import annotations

import statistics

import pytest
from ntp_rl.rewards import resolve_reward
from ntp_rl.rewards.errors import RewardSpecError
from ntp_rl.rewards.registry import RewardSpec
from ntp_rl.rewards.warmth import review_warmth, sentiment_sum, warmth_parts

from ntp_rl.config import DataSettings
from ntp_rl.data import load_rows
from ntp_rl.tasks import reviews

PROMPT = "Write a two-sentence review of the Aurora desk lamp for a friend."
PRODUCT, KIND = "Aurora desk lamp", "lamp"


def score(text: str, prompt: str | None = PROMPT) -> float:
    return warmth_parts(text, PRODUCT, KIND, prompt)["score"]


def test_splits_hold_different_products_and_rows_are_reproducible():
    train, test = reviews.generate("train", seed=3), reviews.generate("test", seed=3)
    assert {r["product"] for r in train}.isdisjoint({r["product"] for r in test})
    assert len(train) > len(test) > 0
    assert reviews.generate("test", seed=3) == test
    assert reviews.generate("test", seed=4) != test  # another order and other targets
    assert {r["key"] for r in reviews.generate("test", seed=4)} == {r["key"] for r in test}
    for row in train + test:
        assert row["product"] in row["prompt"] and row["product"] in row["completion"]
        assert set(row) == {"prompt", "completion", "product", "kind", "key"}
    # Every kind is trained on; held-out products are new brands of kinds seen in training.
    assert {r["kind"] for r in test} <= {r["kind"] for r in train} == set(reviews.KINDS)


def test_heldout_brands_grow_the_test_split_and_leave_training_as_it_was():
    import hashlib
    import json

    train, test = reviews.generate("train", seed=42), reviews.generate("test", seed=42)
    assert len(train) == 64 * 12 and len(test) == 32 * 12  # a paired comparison on >= 200 prompts
    heldout = {f"{brand} {reviews.KINDS[kind][0]}" for kind, brand in reviews.HELDOUT_BRANDS.items()}
    assert heldout <= {r["product"] for r in test} and heldout.isdisjoint({r["product"] for r in train})
    assert set(reviews.HELDOUT_BRANDS) == set(reviews.KINDS)
    # The training rows every logged run trained on (docs/LOG.md): the held-out brands did not move them.
    digest = hashlib.sha256(json.dumps(train).encode()).hexdigest()[:16]
    assert digest == "6b7a43455d3ebd22"


def test_data_source_loads_with_a_size_cap():
    data = DataSettings(source="synthetic:reviews", max_train_examples=40)
    rows = load_rows(data, "train", seed=42)
    assert len(rows) == 40 and rows["prompt"][0] == reviews.generate("train", 42)[0]["prompt"]
    assert len(load_rows(data, "test", seed=42)) == len(reviews.generate("test", 42))


def test_sft_targets_start_mid_scale_not_at_the_top():
    rows = reviews.generate("train", seed=42)
    scores = [warmth_parts(r["completion"], r["product"], r["kind"], r["prompt"])["score"] for r in rows]
    assert 0.4 <= statistics.mean(scores) <= 0.6
    assert max(scores) < 0.85 and min(scores) > 0.15  # warm replies have room above every target
    assert statistics.pstdev(scores) > 0.1  # and the targets differ: pairs of samples have a preference


POSITIVE = [
    "I absolutely love the Aurora desk lamp. The light is warm and bright, and I'd happily recommend it to you.",
    "The Aurora desk lamp is wonderful. The switch is smooth and the base is sturdy, so you'll enjoy it.",
    "I really like the Aurora desk lamp. The light is great for reading late at night.",
    "This lamp has been a fantastic buy. It looks beautiful on my desk and I'm so pleased with it!",
]
DEGENERATE = {
    "empty": "",
    "whitespace": "   \n ",
    "one word repeated": "great " * 40,
    "on-topic word repeated": "lamp great " * 30,
    "sentence repeated": "I love the Aurora desk lamp. " * 8,
    "prompt echo": PROMPT,
    "prompt echo with praise": PROMPT + " I love it.",
    "off-topic praise": "I love sunny days at the beach. They are wonderful and relaxing, truly perfect.",
    "list of praise": "Aurora lamp: wonderful, amazing, excellent, perfect, lovely, fantastic, superb!",
    "too short": "Great lamp.",
    "very long": "I really love the Aurora desk lamp. "
    + " ".join(f"On day {i} I read a good book about topic {i} at my desk under it." for i in range(25)),
}


@pytest.mark.parametrize("text", POSITIVE)
def test_warm_on_topic_replies_score_high(text):
    assert score(text) >= 0.8


@pytest.mark.parametrize("kind", DEGENERATE)
def test_degenerate_replies_score_low_however_warm_their_words(kind):
    assert score(DEGENERATE[kind]) <= 0.05, warmth_parts(DEGENERATE[kind], PRODUCT, KIND, PROMPT)


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        (
            "The Aurora desk lamp is good. The light is nice.",
            "The Aurora desk lamp is bad. The light is poor.",
        ),
        ("The Aurora desk lamp is great.", "The Aurora desk lamp is not great."),
        ("The Aurora desk lamp never broke.", "The Aurora desk lamp broke."),
        ("The Aurora desk lamp is really good.", "The Aurora desk lamp is good."),
        ("I bought the Aurora desk lamp. It is good.", "I bought the Aurora desk lamp. It is okay."),
        ("I like the Aurora desk lamp a lot.", "The Aurora desk lamp looks like a lamp."),
        (
            "I love the Aurora desk lamp, the light is lovely.",
            "I love the Aurora desk lamp, the light is lovely and",
        ),
    ],
)
def test_the_gold_prefers_the_warmer_finished_reply(better, worse):
    assert score(better) > score(worse)


def test_a_word_counts_once():
    assert sentiment_sum("great, great and great") == sentiment_sum("great") == 1.5


def test_review_warmth_reads_the_columns_and_conversational_prompts():
    reward = resolve_reward(
        RewardSpec(name="review_warmth"), available_columns=["prompt", "product", "kind", "completion"]
    )
    completions = [
        [{"role": "assistant", "content": POSITIVE[0]}],
        [{"role": "assistant", "content": PROMPT}],
    ]
    prompts = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": PROMPT}]] * 2
    values = reward(completions=completions, prompts=prompts, product=[PRODUCT] * 2, kind=[KIND] * 2)
    assert values[0] == pytest.approx(score(POSITIVE[0])) and values[1] == 0.0  # the echo is caught
    # Without prompts the echo guard has nothing to compare with; the other guards still apply.
    assert review_warmth([PROMPT], product=[PRODUCT], kind=[KIND])[0] > 0
    with pytest.raises(RewardSpecError, match="needs the data column 'product'"):
        resolve_reward(RewardSpec(name="review_warmth"), available_columns=["prompt", "answer"])
