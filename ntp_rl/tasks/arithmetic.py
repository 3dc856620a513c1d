"""Built-in synthetic task: arithmetic word problems with exact integer answers.

`generate(split, num_examples, seed)` returns rows with the columns
- `prompt`: a word problem (or a bare "What is 47 + 38?") ending with `ANSWER_INSTRUCTION`;
- `answer`: the exact non-negative integer answer as a string, e.g. "85";
- `solution`: a short worked solution whose last line is exactly `final_answer_line(answer)`;
- `operation`: "add", "sub", "mul" or "two_step";
- `key`: the canonical problem (operation and operands), the same whatever the phrasing.

SFT trains on `prompt -> solution`; RLVR and evaluation use `prompt` and check `answer`.

Problems: sums and differences of two two-digit numbers (10..99, differences kept positive), a two-digit
number times a one-digit number (2..9), and, for a share `two_step_fraction` of rows, two-step problems
(a + b - c, a * b + c, a * b - c). Whether a problem is in "train" or "test" is a hash of its key, so a
problem's numbers never appear in both splits, whatever the seed, size or phrasing; within a split keys
are unique. Rows are a pure function of the arguments.

Split "test_phrasings": the problems of "test" (the same seed and size give the same problems, in the
same order), each worded with `HELDOUT_WORDING` instead: templates, names and nouns that no "train" or
"test" row ever uses, with the same `ANSWER_INSTRUCTION`, answer and solution. A model that learnt the
training templates rather than the arithmetic does worse here than on "test"; paired by `key`, the two
splits differ in the wording alone.
"""

import functools
import hashlib
import random
from typing import NamedTuple

from ntp_rl.common import ANSWER_LINE_PREFIX

ANSWER_INSTRUCTION = "Give the final answer on the last line as 'Answer: <number>'."
HELDOUT_PHRASINGS_SPLIT = "test_phrasings"
SPLITS = ("train", "test", HELDOUT_PHRASINGS_SPLIT)
SINGLE_STEP_OPERATIONS = ("add", "sub", "mul")
# Share of problem keys held out for "test": enough test problems of each operation for a paired
# comparison (products have the fewest keys), the rest for training.
TEST_FRACTION = 0.2

NAMES = ("Ava", "Liam", "Maya", "Noah", "Zara", "Omar", "Lena", "Kenji", "Priya", "Mateo",
         "Chloe", "Ivan", "Amara", "Felix", "Sofia", "Ravi", "Nora", "Diego", "Hana", "Tom")  # fmt: skip
ITEMS = ("apples", "marbles", "stickers", "pencils", "shells", "cards", "stamps", "coins", "cookies",
         "beads", "crayons", "oranges", "buttons", "balloons")  # fmt: skip

# Fields: {a} {b} {c} operands as in the solution, {name} and {name2} two different people, {items} a noun.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "{name} has {a} {items}. {name2} gives {name} {b} more. How many {items} does {name} have now?",
        "There are {a} {items} in a box and {b} {items} in a bag. How many {items} are there altogether?",
        "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages did {name} read in total?",
        "{name} walked {a} km in the morning and {b} km in the afternoon. How many km did {name} walk?",
        "{name} saved {a} dollars in March and {b} dollars in April. How many dollars did {name} save?",
        "A school collected {a} {items} last week and {b} this week. How many {items} is that in all?",
        "{name} scored {a} points in the first game and {b} points in the second. What is the total score?",
        "{name} has {a} {items} and {name2} has {b} {items}. How many {items} do they have together?",
        "A train travels {a} km before lunch and {b} km after lunch. How far does it travel in all?",
        "{name} bought a book for {a} dollars and a bag for {b} dollars. How much did {name} spend?",
        "A library had {a} visitors on Saturday and {b} on Sunday. How many visitors came that weekend?",
        "{name} picked {a} {items} and then picked {b} more. How many {items} did {name} pick?",
        "A tank holds {a} liters of water. {name} pours in {b} more liters. How many liters are in it now?",
        "{name} practiced for {a} minutes on Friday and {b} minutes on Saturday. How many minutes is that?",
        "On a farm there are {a} chickens and {b} ducks. How many birds are on the farm?",
        "A baker made {a} muffins in the morning and {b} in the afternoon. How many muffins is that?",
        "What is {a} + {b}?",
        "Compute {a} plus {b}.",
        "Find the sum of {a} and {b}.",
        "Add {a} and {b}.",
    ),
    "sub": (
        "{name} had {a} {items} and gave {b} of them to {name2}. How many {items} does {name} have left?",
        "There were {a} {items} in a jar. {name} took out {b}. How many {items} are still in the jar?",
        "A book has {a} pages. {name} has read {b} pages. How many pages are left to read?",
        "{name} had {a} dollars and spent {b} dollars on lunch. How many dollars does {name} have now?",
        "A road trip is {a} km long. After driving {b} km, how many km remain?",
        "{name} has {a} {items} and {name2} has {b} {items}. How many more {items} does {name} have?",
        "A tank held {a} liters of water and {b} liters leaked out. How many liters are left in the tank?",
        "A shop had {a} {items} for sale and sold {b} of them. How many {items} are unsold?",
        "{name} scored {a} points and {name2} scored {b} points. By how many points did {name} win?",
        "A bus had {a} passengers. At the first stop {b} passengers got off. How many are still on the bus?",
        "{name} needs {a} {items} to fill an album and already has {b}. How many more does {name} need?",
        "It was {a} degrees at noon and the temperature dropped by {b} degrees. How warm is it now?",
        "A movie lasts {a} minutes. {name} has watched {b} minutes. How many minutes are left?",
        "{name} is {a} years old and {name2} is {b} years old. How much older is {name}?",
        "A farmer had {a} sheep and sold {b} of them at the market. How many sheep are left?",
        "A class planted {a} trees, and {b} of them did not survive the winter. How many trees survived?",
        "What is {a} - {b}?",
        "Compute {a} minus {b}.",
        "Subtract {b} from {a}.",
        "Find the difference between {a} and {b}.",
    ),
    "mul": (
        "{name} has {b} boxes with {a} {items} in each box. How many {items} does {name} have?",
        "Each bag holds {a} {items}. How many {items} are in {b} bags?",
        "{name} reads {a} pages every day. How many pages does {name} read in {b} days?",
        "A ticket costs {a} dollars. How much do {b} tickets cost?",
        "A car travels {a} km every hour. How far does it travel in {b} hours?",
        "There are {b} rows of chairs with {a} chairs in each row. How many chairs are there?",
        "{name} earns {a} dollars a day. How many dollars does {name} earn in {b} days?",
        "Each of {b} classes has {a} students. How many students are there in all?",
        "{name} runs {a} laps each week. How many laps does {name} run in {b} weeks?",
        "A pack contains {a} {items}. {name} buys {b} packs. How many {items} does {name} get?",
        "A barrel holds {a} liters of water. How many liters do {b} barrels hold?",
        "{name} practices for {a} minutes each day. How many minutes is that over {b} days?",
        "A shelf holds {a} books. How many books fit on {b} shelves?",
        "{b} friends each collected {a} {items}. How many {items} did they collect altogether?",
        "{name2} has {a} {items} and {name} has {b} times as many. How many {items} does {name} have?",
        "A garden has {b} rows with {a} plants in each row. How many plants are in the garden?",
        "What is {a} * {b}?",
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "Find the product of {a} and {b}.",
    ),
    # Two-step forms: a + b - c, a * b + c and a * b - c; the form is the first part of the key.
    "add_sub": (
        "{name} had {a} {items}, got {b} more, and then gave {c} to {name2}. How many does {name} have now?",
        "A bus had {a} passengers. At a stop {b} got on and {c} got off. How many passengers are on it now?",
        "{name} had {a} dollars, earned {b} more, and then spent {c}. How many dollars does {name} have?",
        "A tank had {a} liters of water; {b} liters were added, then {c} used. How many liters are left?",
        "A shop had {a} {items}, received {b} more and sold {c}. How many {items} does it have now?",
        "What is {a} + {b} - {c}?",
    ),
    "mul_add": (
        "{name} had {c} {items} and bought {b} packs of {a} more. How many {items} does {name} have now?",
        "{name} earns {a} dollars a day for {b} days plus a bonus of {c} dollars. How much is that in all?",
        "There are {b} shelves with {a} books each and {c} books on a table. How many books are there?",
        "{name} ran {a} km a day for {b} days and then {c} km more. How many km did {name} run?",
        "What is {a} * {b} + {c}?",
    ),
    "mul_sub": (
        "{name} bought {b} boxes of {a} {items} each and gave away {c}. How many {items} are left?",
        "A ticket costs {a} dollars. {name} buys {b} tickets with a {c} dollar coupon. What does {name} pay?",
        "A printer prints {a} pages a minute for {b} minutes, and {c} pages are spoiled. How many are good?",
        "What is {a} * {b} - {c}?",
    ),
}
TWO_STEP_FORMS = ("add_sub", "mul_add", "mul_sub")

# The wording of split "test_phrasings", never used by "train" or "test": other templates, names and
# nouns. The templates differ from the training ones in their words, not only in punctuation (the
# tests check that no run of four words is shared), in the order the numbers come in, and in how the
# question is asked, so that the split tells a model that learnt the arithmetic from one that learnt
# the training phrasings. Same fields as TEMPLATES; no digits of their own (a question shows exactly
# the problem's numbers).
HELDOUT_NAMES = ("Grace", "Yusuf", "Elena", "Kwame", "Ingrid", "Pablo", "Mei", "Arjun", "Olga", "Samir")
HELDOUT_ITEMS = ("pens", "bottles", "mugs", "candles", "bricks", "plates", "socks", "nails", "cups",
                 "leaves")  # fmt: skip
HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "What do you get if you put {a} and {b} together?",
        "{name} owns {a} {items}; {name2} hands over another {b}. What is {name}'s count now?",
        "Start at {a} and count up by {b}. Where do you end up?",
        "A crate of {a} {items} sits next to a crate of {b} {items}. Both crates hold how many {items} combined?",
        "Total up {a} and {b}.",
        "{name} jogged for {a} minutes, rested, then jogged {b} minutes more. What was the whole jogging time in minutes?",
        "Increase {a} by {b}. What number results?",
        "{name}'s team won {a} medals this year and {b} last year. Over both years, what was the medal count?",
        "If {name} places {b} extra {items} on a shelf that already carries {a}, what is the new number on the shelf?",
        "Tell me {b} and {a} added up.",
    ),
    "sub": (
        "What do you get if you take {b} away from {a}?",
        "{name} started the day with {a} {items} and lost {b} of them on the way home. What remains?",
        "Count down {b} steps from {a}. Which number do you land on?",
        "A hall seats {a} people and {b} seats are taken. What number of seats is still free?",
        "Work out {a} take away {b}.",
        "{name2} measures {b} cm and {name} measures {a} cm. What is the gap between their heights in cm?",
        "Reduce {a} by {b}. What number results?",
        "A drawer contains {a} {items}, {b} of which are damaged. Give the number that are not damaged.",
        "{name} wants to reach {a} steps today and has walked {b} so far. What is still to go?",
        "By how much does {a} exceed {b}?",
    ),
    "mul": (
        "{name} owns {b} cartons holding {a} {items} apiece. Give the total number of {items}.",
        "What do you get from {b} lots of {a}?",
        "A hall is set out with {a} seats per row in {b} rows. Give the seat count.",
        "Work out {a} multiplied by {b}.",
        "A minibus carries {a} riders per trip. After {b} full trips, what number of riders has it carried?",
        "{name} stacks {b} piles of {a} {items}. What is the combined count of {items}?",
        "Take {a}, {b} times over. What is the result?",
        "{name} puts away {a} dollars every week for {b} weeks. What sum has {name} put away?",
        "There are {b} crates, and every one weighs {a} kg. Find their combined weight in kg.",
        "If one ticket is worth {a} points, what are {b} tickets worth?",
    ),
    "add_sub": (
        "{name} began with {a} {items}, was handed {b} extra, then lost {c}. What is {name} left holding?",
        "Start from {a}, add on {b}, then take off {c}. What number do you finish with?",
        "A lift carries {a} riders; {b} step in and {c} step out. What is the new rider count?",
    ),
    "mul_add": (
        "{name} fills {b} jars with {a} {items} apiece and keeps {c} loose ones. What is the overall number of {items}?",
        "Take {b} groups of {a}, then tack on {c}. What is the result?",
        "A hotel has {b} floors of {a} rooms, with {c} rooms in the annex besides. Count all the rooms.",
    ),
    "mul_sub": (
        "{name} packed {b} trays of {a} {items} and dropped {c}. What number of {items} survived?",
        "Take {b} groups of {a}, then remove {c}. What is the result?",
        "A farm fills {b} cartons with {a} eggs apiece, but {c} eggs crack. Give the count of uncracked eggs.",
    ),
}


class Wording(NamedTuple):
    templates: dict[str, tuple[str, ...]]
    names: tuple[str, ...]
    items: tuple[str, ...]


TRAINING_WORDING = Wording(TEMPLATES, NAMES, ITEMS)  # "train" and "test"
HELDOUT_WORDING = Wording(HELDOUT_TEMPLATES, HELDOUT_NAMES, HELDOUT_ITEMS)  # "test_phrasings"


def final_answer_line(answer: int | str) -> str:
    """The canonical last line of a solution, e.g. "Answer: 85"."""
    return f"{ANSWER_LINE_PREFIX} {str(answer).strip()}"


def _split_of(key: str) -> str:
    # hashlib, not hash(): Python salts str hashes per process, and the split must never move.
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000
    return "test" if bucket < TEST_FRACTION * 1000 else "train"


@functools.cache
def _single_step_keys(operation: str, split: str) -> tuple[str, ...]:
    # Addition is commutative, so its key sorts the operands: "38 + 47" and "47 + 38" share a split.
    if operation == "add":
        pairs = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    elif operation == "sub":
        pairs = [(a, b) for a in range(10, 100) for b in range(10, a)]
    else:
        pairs = [(a, b) for a in range(10, 100) for b in range(2, 10)]
    keys = (f"{operation}:{a},{b}" for a, b in pairs)
    return tuple(key for key in keys if _split_of(key) == split)


def _allocate(total: int, capacities: dict[str, int], rng: random.Random) -> dict[str, int]:
    """Spread `total` rows evenly over operations; one that runs out passes its share on to the others."""
    counts = dict.fromkeys(capacities, 0)
    while total > 0:
        open_operations = [op for op in capacities if counts[op] < capacities[op]]
        share, extra = divmod(total, len(open_operations))
        lucky = set(rng.sample(open_operations, extra))
        for op in open_operations:
            given = min(share + (op in lucky), capacities[op] - counts[op])
            counts[op] += given
            total -= given
    return counts


def _draw_two_step(rng: random.Random) -> tuple[str, int, int, int]:
    form = rng.choice(TWO_STEP_FORMS)
    while True:
        if form == "add_sub":
            a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(10, 99)
            if c <= a + b:
                return form, a, b, c
        else:
            a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(10, 99)
            if form == "mul_add" or c <= a * b:
                return form, a, b, c


def worked_step(left: int, symbol: str, right: int, decomposed: bool) -> str:
    """One solution line, e.g. "47 + 38 = 47 + 30 + 8 = 77 + 8 = 85." (decomposed) or "47 + 38 = 85.".

    The decomposed form splits the two-digit operand into tens and ones, so that every step is an
    operation a small model can learn (tens, then ones); the problem itself is unchanged.
    """
    result = {"+": left + right, "-": left - right, "*": left * right}[symbol]
    if not decomposed:
        return f"{left} {symbol} {right} = {result}."
    if symbol == "*":  # a two-digit (or larger) number times a one-digit number
        tens, ones = left - left % 10, left % 10
        if ones == 0:
            return f"{left} * {right} = {result}."
        return f"{left} * {right} = {tens} * {right} + {ones} * {right} = {tens * right} + {ones * right} = {result}."
    tens, ones = right - right % 10, right % 10
    if tens == 0 or ones == 0:
        return f"{left} {symbol} {right} = {result}."
    middle = left + tens if symbol == "+" else left - tens
    return f"{left} {symbol} {right} = {left} {symbol} {tens} {symbol} {ones} = {middle} {symbol} {ones} = {result}."


def _row(
    operation: str,
    template_group: str,
    operands: tuple[int, ...],
    key: str,
    rng: random.Random,
    decomposed: bool = False,
    wording: Wording = TRAINING_WORDING,
) -> dict[str, str]:
    a, b, c = (*operands, 0)[:3]
    name, name2 = rng.sample(wording.names, 2)
    template = rng.choice(wording.templates[template_group])
    question = template.format(a=a, b=b, c=c, name=name, name2=name2, items=rng.choice(wording.items))
    if template_group == "add_sub":
        steps, answer = (
            [worked_step(a, "+", b, decomposed), worked_step(a + b, "-", c, decomposed)],
            a + b - c,
        )
    elif template_group == "mul_add":
        steps, answer = (
            [worked_step(a, "*", b, decomposed), worked_step(a * b, "+", c, decomposed)],
            a * b + c,
        )
    elif template_group == "mul_sub":
        steps, answer = (
            [worked_step(a, "*", b, decomposed), worked_step(a * b, "-", c, decomposed)],
            a * b - c,
        )
    else:
        symbol = {"add": "+", "sub": "-", "mul": "*"}[operation]
        answer = {"add": a + b, "sub": a - b, "mul": a * b}[operation]
        steps = [worked_step(a, symbol, b, decomposed)]
    return {
        "prompt": f"{question} {ANSWER_INSTRUCTION}",
        "answer": str(answer),
        "solution": "\n".join([*steps, final_answer_line(answer)]),
        "operation": operation,
        "key": key,
    }


def generate(
    split: str,
    num_examples: int,
    seed: int = 0,
    two_step_fraction: float = 0.0,
    decomposed_solutions: bool = False,
) -> list[dict[str, str]]:
    """`num_examples` distinct problems of `split` ("train", "test" or "test_phrasings"), shuffled; see
    the module docstring.

    Exactly `round(num_examples * two_step_fraction)` rows are two-step problems; the rest are spread
    evenly over add, sub and mul (mul has the fewest problems, 564 train and 156 test, and passes
    its share on to add and sub when it runs out). Raises ValueError when the split has too few problems.
    """
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
    if num_examples < 0:
        raise ValueError(f"num_examples: must be >= 0, got {num_examples}")
    if not 0.0 <= two_step_fraction <= 1.0:
        raise ValueError(f"two_step_fraction: must be between 0 and 1, got {two_step_fraction}")
    if split != HELDOUT_PHRASINGS_SPLIT:
        problems = _problems(split, num_examples, seed, two_step_fraction, decomposed_solutions)
        return [row for row, _ in problems]
    # The "test" problems, drawn exactly as for "test", then worded anew with a generator of its own.
    problems = _problems("test", num_examples, seed, two_step_fraction, decomposed_solutions)
    rng = random.Random(f"ntp-rl/arithmetic/{split}/{seed}")
    return [
        _row(*problem, rng=rng, decomposed=decomposed_solutions, wording=HELDOUT_WORDING)
        for _, problem in problems
    ]


Problem = tuple[str, str, tuple[int, ...], str]  # operation, template group, operands as shown, key


def _problems(
    split: str, num_examples: int, seed: int, two_step_fraction: float, decomposed_solutions: bool
) -> list[tuple[dict[str, str], Problem]]:
    """The rows of "train" or "test", each with the problem it words (`_row`'s first four arguments)."""
    rng = random.Random(f"ntp-rl/arithmetic/{split}/{seed}")
    num_two_step = round(num_examples * two_step_fraction)
    pools = {op: _single_step_keys(op, split) for op in SINGLE_STEP_OPERATIONS}
    capacity = sum(len(pool) for pool in pools.values())
    if num_examples - num_two_step > capacity:
        raise ValueError(
            f"num_examples: the {split!r} split has {capacity} single-step problems, but "
            f"{num_examples - num_two_step} were asked for; lower num_examples or raise two_step_fraction"
        )
    rows: list[tuple[dict[str, str], Problem]] = []
    counts = _allocate(num_examples - num_two_step, {op: len(pool) for op, pool in pools.items()}, rng)
    for op, pool in pools.items():
        for key in rng.sample(pool, counts[op]):
            a, b = (int(x) for x in key.split(":")[1].split(","))
            if op == "add" and rng.random() < 0.5:
                a, b = b, a  # the key is sorted; the question shows either order
            problem: Problem = (op, op, (a, b), key)
            rows.append((_row(*problem, rng, decomposed_solutions), problem))

    # Two-step problems number in the tens of thousands even in "test", so rejection sampling finds new
    # ones quickly; the attempt cap only turns an impossible request into an error instead of a hang.
    seen: set[str] = set()
    for _ in range(100 * num_two_step):
        if len(seen) == num_two_step:
            break
        form, a, b, c = _draw_two_step(rng)
        # a + b - c is b + a - c: sort a and b in the key so that both orders share a split.
        first, second = sorted((a, b)) if form == "add_sub" else (a, b)
        key = f"two_step:{form}:{first},{second},{c}"
        if key not in seen and _split_of(key) == split:
            seen.add(key)
            problem = ("two_step", form, (a, b, c), key)
            rows.append((_row(*problem, rng, decomposed_solutions), problem))
    if len(seen) < num_two_step:
        raise ValueError(f"num_examples: could not find {num_two_step} distinct two-step {split!r} problems")
    rng.shuffle(rows)
    return rows
