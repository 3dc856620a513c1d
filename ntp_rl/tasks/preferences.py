"""Built-in synthetic task `synthetic:preferences`: preference pairs with a known gold preference.

`generate(split, num_examples, seed)` takes the arithmetic problems of `ntp_rl.tasks.arithmetic.generate`
(the same problems, the same hash-based train/test split: a problem is never in both) and pairs, for
each, the correct and concise worked solution (`chosen`, ending in the canonical `Answer: N` line)
with one of three worse responses (`rejected`), in turn:
- `wrong_answer`: the same layout with a wrong final answer, in three equal shares: a miscalculation
  (the worked step itself wrong and consistent with the wrong answer), a misread problem (the right
  numbers, the wrong operation: "80 - 44" worked as "80 + 44 = 124."), and a slip (the step right,
  its result copied wrongly into the answer line, off by 1..10);
- `rambling`: the correct solution wrapped in filler sentences (2-3 before the step, 1-2 after);
- `no_answer_line`: the worked step without the final `Answer: N` line.

Rows: `prompt`, `chosen`, `rejected`, `answer` (the exact integer, so `math_accuracy` is the gold
verifier of a policy trained against a reward model learned from these pairs), `rejected_kind`, and
the problem's `key`. Rows are a pure function of the arguments.

A miscalculation in a one-line step ("47 + 38 = 85.") is a wrong result (off by 1..10). With
`decomposed_solutions` the worked steps are the decomposed ones of `synthetic:arithmetic`, and the error
sits in one link of the chain and is carried through the rest, as a policy fine-tuned on those
solutions makes it: a wrong tens product ("68 * 9 = 60 * 9 + 8 * 9 = 480 + 72 = 552."), a wrong ones
product, a wrong partial sum or difference ("82 - 65 = 82 - 60 - 5 = 32 - 5 = 27."), or a wrong last
step ("22 - 5 = 13."). A reward model trained on these has to check the arithmetic, not the layout.
"""

from __future__ import annotations

import random
import re

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


# The decomposed worked steps of `arithmetic.worked_step`: "a * b = T * b + O * b = X + Y = Z." and
# "a + b = a + T + O = M + O = R." (or with "-").
_DECOMPOSED_MUL = re.compile(r"(\d+) \* (\d+) = (\d+) \* \2 \+ (\d+) \* \2 = (\d+) \+ (\d+) = (\d+)\.")
_DECOMPOSED_ADD_SUB = re.compile(r"(\d+) ([+-]) (\d+) = \1 \2 (\d+) \2 (\d+) = (-?\d+) \2 \5 = (-?\d+)\.")


def _off(value: int, rng: random.Random, scale: int = 1) -> int:
    """`value` changed by 1..10 (times `scale`), kept non-negative."""
    while True:
        changed = value + rng.choice((-1, 1)) * rng.randint(1, 10) * scale
        if changed >= 0 and changed != value:
            return changed


def _miscalculated(step: str, answer: int, rng: random.Random) -> tuple[str, int]:
    """The last worked step with one wrong link, carried through: (step, its wrong result)."""
    mul = _DECOMPOSED_MUL.fullmatch(step)
    if mul:
        a, b, tens, ones, x, y, _ = (int(g) for g in mul.groups())
        link = rng.choice(("tens", "ones", "sum"))
        if link == "tens":  # 60 * 9 = 480: a tens product off by a multiple of the digit or of ten
            x = _off(x, rng, scale=10 if rng.random() < 0.5 else b)
        elif link == "ones":
            y = _off(y, rng)
        z = x + y if link != "sum" else _off(answer, rng)  # x + y != answer: one term changed
        return f"{a} * {b} = {tens} * {b} + {ones} * {b} = {x} + {y} = {z}.", z
    add_sub = _DECOMPOSED_ADD_SUB.fullmatch(step)
    if add_sub:
        a, symbol, b, tens, ones, middle, _ = add_sub.groups()
        sign = 1 if symbol == "+" else -1
        middle, result = int(middle), _off(answer, rng)  # default: a wrong last (one-digit) step
        if rng.random() < 0.5:  # a wrong partial result (tens), carried into the last step
            wrong_middle = _off(middle, rng, scale=10 if rng.random() < 0.5 else 1)
            if wrong_middle + sign * int(ones) >= 0:
                middle, result = wrong_middle, wrong_middle + sign * int(ones)
        return (
            f"{a} {symbol} {b} = {a} {symbol} {tens} {symbol} {ones} = {middle} {symbol} {ones} = {result}.",
            result,
        )
    wrong = _off(answer, rng)
    cut = step.rindex(f"= {answer}.")
    return f"{step[:cut]}= {wrong}.", wrong


_FIRST_STEP = re.compile(r"(\d+) ([+*-]) (\d+) = ")
# The operation a misreading puts in place of the problem's: x - y read as x + y, and so on.
_MISREAD = {"-": "+", "+": "-", "*": "+"}


def _misread(steps: list[str], answer: int) -> tuple[list[str], int] | None:
    """A one-step problem worked with the wrong operation on its numbers: (steps, their result).

    None where it does not apply: a two-step problem, or a misreading that lands on the right answer
    or below zero.
    """
    match = _FIRST_STEP.match(steps[0])
    if len(steps) != 1 or match is None:
        return None
    left, symbol, right = int(match[1]), match[2], int(match[3])
    other = _MISREAD[symbol]
    result = {"+": left + right, "-": left - right}[other]
    if result == answer or result < 0:
        return None
    decomposed = steps[0].count(" = ") > 1  # the problem was worked in tens and ones
    return [arithmetic.worked_step(left, other, right, decomposed)], result


def _rejected(row: dict[str, str], kind: str, rng: random.Random) -> str:
    *steps, answer_line = row["solution"].split("\n")
    answer = int(row["answer"])
    if kind == "wrong_answer":
        variant = rng.choice(("miscalculation", "misread", "slip"))
        misread = _misread(steps, answer) if variant == "misread" else None
        if misread is not None:
            steps, wrong = misread
        elif variant in ("miscalculation", "misread"):  # the error carried through to the answer
            last, wrong = _miscalculated(steps[-1], answer, rng)
            steps = [*steps[:-1], last]
        else:  # a slip: the step is right, the answer line is not
            wrong = _off(answer, rng)
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
