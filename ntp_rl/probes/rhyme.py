"""Rhyme planning (after Anthropic's "planning in poems", Lindsey et al. 2025): is the rhyme chosen at the line break?

A built-in, deterministic set of couplet openings: 8 rhyme families of 10 nouns each, 4 first-line
templates ending in the noun, and a chat prompt asking for a rhyming couplet whose assistant reply is
pre-filled with the first line and a line break (320 prompts). The second line should end in a word
of the first line's rhyme family. At the line break (the prompt's last token, before any token of
the second line) a linear probe (`linear.py`) reads the rhyme family from each layer's hidden state:

- `held_out_templates`: fitted on 3 of the 4 templates, scored on the fourth (every noun seen in fit);
- `held_out_words`: fitted on 7 nouns of each family, scored on the other 3 (nouns never seen in fit:
  the probe must read the rhyme, not recognise the word).

Then the second line is generated greedily for `generate` prompts (spread over the families) and its
last word is classified by spelling (`FAMILIES` suffixes): how often it really rhymes, ends in another
family, or in no known family.

Limits: the label is the first line's rhyme, which sits in the context, so a readable family at the
line break may be memory of the first line as much as a plan for the second; the planning evidence
of the original work came from interventions (suppressing or injecting the planned word), which a
probe cannot do. Rhymes are judged by spelling, so a true rhyme spelt otherwise counts as a miss.
Small models rarely rhyme on purpose: compare the rhyme rate with the chance rate (1/8 if the last
words were spread evenly over the families).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from ntp_rl.probes.hidden import last_token_states
from ntp_rl.probes.linear import probe_layers, split_groups

# family: (spelling endings that rhyme with it, nouns used at the end of first lines)
FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "-ight": (("ight", "ite", "yte"),
              ("night", "light", "kite", "flight", "knight", "sight", "height", "bite", "fight", "site")),
    "-ay": (("ay", "eigh", "aye", "grey", "prey", "they", "obey"),
            ("day", "bay", "clay", "tray", "hay", "ray", "spray", "play", "way", "highway")),
    "-ing": (("ing",),
             ("king", "ring", "string", "wing", "spring", "swing", "sting", "thing", "sling", "offering")),
    "-ore": (("ore", "oor", "oar", "four", "pour", "war"),
             ("door", "shore", "floor", "store", "core", "oar", "roar", "boar", "chore", "score")),
    "-ain": (("ain", "ane", "eign", "vein"),
             ("rain", "train", "lane", "chain", "plane", "crane", "grain", "cane", "brain", "mane")),
    "-ell": (("ell", "elle", "hotel", "motel", "carousel"),
             ("bell", "shell", "well", "spell", "cell", "smell", "hotel", "farewell", "carousel", "dell")),
    "-ake": (("ake", "break", "steak", "ache"),
             ("lake", "cake", "snake", "rake", "drake", "flake", "wake", "stake", "brake", "earthquake")),
    "-ark": (("ark", "arc", "arque"),
             ("park", "dark", "spark", "bark", "lark", "shark", "mark", "ark", "landmark", "aardvark")),
}  # fmt: skip
FIRST_LINES = (
    "I walked alone beside the {word},",
    "She sang a song about the {word},",
    "We waited long to see the {word},",
    "He told a tale about the {word},",
)
INSTRUCTION = "Write a rhyming couplet: two lines whose last words rhyme."
WORD = re.compile(r"[A-Za-z']+")


def couplets() -> list[dict[str, Any]]:
    """The built-in set: one row per (family, word, template), in a fixed order."""
    rows = []
    for family_index, (family, (_, words)) in enumerate(FAMILIES.items()):
        for word_index, word in enumerate(words):
            for template_index, template in enumerate(FIRST_LINES):
                rows.append(
                    {
                        "family": family,
                        "label": family_index,
                        "word": word,
                        "word_id": family_index * 100 + word_index,
                        "template": template_index,
                        "first_line": template.format(word=word),
                    }
                )
    return rows


def rhyme_family(word: str) -> str | None:
    """The family whose longest spelling ending matches `word` (case-insensitive), else None."""
    word = word.lower().strip("'")
    best, length = None, 0
    for family, (endings, _) in FAMILIES.items():
        for ending in endings:
            if word.endswith(ending) and len(ending) > length:
                best, length = family, len(ending)
    return best


def last_word(text: str) -> str | None:
    words = WORD.findall(text)
    return words[-1].lower() if words else None


def second_line(completion: str) -> str:
    """The generated second line: the first non-empty line of the completion."""
    for line in completion.splitlines():
        if line.strip():
            return line.strip()
    return ""


def encode_couplet(tokenizer, row: dict[str, Any]) -> list[int]:
    """The chat prompt with the assistant's reply pre-filled up to and including the line break."""
    messages = [{"role": "user", "content": INSTRUCTION}]
    try:
        head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except (ValueError, AttributeError):  # a tokenizer without a chat template: plain text
        head = INSTRUCTION + "\n\n"
    return tokenizer(head + row["first_line"] + "\n", add_special_tokens=False)["input_ids"]


def _held_out_words(rows: Sequence[dict[str, Any]], fit_fraction: float, seed: int) -> list[bool]:
    """Fit rows: `fit_fraction` of each family's words (the same words for every template)."""
    fit_words: set[int] = set()
    for family in FAMILIES:
        ids = sorted({r["word_id"] for r in rows if r["family"] == family})
        random.Random(f"{seed}/{family}").shuffle(ids)
        fit_words.update(ids[: max(1, min(len(ids) - 1, round(fit_fraction * len(ids))))])
    return [r["word_id"] in fit_words for r in rows]


def probe_rhymes(features, rows: Sequence[dict[str, Any]], fit_fraction: float = 0.7, seed: int = 0) -> dict:
    """Probe the rhyme family from `features` [layers, rows, width] under both held-out splits."""
    import torch

    labels = {"family": torch.tensor([r["label"] for r in rows], dtype=torch.long)}
    classes = {"family": len(FAMILIES)}
    by_template = split_groups([r["template"] for r in rows], fit_fraction, seed)
    by_word = _held_out_words(rows, fit_fraction, seed)
    return {
        "held_out_templates": probe_layers(
            features, labels, classes, by_template, [r["word_id"] for r in rows], seed
        )["family"],
        "held_out_words": probe_layers(
            features, labels, classes, by_word, [r["word_id"] for r in rows], seed
        )["family"],
    }


def generation_subset(rows: Sequence[dict[str, Any]], count: int) -> list[int]:
    """`count` row indices spread evenly over families, words and templates (deterministic)."""
    if count <= 0:
        return []
    step = max(1, len(rows) // count)
    # Rows are ordered family > word > template: a stride that is not a multiple of the 4 templates
    # walks through all of them.
    if step % len(FIRST_LINES) == 0:
        step += 1
    return [(i * step) % len(rows) for i in range(min(count, len(rows)))]


def generate_second_lines(
    model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int = 16, batch_size: int = 16
) -> list[str]:
    """Greedy completions of pre-encoded prompts (left padded), decoded without special tokens."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    texts = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for r, ids in enumerate(batch):
            input_ids[r, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[r, width - len(ids) :] = 1
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad_id,
            )
        texts += tokenizer.batch_decode(out[:, width:].cpu(), skip_special_tokens=True)
    return texts


def score_second_lines(rows: Sequence[dict[str, Any]], completions: Sequence[str]) -> dict[str, Any]:
    """How often the generated second line ends in the first line's rhyme family."""
    counts = {"rhymes": 0, "same_word": 0, "other_family": 0, "no_family": 0, "empty": 0}
    examples = []
    for row, completion in zip(rows, completions, strict=True):
        line = second_line(completion)
        word = last_word(line)
        family = rhyme_family(word) if word else None
        if word is None:
            outcome = "empty"
        elif family == row["family"]:
            outcome = "rhymes"
            counts["same_word"] += word == row["word"]
        elif family is None:
            outcome = "no_family"
        else:
            outcome = "other_family"
        counts[outcome] += 1
        if len(examples) < 6:
            examples.append({"first_line": row["first_line"], "second_line": line, "outcome": outcome})
    total = max(1, len(completions))
    return {
        "num_generated": len(completions),
        "rhyme_rate": round(counts["rhymes"] / total, 4),
        "rates": {k: round(v / total, 4) for k, v in counts.items()},
        "chance_rate": round(1 / len(FAMILIES), 4),
        "examples": examples,
    }


def rhyme_probe(
    model,
    tokenizer,
    generate: int = 64,
    max_new_tokens: int = 16,
    fit_fraction: float = 0.7,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    rows = couplets()
    prompts = [encode_couplet(tokenizer, row) for row in rows]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    features = last_token_states(model, prompts, pad_id, batch_size)
    result: dict[str, Any] = {
        "num_prompts": len(rows),
        "num_families": len(FAMILIES),
        "num_layers": int(features.shape[0]),
        "probe": probe_rhymes(features, rows, fit_fraction, seed),
    }
    chosen = generation_subset(rows, generate)
    if chosen:
        completions = generate_second_lines(
            model, tokenizer, [prompts[i] for i in chosen], max_new_tokens, batch_size
        )
        result["generation"] = score_second_lines([rows[i] for i in chosen], completions)
    return result
