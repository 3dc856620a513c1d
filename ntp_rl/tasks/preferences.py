"""Built-in synthetic task `synthetic:preferences`: preference pairs with a known gold preference.

`generate(split, num_examples, seed)` takes the arithmetic problems of `ntp_rl.tasks.arithmetic.generate`
(the same problems, the same hash-based train/test split: a problem is never in both) and pairs, for
each, the correct and concise worked solution (`chosen`, ending in the canonical `Answer: N` line)
with one of three worse responses (`rejected`), in turn:
- `wrong_answer`: the same layout with a wrong final answer (off by 1..10). Half of them carry the
  error through the worked step (a miscalculation), half copy the step's correct result wrongly into
  the answer line (a slip);
- `rambling`: the correct solution wrapped in filler sentences (2-3 before the step, 1-2 after);
- `no_answer_line`: the worked step without the final `Answer: N` line.

Rows: `prompt`, `chosen`, `rejected`, `answer` (the exact integer, so `math_accuracy` is the gold
verifier of a policy trained against a reward model learned from these pairs), `rejected_kind`, and
the problem's `key`. Rows are a pure function of the arguments. With `decomposed_solutions` the
worked steps are the decomposed ones of `synthetic:arithmetic` ("82 - 65 = 82 - 60 - 5 = 22 - 5 = 17.")
and a miscalculation is wrong in the last, one-digit step ("22 - 5 = 13."): the slip a policy
fine-tuned on those solutions makes, so that a reward model learns to catch it.
"""

from __future__ import annotations

import random

from ntp_rl.tasks import arithmetic

REJECTED_KINDS = ("wrong_answer", "rambling", "no_answer_line")

FILLER = (
    "Let me think about this carefully before answering.",
    "This is a question about everyday arithmetic.",
    "I want to be sure that I read the problem correctly.",
    "First, let me restate what the question is asking.",
    "Problems like this one come up all the time in school.",
    "It is always a good habit to take these things slowly.",
    "Let me go over the numbers once more to be safe.",
    "There are a few ways to approach a problem like this.",
    "I will write out the calculation step by step.",
    "Checking the work at the end is important too.",
)


def _wrong(answer: int, rng: random.Random) -> int:
    while True:
        wrong = answer + rng.choice((-1, 1)) * rng.randint(1, 10)
        if wrong >= 0:
            return wrong


def _rejected(row: dict[str, str], kind: str, rng: random.Random) -> str:
    *steps, answer_line = row["solution"].split("\n")
    answer = int(row["answer"])
    if kind == "wrong_answer":
        wrong = _wrong(answer, rng)
        if rng.random() < 0.5:  # a miscalculation carried through the last step
            last = steps[-1]
            cut = last.rindex(f"= {answer}.")
            steps = [*steps[:-1], f"{last[:cut]}= {wrong}."]
        return "\n".join([*steps, arithmetic.final_answer_line(wrong)])
    if kind == "rambling":
        before = rng.sample(FILLER, rng.randint(2, 3))
        after = rng.sample([f for f in FILLER if f not in before], rng.randint(1, 2))
        return "\n".join([" ".join(before), *steps, " ".join(after), answer_line])
    if kind == "no_answer_line":
        return "\n".join(steps)
    raise ValueError(f"unknown rejected kind {kind!r}")


def generate(
    split: str,
    num_examples: int,
    seed: int = 0,
    two_step_fraction: float = 0.0,
    decomposed_solutions: bool = False,
) -> list[dict[str, str]]:
    """`num_examples` preference pairs over distinct problems of `split`; see the module docstring."""
    problems = arithmetic.generate(
        split,
        num_examples,
        seed=seed,
        two_step_fraction=two_step_fraction,
        decomposed_solutions=decomposed_solutions,
    )
    rng = random.Random(f"ntp-rl/preferences/{split}/{seed}")
    rows = []
    for index, problem in enumerate(problems):
        kind = REJECTED_KINDS[index % len(REJECTED_KINDS)]
        rows.append(
            {
                "prompt": problem["prompt"],
                "chosen": problem["solution"],
                "rejected": _rejected(problem, kind, rng),
                "answer": problem["answer"],
                "rejected_kind": kind,
                "key": problem["key"],
            }
        )
    return rows
