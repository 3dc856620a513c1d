"""Tests of the built-in arithmetic task (`ntp_rl.tasks.arithmetic`): determinism, split hygiene, exact
answers, the canonical answer line and phrasing variety. Pure Python, no model; well under a second."""

import collections
import operator
import re

import pytest

from ntp_rl.tasks.arithmetic import (
    ANSWER_INSTRUCTION,
    ANSWER_LINE_PREFIX,
    HELDOUT_ITEMS,
    HELDOUT_NAMES,
    HELDOUT_TEMPLATES,
    ITEMS,
    NAMES,
    TEMPLATES,
    final_answer_line,
    generate,
)

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
STEP = re.compile(r"^(\d+) ([+*-]) (\d+) = (?:[\d +*-]+ = )*(\d+)\.$")
EXPRESSION = re.compile(r"^\d+(?: [+*-] \d+)*$")


def evaluate_expression(text: str) -> int:
    """Value of 'a op b op c ...' with * before + and -, for checking decomposed solution steps."""
    assert EXPRESSION.match(text), text
    terms, signs = [], [1]
    for part in re.split(r" ([+-]) ", text):
        if part in "+-":
            signs.append(1 if part == "+" else -1)
        else:
            value = 1
            for factor in part.split(" * "):
                value *= int(factor)
            terms.append(value)
    return sum(sign * term for sign, term in zip(signs, terms, strict=True))


def answer_from_key(key: str) -> int:
    """Recompute the answer from the canonical key alone, independently of the generator's own arithmetic."""
    parts = key.split(":")
    numbers = [int(x) for x in parts[-1].split(",")]
    if parts[0] == "add":
        return numbers[0] + numbers[1]
    if parts[0] == "sub":
        return numbers[0] - numbers[1]
    if parts[0] == "mul":
        return numbers[0] * numbers[1]
    a, b, c = numbers
    return {"add_sub": a + b - c, "mul_add": a * b + c, "mul_sub": a * b - c}[parts[1]]


def keys(rows: list[dict[str, str]]) -> set[str]:
    return {row["key"] for row in rows}


def test_same_arguments_give_identical_rows_and_another_seed_differs():
    first = generate("train", 300, seed=3, two_step_fraction=0.3)
    assert first == generate("train", 300, seed=3, two_step_fraction=0.3)
    assert keys(first) != keys(generate("train", 300, seed=4, two_step_fraction=0.3))


def test_train_and_test_never_share_a_problem_whatever_the_seed_size_or_mix():
    train, test = set(), set()
    for seed, size, fraction in [(0, 5000, 0.0), (1, 2000, 0.5), (2, 3000, 0.2)]:
        train |= keys(generate("train", size, seed=seed, two_step_fraction=fraction))
    for seed, size, fraction in [(0, 1500, 0.0), (5, 1000, 0.5), (9, 500, 1.0)]:
        test |= keys(generate("test", size, seed=seed, two_step_fraction=fraction))
    assert len(train) > 5000 and len(test) > 1500
    assert not train & test


def test_reordered_addends_are_one_problem_in_one_split():
    for split in ("train", "test"):
        for key in keys(generate(split, 1000, seed=0, two_step_fraction=0.3)):
            if key.startswith(("add:", "two_step:add_sub:")):
                a, b = (int(x) for x in key.split(":")[-1].split(",")[:2])
                assert a <= b, key


@pytest.mark.parametrize("split, size", [("train", 6000), ("test", 1500)])
def test_rows_within_a_split_are_distinct_problems(split, size):
    rows = generate(split, size, seed=1, two_step_fraction=0.1)
    assert len(rows) == size
    assert len(keys(rows)) == size


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("split", ["train", "test", "test_phrasings"])
def test_answers_solutions_and_prompts_agree(split, decomposed):
    for row in generate(split, 600, seed=2, two_step_fraction=0.4, decomposed_solutions=decomposed):
        answer = answer_from_key(row["key"])
        assert row["answer"] == str(answer) and answer >= 0, row
        *steps, last = row["solution"].split("\n")
        assert last == final_answer_line(answer) == f"{ANSWER_LINE_PREFIX} {answer}"
        assert len(steps) == (2 if row["operation"] == "two_step" else 1), row
        previous = None
        for step in steps:
            left, symbol, right, result = STEP.match(step).groups()
            assert OPERATORS[symbol](int(left), int(right)) == int(result), step
            # every intermediate expression of a worked step equals the step's result
            for expression in step.removesuffix(".").split(" = "):
                assert evaluate_expression(expression) == int(result), step
            if previous is not None:
                assert int(left) == previous, row["solution"]  # step two starts from step one's result
            previous = int(result)
        assert previous == answer
        assert row["prompt"].endswith(ANSWER_INSTRUCTION)
        operands = collections.Counter(row["key"].split(":")[-1].split(","))
        shown = collections.Counter(re.findall(r"\d+", row["prompt"].removesuffix(ANSWER_INSTRUCTION)))
        assert shown == operands, row  # the question shows exactly the problem's numbers


def test_operands_stay_in_range():
    ranges = {"add": [(10, 99), (10, 99)], "sub": [(10, 99), (10, 99)], "mul": [(10, 99), (2, 9)]}
    for row in generate("train", 3000, seed=0):
        a, b = (int(x) for x in row["key"].split(":")[-1].split(","))
        (low_a, high_a), (low_b, high_b) = ranges[row["operation"]]
        assert low_a <= a <= high_a and low_b <= b <= high_b, row["key"]
        if row["operation"] == "sub":
            assert a > b, row["key"]


def test_phrasing_is_varied():
    names = "|".join(NAMES)
    items = "|".join(ITEMS)
    skeletons = set()
    for row in generate("train", 500, seed=0, two_step_fraction=0.2):
        text = re.sub(rf"\b({names})\b", "<name>", row["prompt"])
        text = re.sub(rf"\b({items})\b", "<items>", text)
        skeletons.add(re.sub(r"\d+", "<n>", text))
    assert len(skeletons) >= 30
    assert len({row["prompt"].split(" ")[0] for row in generate("test", 200, seed=0)}) >= 10


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_two_step_fraction_sets_the_share_of_two_step_rows(fraction):
    rows = generate("train", 400, seed=0, two_step_fraction=fraction)
    counts = collections.Counter(row["operation"] for row in rows)
    assert counts["two_step"] == round(400 * fraction)
    for operation in ("add", "sub", "mul"):
        # single-step rows are spread evenly, to within one row
        assert abs(counts[operation] - (400 - counts["two_step"]) / 3) <= 1, counts


def test_two_step_rows_are_mixed_in_not_appended():
    operations = [row["operation"] for row in generate("train", 200, seed=0, two_step_fraction=0.5)]
    for half in (operations[:100], operations[100:]):
        assert 20 < half.count("two_step") < 80, half


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": "validation", "num_examples": 5}, "valid splits are train, test, test_phrasings"),
        ({"split": "train", "num_examples": -1}, "num_examples"),
        ({"split": "train", "num_examples": 5, "two_step_fraction": 1.5}, "two_step_fraction"),
        ({"split": "test", "num_examples": 10_000}, "single-step problems"),
        ({"split": "test_phrasings", "num_examples": 10_000}, "single-step problems"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)


def test_final_answer_line():
    assert final_answer_line(85) == "Answer: 85"
    assert final_answer_line(" 7 ") == "Answer: 7"
    assert "Answer: <number>" in ANSWER_INSTRUCTION


# --------------------------------------------------------------------------------------------
# "test_phrasings": the test problems in a wording never used by "train" or "test"


def _template_pattern(template: str) -> re.Pattern[str]:
    """A template as a regex over a question: numbers, names and nouns as wildcards."""
    pattern = re.escape(template)
    for field, wildcard in (("a", r"\d+"), ("b", r"\d+"), ("c", r"\d+"), ("name2", r"\w+"), ("name", r"\w+"),
                            ("items", r"\w+")):  # fmt: skip
        pattern = pattern.replace(re.escape(f"{{{field}}}"), wildcard)
    return re.compile(f"^{pattern}$")


TRAINING_PATTERNS = [_template_pattern(t) for group in TEMPLATES.values() for t in group]
HELDOUT_PATTERNS = [_template_pattern(t) for group in HELDOUT_TEMPLATES.values() for t in group]


def _question(row: dict[str, str]) -> str:
    assert row["prompt"].endswith(" " + ANSWER_INSTRUCTION), row
    return row["prompt"].removesuffix(" " + ANSWER_INSTRUCTION)


def _words(template: str) -> list[str]:
    """A template's words, numbers, names and nouns each one placeholder word, without punctuation."""
    text = re.sub(r"\{[abc]\}", " <n> ", template)
    text = re.sub(r"\{name2?\}", " <name> ", text).replace("{items}", " <items> ")
    return re.findall(r"<\w+>|[\w']+", text.lower())


def _runs(template: str, length: int) -> set[tuple[str, ...]]:
    words = _words(template)
    return {tuple(words[i : i + length]) for i in range(len(words) - length + 1)}


def test_heldout_wording_shares_no_template_name_or_noun_with_training():
    assert set(HELDOUT_TEMPLATES) == set(TEMPLATES)
    assert not set(HELDOUT_NAMES) & set(NAMES) and not set(HELDOUT_ITEMS) & set(ITEMS)
    training_runs = {run for group in TEMPLATES.values() for t in group for run in _runs(t, 4)}
    for group, templates in HELDOUT_TEMPLATES.items():
        assert len(templates) >= 3, group
        for template in templates:
            # Differ in words, not in punctuation or case: no four words in a row as in any training template.
            assert not _runs(template, 4) & training_runs, template
            # the question shows only the problem's numbers
            assert not re.search(r"\d", template.replace("{name2}", "")), template


def test_train_and_test_rows_never_use_a_heldout_phrasing():
    heldout_words = re.compile(rf"\b({'|'.join(HELDOUT_NAMES + HELDOUT_ITEMS)})\b")
    for split, sizes in (("train", [(0, 5000, 0.0), (7, 3000, 0.3), (11, 800, 1.0)]),
                         ("test", [(0, 1500, 0.0), (42, 200, 0.0), (3, 1000, 0.5), (5, 300, 1.0)])):  # fmt: skip
        for seed, size, fraction in sizes:
            for row in generate(split, size, seed=seed, two_step_fraction=fraction):
                question = _question(row)
                assert any(p.match(question) for p in TRAINING_PATTERNS), question
                assert not any(p.match(question) for p in HELDOUT_PATTERNS), question
                assert not heldout_words.search(question), question


@pytest.mark.parametrize("seed, size, fraction", [(42, 200, 0.0), (0, 1500, 0.2), (9, 400, 1.0)])
def test_test_phrasings_are_the_test_problems_in_heldout_wording_only(seed, size, fraction):
    test = generate("test", size, seed=seed, two_step_fraction=fraction, decomposed_solutions=True)
    reworded = generate(
        "test_phrasings", size, seed=seed, two_step_fraction=fraction, decomposed_solutions=True
    )
    assert [r["key"] for r in reworded] == [r["key"] for r in test]  # the same problems, the same order
    for new, old in zip(reworded, test, strict=True):
        assert (new["answer"], new["solution"], new["operation"]) == (
            old["answer"],
            old["solution"],
            old["operation"],
        )
        question = _question(new)
        assert any(p.match(question) for p in HELDOUT_PATTERNS), question
        assert not any(p.match(question) for p in TRAINING_PATTERNS), question
        assert not re.search(rf"\b({'|'.join(NAMES + ITEMS)})\b", question), question


def test_test_phrasings_never_hold_a_training_problem():
    train = set()
    for seed, size, fraction in [(0, 5000, 0.0), (1, 2000, 0.5), (42, 4000, 0.0)]:
        train |= keys(generate("train", size, seed=seed, two_step_fraction=fraction))
    for seed, size, fraction in [(0, 1500, 0.0), (42, 200, 0.0), (5, 1000, 0.5)]:
        assert not train & keys(generate("test_phrasings", size, seed=seed, two_step_fraction=fraction))


def test_test_phrasings_are_deterministic_and_use_every_heldout_template():
    first = generate("test_phrasings", 1200, seed=3, two_step_fraction=0.25)
    assert first == generate("test_phrasings", 1200, seed=3, two_step_fraction=0.25)
    other = generate("test_phrasings", 1200, seed=4, two_step_fraction=0.25)
    assert [r["prompt"] for r in first] != [r["prompt"] for r in other]
    used = {i for row in first for i, p in enumerate(HELDOUT_PATTERNS) if p.match(_question(row))}
    assert used == set(range(len(HELDOUT_PATTERNS)))
