"""Tests of the reward contract, the built-in rewards, the resolver and the run-time error policy.

Offline and CPU only; math-verify runs in its child process (started once, about 0.5 s).
"""

from __future__ import annotations

import math
import os
import pickle
import textwrap
import threading
import time
from pathlib import Path

import ntp_rl.rewards.math as reward_math
import pytest
from ntp_rl.rewards import (
    BUILTIN_REWARDS,
    GoldAnswerError,
    GuardedReward,
    RewardRuntimeError,
    RewardSpec,
    RewardSpecError,
    SoftOverlongPenalty,
    check_gold_answers,
    check_reward_columns,
    completion_text,
    final_answer,
    format_reward,
    math_accuracy,
    resolve_reward,
    resolve_rewards,
    score_math_answer,
)

REPO = Path(__file__).resolve().parents[1]


def conversation(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# --- completions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain text", "plain text"),
        (conversation("from a message"), "from a message"),
        ({"role": "assistant", "content": "one message"}, "one message"),
        ([{"role": "assistant", "content": [{"type": "text", "text": "typed"}, {"type": "image"}]}], "typed"),
        (
            [
                {"role": "assistant", "content": "a"},
                {"role": "tool", "content": "x"},
                {"role": "assistant", "content": "b"},
            ],
            "a\nb",
        ),
    ],
)
def test_completion_text_reads_every_shape(completion, expected):
    assert completion_text(completion) == expected


def test_completion_text_rejects_other_types():
    with pytest.raises(TypeError, match="a completion must be"):
        completion_text(42)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("work\nAnswer: 42", "42"),
        ("Answer: 1\nmore work\nAnswer: 2\n", "2"),
        ("work\nAnswer:\n\n  7  \n", "7"),
        ("work\nAnswer:", ""),
        ("the Answer: 5 is inline", None),
        ("no answer line", None),
    ],
)
def test_final_answer(text, expected):
    assert final_answer(text) == expected


# --- math_accuracy -------------------------------------------------------------------------------

MATH_CASES = [
    # (completion text, gold, reward, parse_failed)
    ("3 + 4 = 7\nAnswer: 7", "7", 1.0, False),
    ("3 + 4 = 8\nAnswer: 8", "7", 0.0, False),
    ("Answer: 1,234", "1234", 1.0, False),
    ("Answer: 1234", "1,234", 1.0, False),
    ("Answer: 1,000,000", "1000000", 1.0, False),
    ("Answer: -7", "-7", 1.0, False),
    ("Answer: 7", "-7", 0.0, False),
    ("Answer: 3.0", "3", 1.0, False),
    ("Answer: 3.5", "3", 0.0, False),
    ("Answer: 0.50", ".5", 1.0, False),
    ("Answer: $42$", "42", 1.0, False),
    ("Answer: \\$42", "42", 1.0, False),
    ("Answer: 42.", "42", 1.0, False),
    ("Answer: \\boxed{42}", "42", 1.0, False),
    ("Answer: \\frac{1}{2}", "0.5", 1.0, False),
    ("Answer: \\dfrac{3}{4}", "\\frac{3}{4}", 1.0, False),
    ("Answer: $\\frac{1}{3}$", "\\frac{1}{2}", 0.0, False),
    ("Answer: 2^{10}", "1024", 1.0, False),
    ("Answer: 1/2", "$\\frac{1}{2}$", 1.0, False),
    ("Answer: 42 apples", "42", 1.0, False),
    ("so the result is \\boxed{12}.", "12", 1.0, False),  # no Answer: line: math-verify's extraction
    ("first 3, then 5", "5", 1.0, False),
    ("42", "42", 1.0, False),
    ("Answer: twelve", "12", 0.0, True),
    ("Answer:", "12", 0.0, True),
    ("I do not know.", "12", 0.0, True),
    ("", "12", 0.0, True),
]


@pytest.mark.parametrize(("text", "gold", "reward", "parse_failed"), MATH_CASES)
def test_math_accuracy_table(text, gold, reward, parse_failed):
    assert math_accuracy([text], answer=[gold]) == [reward]
    assert math_accuracy([conversation(text)], answer=[gold]) == [reward]
    score = score_math_answer(text, gold)
    assert score.correct == (reward == 1.0)
    assert score.parse_failed == parse_failed
    assert (score.failure is None) == (not parse_failed)


def test_math_accuracy_accepts_numeric_gold_and_trl_kwargs():
    rewards = math_accuracy(
        ["Answer: 42", "Answer: 2.5"],
        answer=[42, 2.5],
        prompts=["p", "p"],
        completion_ids=[[1], [2]],
        trainer_state=None,
    )
    assert rewards == [1.0, 1.0]


def test_math_accuracy_reports_parse_failures_and_extracted_answers():
    metrics: dict[str, float] = {}
    extra: dict[str, list] = {}
    rewards = math_accuracy(
        ["Answer: 4", "Answer: 5", "Answer: banana", "nothing"],
        answer=["4"] * 4,
        log_metric=metrics.__setitem__,
        log_extra=extra.__setitem__,
    )
    assert rewards == [1.0, 0.0, 0.0, 0.0]
    assert metrics == {"math_accuracy/parse_failure_rate": 0.5}
    assert extra["math_accuracy/extracted"][:2] == ["4", "5"]


def test_too_long_answer_is_a_parse_failure_without_parsing():
    score = score_math_answer("Answer: " + "1" * 3000, "1")
    assert (score.parse_failed, score.failure) == (True, "too_long")


@pytest.mark.parametrize("gold", ["not math at all", "", "   ", None, float("nan"), True])
def test_unparseable_gold_raises(gold):
    with pytest.raises(GoldAnswerError, match="gold answer"):
        math_accuracy(["Answer: 1"], answer=[gold])


def test_check_gold_answers_lists_bad_rows_by_index():
    check_gold_answers(["1", "\\frac{1}{2}", 3, "1,234"])
    with pytest.raises(GoldAnswerError) as caught:
        check_gold_answers(["1", "banana", "2", "", "3"])
    message = str(caught.value)
    assert "2 of 5" in message and "row 1: 'banana'" in message and "row 3: ''" in message


def test_fast_path_is_cheap():
    completions = [f"Some working.\nAnswer: {n:,}" for n in range(2000)]
    golds = [str(n) for n in range(2000)]
    start = time.perf_counter()
    assert math_accuracy(completions, answer=golds) == [1.0] * 2000
    assert time.perf_counter() - start < 1.0  # about 10 us per sample; 500 us would mean no fast path


def test_math_verify_replies_are_remembered_but_timeouts_are_not(monkeypatch, short_deadline):
    """An eval checks each completion twice (verdict, then the reward): math-verify runs once per answer."""
    from ntp_rl.rewards._math_worker import WORKER

    sent: list[str] = []
    request = WORKER.request
    monkeypatch.setattr(reward_math, "_REPLIES", {})
    monkeypatch.setattr(
        WORKER, "request", lambda message, timeout: sent.append(message["text"]) or request(message, timeout)
    )
    text = "So the result is \\frac{6}{4}."  # no Answer: line and not a plain number: math-verify
    first = score_math_answer(text, "1.5")
    assert math_accuracy([text, text], answer=["1.5", "1.5"]) == [1.0, 1.0]
    assert first.correct and len(sent) == 1
    assert not score_math_answer(text, "2").correct and len(sent) == 2  # another gold: asked again
    slow = "Answer: 9**9**9**9"
    assert score_math_answer(slow, "5").failure == "timeout" == score_math_answer(slow, "5").failure
    assert sent.count("9**9**9**9") == 2  # a timeout is tried again, not remembered


# Inputs built to be slow: each must come back within the deadline plus the child's restart.
PATHOLOGICAL = [
    "1" * 100_000,
    "x" * 100_000,
    "{" * 5000 + "1" + "}" * 5000,
    "\\frac{" * 1000,
    "Answer: " + "\\frac{" * 300,
    "Answer: 9**9**9**9",
    "9^9^9^9",
    "Answer: $" + "{" * 900 + "1" + "}" * 900 + "$",
]


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(reward_math, "MATH_VERIFY_TIMEOUT_SECONDS", 1.0)
    return 1.0


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=lambda t: f"{t[:20]!r}..{len(t)}")
def test_pathological_inputs_finish_quickly(text, short_deadline):
    start = time.perf_counter()
    assert math_accuracy([text], answer=["5"]) == [0.0]
    assert time.perf_counter() - start < short_deadline + 4.0


def test_timeout_is_a_parse_failure_and_the_next_sample_is_scored(short_deadline):
    score = score_math_answer("Answer: 9**9**9**9", "5")
    assert (score.correct, score.parse_failed, score.failure) == (False, True, "timeout")
    assert score_math_answer("Answer: \\frac{1}{2}", "0.5").correct


def test_math_accuracy_off_the_main_thread_does_not_hang(short_deadline):
    results: list[list] = []
    worker = threading.Thread(
        target=lambda: results.append(
            math_accuracy(["Answer: 9**9**9**9", "Answer: \\frac{2}{4}"], answer=["5", "0.5"])
        )
    )
    start = time.perf_counter()
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive()
    assert results == [[0.0, 1.0]]
    assert time.perf_counter() - start < short_deadline + 6.0


def test_worker_survives_errors_and_a_killed_child():
    from ntp_rl.rewards._math_worker import WORKER

    assert "error" in WORKER.request(
        {"op": "score"}, timeout_seconds=5
    )  # an exception in the child is reported
    assert score_math_answer("Answer: \\frac{1}{4}", "0.25").correct
    WORKER._process.kill()  # as if the OOM killer took it between batches
    WORKER._process.wait()
    assert score_math_answer("Answer: \\frac{3}{4}", "0.75").correct


def test_worker_started_ahead_does_not_wait_and_is_used_once_ready():
    from ntp_rl.rewards._math_worker import WORKER
    from ntp_rl.rewards.math import start_math_verify

    WORKER.close()
    restarts = WORKER.restarts
    start_math_verify()
    started = WORKER._process
    assert started is not None and started.poll() is None and not WORKER._ready  # did not wait
    start_math_verify()  # a running child is kept
    assert WORKER._process is started
    assert score_math_answer("Answer: \\frac{7}{28}", "0.25").correct  # waits for the start, then asks it
    assert WORKER._process is started and WORKER._ready and WORKER.restarts == restarts
    started.kill()
    started.wait()
    start_math_verify()  # a dead child is replaced
    assert WORKER._process is not started and WORKER._process.poll() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_its_own_worker():
    from ntp_rl.rewards._math_worker import WORKER

    score_math_answer("Answer: \\frac{1}{2}", "0.5")  # the parent's child process is running
    parents_worker = WORKER._process.pid
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked process
        forgot_parents = WORKER._process is None  # never talk to, or kill, the parent's process
        ok = forgot_parents and score_math_answer("Answer: \\frac{1}{8}", "0.125").correct
        ok = ok and WORKER._process.pid != parents_worker
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert score_math_answer("Answer: \\frac{1}{2}", "0.5").correct  # and the parent's still works


# --- format and length ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reward"),
    [
        ("reasoning\nAnswer: 42", 1.0),
        ("reasoning\nAnswer: 42\n\n  ", 1.0),
        ("Answer: \\frac{1}{2}", 1.0),
        ("reasoning\nAnswer:", 0.0),
        ("reasoning\nAnswer:   ", 0.0),
        ("Answer: 42\nand then more text", 0.0),
        ("answer: 42", 0.0),
        ("the Answer: 42", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward(text, reward):
    assert format_reward([text]) == [reward]
    assert format_reward([conversation(text)], prompts=["p"], trainer_state=None) == [reward]


@pytest.mark.parametrize(
    ("length", "penalty"),
    [(0, 0.0), (80, 0.0), (90, -0.5), (95, -0.75), (100, -1.0), (150, -1.0)],
)
def test_soft_overlong_penalty(length, penalty):
    reward = SoftOverlongPenalty(max_completion_tokens=100, buffer_tokens=20)
    assert reward(["ignored"], completion_ids=[[7] * length]) == [pytest.approx(penalty)]
    assert reward([" ".join(["w"] * length)]) == [pytest.approx(penalty)]  # words without token ids


def test_soft_overlong_penalty_without_buffer_is_a_step():
    reward = SoftOverlongPenalty(max_completion_tokens=10, buffer_tokens=0)
    assert reward(["", ""], completion_ids=[[1] * 10, [1] * 11]) == [0.0, -1.0]


@pytest.mark.parametrize(("max_tokens", "buffer"), [(100, 20), (48, 8), (10, 0), (5, 5)])
def test_soft_overlong_penalty_is_dapo_eq_13_at_every_length(max_tokens, buffer):
    """TRL computes it now; the values are those of the formula the project computed before, exactly."""

    def before(length: int) -> float:
        free = max_tokens - buffer
        return 0.0 if length <= free else -1.0 if length > max_tokens else (free - length) / buffer

    lengths = range(max_tokens + 5)
    reward = SoftOverlongPenalty(max_completion_tokens=max_tokens, buffer_tokens=buffer)
    expected = [before(n) for n in lengths]
    assert reward([""] * len(lengths), completion_ids=[[1] * n for n in lengths]) == expected


@pytest.mark.parametrize(("max_tokens", "buffer"), [(0, 0), (10, 11), (10, -1), (10.0, 2), (10, True)])
def test_soft_overlong_penalty_rejects_bad_settings(max_tokens, buffer):
    with pytest.raises((TypeError, ValueError)):
        SoftOverlongPenalty(max_completion_tokens=max_tokens, buffer_tokens=buffer)


# --- pickling ------------------------------------------------------------------------------------

BUILTIN_SETTINGS = {"soft_overlong_penalty": {"max_completion_tokens": 10, "buffer_tokens": 5}}
BUILTIN_COLUMNS = {
    "math_accuracy": {"answer": ["4"]},
    "review_warmth": {"product": ["Aurora desk lamp"], "kind": ["lamp"]},
}


@pytest.mark.parametrize("name", sorted(BUILTIN_REWARDS))
def test_every_builtin_pickles_and_keeps_its_name(name):
    target = BUILTIN_REWARDS[name]
    reward = target(**BUILTIN_SETTINGS[name]) if isinstance(target, type) else target
    copy = pickle.loads(pickle.dumps(reward))
    assert copy.__name__ == reward.__name__
    columns = BUILTIN_COLUMNS.get(name, {})
    assert copy(["Answer: 4"], **columns) == reward(["Answer: 4"], **columns)


@pytest.mark.parametrize("name", sorted(BUILTIN_REWARDS))
def test_resolved_builtin_pickles(name):
    guarded = resolve_reward(RewardSpec(name=name, kwargs=BUILTIN_SETTINGS.get(name, {})))
    copy = pickle.loads(pickle.dumps(guarded))
    assert isinstance(copy, GuardedReward) and copy.__name__ == guarded.__name__
    columns = BUILTIN_COLUMNS.get(name, {})
    assert copy(["x\nAnswer: 4"], **columns) == guarded(["x\nAnswer: 4"], **columns)


@pytest.mark.parametrize("name", sorted(BUILTIN_REWARDS))
def test_resolved_builtins_take_trl_calling_convention(name):
    # GRPOTrainer/RLOOTrainer (TRL 1.x) call every reward with keywords only, data columns included.
    reward = resolve_reward(RewardSpec(name=name, kwargs=BUILTIN_SETTINGS.get(name, {})))
    metrics: dict[str, float] = {}
    extra: dict[str, list] = {}
    values = reward(
        prompts=["1+3=?", "1+3=?"],
        completions=[conversation("1+3=4\nAnswer: 4"), conversation("no idea")],
        completion_ids=[[5] * 6, [5] * 9],
        answer=["4", "4"],
        question=["1+3=?", "1+3=?"],
        product=["Aurora desk lamp"] * 2,
        kind=["lamp"] * 2,
        trainer_state=None,
        log_extra=extra.__setitem__,
        log_metric=metrics.__setitem__,
    )
    assert len(values) == 2 and all(isinstance(v, float) for v in values)


def test_builtin_names_are_what_trl_logs():
    names = {
        name: resolve_reward(RewardSpec(name=name, kwargs=BUILTIN_SETTINGS.get(name, {}))).__name__
        for name in BUILTIN_REWARDS
    }
    assert names == {
        "math_accuracy": "math_accuracy",
        "format": "format_reward",
        "soft_overlong_penalty": "soft_overlong_penalty",
        "review_warmth": "review_warmth",
    }


# --- resolution ----------------------------------------------------------------------------------

USER_REWARDS = textwrap.dedent(
    """
    import functools

    NOT_CALLABLE = 3

    def good(completions, **kwargs):
        return [float(len(c)) for c in completions]

    def with_setting(completions, scale: float = 1.0, **kwargs):
        return [scale] * len(completions)

    def needs_answer(completions, answer, **kwargs):
        return [1.0 if a else 0.0 for a in answer]

    def needs_prompt(completions, prompt, **kwargs):
        return [0.0] * len(completions)

    def no_kwargs(completions):
        return [0.0] * len(completions)

    def misnamed(texts, **kwargs):
        return [0.0] * len(texts)

    def positional_only(completions, /, **kwargs):
        return [0.0] * len(completions)

    async def asynchronous(completions, **kwargs):
        return [0.0] * len(completions)

    class Scaled:
        __name__ = "scaled"

        def __init__(self, factor: float):
            if factor <= 0:
                raise ValueError("factor must be positive")
            self.factor = factor

        def __call__(self, completions, **kwargs):
            return [self.factor] * len(completions)

    def _make_closure():
        def closure(completions, **kwargs):
            return [0.0] * len(completions)
        return closure

    closure = _make_closure()
    """
)


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    (tmp_path / "my_rewards.py").write_text(USER_REWARDS)
    (tmp_path / "broken.py").write_text("import not_a_real_module_xyz\n")
    return tmp_path


def test_file_path_is_relative_to_base_dir(recipe_dir):
    reward = resolve_reward(RewardSpec(path="my_rewards.py:good"), base_dir=recipe_dir)
    assert reward.__name__ == "good"
    assert reward(["ab", "abc"]) == [2.0, 3.0]
    copy = pickle.loads(pickle.dumps(reward))
    assert copy(["ab"]) == [2.0]


def test_file_path_falls_back_to_cwd(recipe_dir, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(recipe_dir)
    reward = resolve_reward(
        RewardSpec(path="./my_rewards.py:good"), base_dir=tmp_path_factory.mktemp("elsewhere")
    )
    assert reward(["a"]) == [1.0]


def test_example_reward_resolves_from_the_repository_root(monkeypatch):
    monkeypatch.chdir(REPO)
    reward = resolve_reward(
        RewardSpec(path="rewards/examples/brevity.py:brevity", weight=0.1, kwargs={"max_words": 10}),
        base_dir=REPO / "recipes",
    )
    assert reward(["Two plus two.\nAnswer: 4", "Answer:", "four"]) == [pytest.approx(0.6), 0.0, 0.0]
    assert pickle.loads(pickle.dumps(reward))(["Answer: 4"]) == [pytest.approx(0.9)]


def test_module_path_and_kwargs(recipe_dir):
    reward = resolve_reward(
        RewardSpec(
            path="ntp_rl.rewards.length:SoftOverlongPenalty",
            kwargs={"max_completion_tokens": 4, "buffer_tokens": 2},
        )
    )
    assert reward.__name__ == "soft_overlong_penalty"
    assert reward(["a b c"]) == [-0.5]
    bound = resolve_reward(
        RewardSpec(path="my_rewards.py:with_setting", kwargs={"scale": 0.25}), base_dir=recipe_dir
    )
    assert bound.__name__ == "with_setting" and bound(["x"]) == [0.25]
    scaled = resolve_reward(
        RewardSpec(path="my_rewards.py:Scaled", kwargs={"factor": 2.0}), base_dir=recipe_dir
    )
    assert scaled.__name__ == "scaled" and scaled(["x"]) == [2.0]


def test_duplicate_names_get_a_suffix(recipe_dir):
    rewards = resolve_rewards(
        [
            RewardSpec(name="format"),
            RewardSpec(path="my_rewards.py:with_setting", kwargs={"scale": 2.0}),
            RewardSpec(path="my_rewards.py:with_setting"),
        ],
        base_dir=recipe_dir,
    )
    assert [r.__name__ for r in rewards] == ["format_reward", "with_setting", "with_setting_2"]


RESOLUTION_ERRORS = [
    # (spec, message fragments)
    (
        RewardSpec(name="math_acuracy"),
        ["rewards[0] (name math_acuracy)", "did you mean 'math_accuracy'", "format"],
    ),
    (RewardSpec(name="my_rewards.py:good"), ["unknown built-in", "`path:`"]),
    (RewardSpec(path="no_such_pkg_xyz.rewards:fn"), ["no module named 'no_such_pkg_xyz.rewards'"]),
    (RewardSpec(path="my_rewards:good"), ["a file of that name exists", "./my_rewards.py"]),
    (RewardSpec(path="broken.py:fn"), ["importing", "ModuleNotFoundError", "not_a_real_module_xyz"]),
    (RewardSpec(path="missing.py:fn"), ["file not found", "missing.py"]),
    (RewardSpec(path="my_rewards.py"), ["attribute after a colon"]),
    (RewardSpec(path="my_rewards.py:godo"), ["has no attribute 'godo'", "did you mean 'good'"]),
    (RewardSpec(path="my_rewards.py:NOT_CALLABLE"), ["is a int, not a function or class"]),
    (RewardSpec(path="my_rewards.py:no_kwargs"), ["has no **kwargs"]),
    (RewardSpec(path="my_rewards.py:misnamed"), ["first parameter is 'texts'", "`completions`"]),
    (RewardSpec(path="my_rewards.py:positional_only"), ["positional-only"]),
    (RewardSpec(path="my_rewards.py:asynchronous"), ["async"]),
    (RewardSpec(path="my_rewards.py:closure"), ["does not pickle", "closure"]),
    (
        RewardSpec(path="my_rewards.py:with_setting", kwargs={"scael": 2}),
        ["'scael' in kwargs", "did you mean 'scale'"],
    ),
    (RewardSpec(path="my_rewards.py:Scaled", kwargs={"size": 2}), ["do not fit Scaled"]),
    (RewardSpec(path="my_rewards.py:Scaled", kwargs={"factor": -1}), ["factor must be positive"]),
    (RewardSpec(name="soft_overlong_penalty"), ["do not fit SoftOverlongPenalty"]),
    (RewardSpec(path="my_rewards.py:needs_answer"), ["needs the data column 'answer'", "question"]),
    (RewardSpec(path="my_rewards.py:needs_prompt"), ["TRL passes the prompt as `prompts`"]),
    (RewardSpec(name="math_accuracy"), ["needs the data column 'answer'"]),
]


@pytest.mark.parametrize(
    ("spec", "fragments"), RESOLUTION_ERRORS, ids=lambda v: v.describe() if isinstance(v, RewardSpec) else ""
)
def test_resolution_errors_name_the_spec_and_the_problem(spec, fragments, recipe_dir):
    with pytest.raises(RewardSpecError) as caught:
        resolve_rewards([spec], base_dir=recipe_dir, available_columns=["prompt", "question"])
    message = str(caught.value)
    assert message.startswith(f"rewards[0] ({spec.describe()})")
    for fragment in fragments:
        assert fragment in message


def test_reward_spec_errors_are_user_errors_and_value_errors():
    from ntp_rl.errors import UserError

    with pytest.raises(RewardSpecError) as caught:
        RewardSpec(name="format", path="x.py:f")
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"name": "format", "weight": float("nan")},
        {"name": "format", "weight": "1"},
        {"name": "format", "on_error": "ignore"},
    ],
)
def test_reward_spec_validates_itself(kwargs):
    with pytest.raises(RewardSpecError, match="reward spec"):
        RewardSpec(**kwargs)


def test_check_reward_columns(recipe_dir):
    reward = resolve_reward(
        RewardSpec(path="my_rewards.py:needs_answer"), base_dir=recipe_dir, where="stages.rl.rewards[2]"
    )
    check_reward_columns(reward, ["prompt", "answer"])
    with pytest.raises(
        RewardSpecError,
        match=r"^stages\.rl\.rewards\[2\] \(path my_rewards\.py:needs_answer\).*'answer'.*did you mean 'answers'",
    ):
        check_reward_columns(reward, ["prompt", "answers"])
    bound = resolve_reward(
        RewardSpec(path="my_rewards.py:with_setting", kwargs={"scale": 2.0}), base_dir=recipe_dir
    )
    with pytest.raises(RewardSpecError, match="share a name with data columns"):
        check_reward_columns(bound, ["prompt", "scale"])


# --- run-time error policy -----------------------------------------------------------------------


def raises_on_bad(completions, **kwargs):
    if any("bad" in completion_text(c) for c in completions):
        raise ZeroDivisionError("boom")
    return [1.0] * len(completions)


def one_short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def nan_for_second(completions, **kwargs):
    return [1.0, math.nan, 0.0][: len(completions)]


def string_for_second(completions, **kwargs):
    return [1.0, "1.0", True][: len(completions)]


def raises_data_error(completions, **kwargs):
    raise GoldAnswerError("gold answer 'x' cannot be parsed")


COMPLETIONS = ["fine one", "bad one " + "z" * 300, "fine two"]

RUNTIME_VIOLATIONS = [
    # (reward, message fragments, scores under on_error="skip", samples counted)
    (
        raises_on_bad,
        ["'raises_on_bad' raised ZeroDivisionError: boom", "sample 1 of 3", "bad one zzz", "..."],
        [None, None, None],
        3,
    ),
    (one_short, ["'one_short' returned 2 values for 3 completions"], [None, None, None], 3),
    (nan_for_second, ["'nan_for_second' returned nan for sample 1 of 3", "bad one"], [1.0, None, 0.0], 1),
    (
        string_for_second,
        ["'string_for_second' returned '1.0' (str) for sample 1 of 3", "bad one"],
        [1.0, None, 1.0],
        1,
    ),
]


@pytest.mark.parametrize(
    ("fn", "fragments", "skipped", "count"), RUNTIME_VIOLATIONS, ids=lambda v: getattr(v, "__name__", "")
)
def test_guard_raises_naming_reward_and_sample(fn, fragments, skipped, count):
    guarded = GuardedReward(fn, fn.__name__, on_error="raise")
    with pytest.raises(RewardRuntimeError) as caught:
        guarded(COMPLETIONS, answer=["1", "2", "3"], trainer_state=None)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message
    assert "z" * 250 not in message  # the completion is cut to its first 200 characters


@pytest.mark.parametrize(
    ("fn", "fragments", "skipped", "count"), RUNTIME_VIOLATIONS, ids=lambda v: getattr(v, "__name__", "")
)
def test_guard_skip_scores_none_and_counts(fn, fragments, skipped, count):
    guarded = GuardedReward(fn, fn.__name__, on_error="skip")
    metrics: dict[str, float] = {}
    assert guarded(COMPLETIONS, log_metric=metrics.__setitem__) == skipped
    assert guarded.error_count == count
    assert metrics == {f"{fn.__name__}/error_rate": pytest.approx(count / 3)}
    copy = pickle.loads(pickle.dumps(guarded))
    assert copy(["fine"]) in ([1.0], [None])


def test_guard_passes_valid_values_through_as_floats():
    guarded = GuardedReward(lambda completions, **kwargs: [1, None, True, 0.5], "mixed")
    assert guarded(["a", "b", "c", "d"]) == [1.0, None, 1.0, 0.5]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_guard_never_skips_a_data_error(on_error):
    with pytest.raises(GoldAnswerError):
        GuardedReward(raises_data_error, "gold", on_error=on_error)(["x"])


def test_guarded_math_accuracy_raises_on_bad_gold_even_when_skipping():
    reward = resolve_reward(RewardSpec(name="math_accuracy", on_error="skip"))
    assert reward(["Answer: 2"], answer=["2"]) == [1.0]
    with pytest.raises(GoldAnswerError, match="banana"):
        reward(["Answer: 2"], answer=["banana"])
