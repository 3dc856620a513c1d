"""Built-in synthetic task `synthetic:reviews`: short product reviews for a friend, an RLHF task.

`generate(split, seed)` returns one row per (product, phrasing) of the split, in an order shuffled by
`seed`, with the columns
- `prompt`: a request for a short review ("Write a two-sentence review of the Aurora desk lamp for a
  friend.");
- `completion`: a two-sentence review of mixed sentiment (the SFT target): a quarter positive, a
  quarter negative, a quarter neutral and a quarter mixed, so that a policy fine-tuned on them writes
  reviews across the whole scale, not already warm ones;
- `product` (the product's name, "Aurora desk lamp") and `kind` (what it is, "lamp"): the columns
  the gold reward `review_warmth` reads to tell an on-topic reply from an off-topic one;
- `key`: the product and phrasing.

The gold preference of this task is the warmth of the reply (`rewards/warmth.py`), which the SFT
targets do not maximise: RLHF has room to raise it, and a reward model has something to learn.
Whether a row is in "train" or "test" is a hash of its product, so a test prompt names a product no
training prompt names (its kind is seen in training, under other brands). The catalogue is fixed
(16 kinds x 5 brands x 12 phrasings, plus one brand per kind only ever held out), so a split's size
is set with `data.max_train_examples` / `data.max_test_examples`: "train" has 64 products (768
prompts), "test" 32 (384 prompts). Rows are a pure function of the arguments.
"""

from __future__ import annotations

import hashlib
import random

SPLITS = ("train", "test")
# Share of products held out for "test": enough held-out prompts for a paired comparison of
# checkpoints, most products for training.
TEST_FRACTION = 0.25

# kind -> (brands, features): each product is "<brand> <name of the kind>"; a feature is a part a
# review comments on.
KINDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "lamp": ("desk lamp", ("Aurora", "Halden", "Lumo", "Beacon", "Glimmer"), ("light", "switch", "base")),
    "kettle": ("kettle", ("Brisa", "Copperline", "Fennick", "Tallis", "Simmer"), ("spout", "handle", "lid")),
    "backpack": (
        "backpack",
        ("Trailway", "Norrsken", "Kestrel", "Ambling", "Rucksmith"),
        ("straps", "zipper", "pockets"),
    ),
    "headphones": (
        "headphones",
        ("Sonora", "Quillon", "Vantage", "Echoline", "Hushwave"),
        ("sound", "ear cushions", "battery"),
    ),
    "blender": (
        "blender",
        ("Vortexa", "Mixwell", "Orchard", "Pulsar", "Smoothie"),
        ("motor", "jar", "blades"),
    ),
    "umbrella": (
        "umbrella",
        ("Stormbreak", "Parasol", "Mistral", "Cloudguard", "Drizzle"),
        ("canopy", "handle", "frame"),
    ),
    "notebook": (
        "notebook",
        ("Quire", "Inkwell", "Marginalia", "Folio", "Scribbler"),
        ("paper", "binding", "cover"),
    ),
    "bottle": (
        "water bottle",
        ("Hydrava", "Glacier", "Rillo", "Springfield", "Canteen"),
        ("lid", "seal", "grip"),
    ),
    "chair": (
        "office chair",
        ("Ergosoft", "Lindholm", "Posture", "Arbor", "Swivelry"),
        ("seat", "backrest", "armrests"),
    ),
    "toaster": (
        "toaster",
        ("Crumbly", "Goldcrest", "Ember", "Breakfaster", "Toastwell"),
        ("slots", "timer", "crumb tray"),
    ),
    "keyboard": (
        "keyboard",
        ("Keystone", "Tactile", "Clatter", "Typhon", "Qwerty"),
        ("keys", "cable", "layout"),
    ),
    "tent": (
        "tent",
        ("Basecamp", "Wanderer", "Alpenglow", "Pinecrest", "Fieldhouse"),
        ("poles", "zips", "floor"),
    ),
    "mug": (
        "travel mug",
        ("Thermal", "Commuter", "Steamwise", "Kiln", "Sipwell"),
        ("lid", "handle", "insulation"),
    ),
    "shoes": (
        "running shoes",
        ("Stride", "Fleetfoot", "Tempo", "Cadence", "Pacer"),
        ("soles", "laces", "fit"),
    ),
    "speaker": (
        "speaker",
        ("Boomhaus", "Resona", "Chordal", "Decibel", "Woofer"),
        ("bass", "volume", "battery"),
    ),
    "pillow": (
        "pillow",
        ("Slumber", "Featherly", "Dreamwell", "Nimbus", "Downy"),
        ("filling", "cover", "shape"),
    ),
}

# Fields: {product} the product's name, {noun} what it is ("desk lamp").
TEMPLATES = (
    "Write a two-sentence review of the {product} for a friend.",
    "In two sentences, tell a friend what you think of the {product}.",
    "A friend asks whether the {product} is any good. Reply in two sentences.",
    "Write a short review of the {product}.",
    "Describe your experience with the {product} in two sentences.",
    "What do you think of the {product}? Answer in two sentences.",
    "Give a quick two-sentence review of the {product} you bought last month.",
    "Your friend is thinking of buying the {product}. Write them a two-sentence note about it.",
    "Review the {product} in two sentences for a friend who needs a new {noun}.",
    "Write two sentences about the {product} for an online store.",
    "Tell me about the {product} in two sentences.",
    "Share a two-sentence opinion of the {product}.",
)

# Opening sentences about the product as a whole, by sentiment.
OPENERS = {
    "positive": (
        "I really like the {product}.",
        "The {product} has been great so far.",
        "I'm happy with the {product}.",
        "The {product} is a good {noun}.",
    ),
    "neutral": (
        "The {product} does what a {noun} should do.",
        "I have used the {product} for a few weeks now.",
        "The {product} is an ordinary {noun}.",
        "I bought the {product} last month.",
    ),
    "negative": (
        "I'm disappointed with the {product}.",
        "The {product} has been a letdown.",
        "I regret buying the {product}.",
        "The {product} is a poor {noun}.",
    ),
}
# Sentences about one feature, by sentiment; {feature} is filled per kind.
FEATURE_WORDS = {
    "positive": ("sturdy", "comfortable", "reliable", "nice", "solid"),
    "neutral": ("average", "standard", "okay", "plain", "about what I expected"),
    "negative": ("flimsy", "awkward", "cheap", "noisy", "unreliable"),
}
SENTIMENTS = ("positive", "negative", "neutral", "mixed")


# One more brand per kind, always in "test": a paired comparison of checkpoints needs a few hundred
# held-out prompts, and the hashed test share alone gives 192; adding brands to KINDS instead would
# move training products too.
HELDOUT_BRANDS: dict[str, str] = {
    "lamp": "Corvell",
    "kettle": "Marlowe",
    "backpack": "Tundra",
    "headphones": "Auralis",
    "blender": "Whirlton",
    "umbrella": "Canopeo",
    "notebook": "Ledgerly",
    "bottle": "Aquilo",
    "chair": "Sitka",
    "toaster": "Brannock",
    "keyboard": "Keyforge",
    "tent": "Highpeak",
    "mug": "Portola",
    "shoes": "Sprintra",
    "speaker": "Sonique",
    "pillow": "Lullen",
}


def _product_split(product: str) -> str:
    # hashlib, not hash(): Python salts str hashes per process, and the split must never move.
    bucket = int.from_bytes(hashlib.sha256(f"reviews/{product}".encode()).digest()[:8], "big") % 1000
    return "test" if bucket < TEST_FRACTION * 1000 else "train"


def products(split: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(product, kind, noun, features) of every product of `split`, in catalogue order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for kind, (noun, brands, features) in KINDS.items():
        for brand in brands:
            product = f"{brand} {noun}"
            if _product_split(product) == split:
                out.append((product, kind, noun, features))
    if split == "test":
        out += [
            (f"{HELDOUT_BRANDS[kind]} {noun}", kind, noun, features)
            for kind, (noun, _, features) in KINDS.items()
        ]
    return out


def _verb(feature: str) -> str:
    return "are" if feature.endswith("s") else "is"  # "the straps are", "the battery is"


def _feature_sentence(feature: str, sentiment: str, rng: random.Random) -> str:
    return f"The {feature} {_verb(feature)} {rng.choice(FEATURE_WORDS[sentiment])}."


def review(product: str, noun: str, features: tuple[str, ...], sentiment: str, rng: random.Random) -> str:
    """A two-sentence review of `sentiment` ("positive", "negative", "neutral" or "mixed")."""
    if sentiment == "mixed":
        first, second = rng.sample(features, 2)
        good, bad = (FEATURE_WORDS[s] for s in ("positive", "negative"))
        opener = rng.choice(OPENERS["neutral"]).format(product=product, noun=noun)
        if rng.random() < 0.5:
            good, bad = bad, good
        body = (
            f"The {first} {_verb(first)} {rng.choice(good)}, but the {second} {_verb(second)} "
            f"{rng.choice(bad)}."
        )
        return f"{opener} {body}"
    opener = rng.choice(OPENERS[sentiment]).format(product=product, noun=noun)
    # The feature sentence agrees with the opener or is neutral: sentiment of both sentences.
    body_sentiment = sentiment if rng.random() < 0.6 else "neutral"
    return f"{opener} {_feature_sentence(rng.choice(features), body_sentiment, rng)}"


def generate(split: str, seed: int = 0) -> list[dict[str, str]]:
    """Every (product, phrasing) of `split` with an SFT target; see the module docstring."""
    rng = random.Random(f"ntp-rl/reviews/{split}/{seed}")
    rows = []
    for product, kind, noun, _features in products(split):
        for index, template in enumerate(TEMPLATES):
            rows.append(
                {
                    "prompt": template.format(product=product, noun=noun),
                    "product": product,
                    "kind": kind,
                    "key": f"{product}/{index}",
                }
            )
    rng.shuffle(rows)
    # Sentiments in turn over the shuffled rows: each a quarter of any prefix a size cap keeps.
    for index, row in enumerate(rows):
        product, kind = row["product"], row["kind"]
        noun, _, features = KINDS[kind]
        row["completion"] = review(product, noun, features, SENTIMENTS[index % len(SENTIMENTS)], rng)
    return rows
