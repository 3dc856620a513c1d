"""The run-time error policy of a reward: `GuardedReward` checks every call and applies `on_error`.

TRL turns a reward's None into NaN and trusts everything else: a NaN, a string or a list one short
would surface far from its cause, or silently skew the advantages. The guard checks that a reward
returned one finite number (bool counts as 0/1) or None per completion, and on a violation or an
exception either raises `RewardRuntimeError` naming the reward and the sample (`on_error="raise"`,
the default) or scores the offending samples None, counts them in `.error_count` and reports the
fraction per call as `<name>/error_rate` through TRL's `log_metric` (`on_error="skip"`).

A `RewardDataError` (a gold answer that cannot be parsed) is a data problem and always propagates.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any, Literal

from .completions import completion_text
from .errors import RewardDataError, RewardRuntimeError

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


class RewardTimeout(Exception):
    """A reward call ran past its `timeout_seconds`."""


_PREVIEW_CHARS = 200
# Threads of reward calls abandoned past their timeout. One still running in native code (torch) when
# the interpreter exits makes the process abort (SIGABRT) instead of exiting with its status; the CLI
# checks `abandoned_calls_running()` and exits without interpreter shutdown then.
_ABANDONED: list[threading.Thread] = []


def abandoned_calls_running() -> bool:
    """Whether a reward call abandoned past its timeout is still running in its thread."""
    return any(thread.is_alive() for thread in _ABANDONED)


_WARNED_EVENTS = 5  # skipped errors logged as warnings per reward; later ones only at debug level

# TRL's callbacks: not per-sample data, and not to be called again while a failure is diagnosed.
_CALLBACK_KWARGS = ("log_metric", "log_extra")


class GuardedReward:
    """`fn` behind the checks and the `on_error` policy; picklable, logged by TRL as `name`."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        on_error: OnError = "raise",
        origin: str | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.fn = fn
        self.__name__ = name
        self.on_error = on_error
        self.origin = origin  # the spec it came from, for messages: "rewards[1] (path ./my_rewards.py:fn)"
        # Wall-clock limit of one call; a call past it is an error (the hung thread is abandoned: Python
        # cannot kill a thread, but the run goes on). None: no limit.
        self.timeout_seconds = timeout_seconds
        self.error_count = 0  # samples scored None because of an error, over this object's life
        self._error_events = 0

    def __repr__(self) -> str:
        return f"GuardedReward({self.fn!r}, name={self.__name__!r}, on_error={self.on_error!r})"

    def __call__(self, completions: list, **kwargs: Any) -> list[float | None]:
        count = len(completions)
        try:
            values = self._call(completions, kwargs)
        except RewardTimeout as exc:
            if self.on_error == "raise":
                raise RewardRuntimeError(
                    f"reward '{self.__name__}' {exc} on a batch of {count}. Fix the reward, raise its "
                    "`timeout_seconds`, or set `on_error: skip` on its spec to score such batches None."
                ) from None
            self._skipped(str(exc), count, count, kwargs)
            return [None] * count
        except RewardDataError:
            raise
        except Exception as exc:
            if self.on_error == "raise":
                raise RewardRuntimeError(self._exception_message(exc, completions, kwargs)) from exc
            self._skipped(f"raised {type(exc).__name__}: {exc}", count, count, kwargs)
            return [None] * count

        try:
            values = list(values)
        except TypeError:
            return self._batch_violation(f"returned {type(values).__name__}, not a list", completions, kwargs)
        if len(values) != count:
            return self._batch_violation(
                f"returned {len(values)} values for {count} completions", completions, kwargs
            )

        scores: list[float | None] = []
        first_problem: str | None = None
        bad = 0
        for index, value in enumerate(values):
            score, problem = _as_score(value)
            if problem is not None:
                message = f"{problem} for sample {index} of {count} ({_preview(completions[index])})"
                if self.on_error == "raise":
                    raise RewardRuntimeError(self._violation_message(message))
                first_problem = first_problem or message
                bad += 1
            scores.append(score)
        if self.on_error == "skip":
            self._skipped(first_problem, bad, count, kwargs)
        return scores

    def _call(self, completions: list, kwargs: dict) -> Any:
        if self.timeout_seconds is None:
            return self.fn(completions=completions, **kwargs)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["values"] = self.fn(completions=completions, **kwargs)
            except BaseException as exc:  # handed back to the calling thread
                box["error"] = exc

        # A daemon thread, so that an abandoned call never blocks the interpreter's exit.
        worker = threading.Thread(target=target, name=f"reward-{self.__name__}", daemon=True)
        worker.start()
        worker.join(self.timeout_seconds)
        if worker.is_alive():
            _ABANDONED.append(worker)
            raise RewardTimeout(f"took longer than its timeout of {self.timeout_seconds:g} s")
        if "error" in box:
            raise box["error"]
        return box["values"]

    def _batch_violation(self, problem: str, completions: list, kwargs: dict) -> list[None]:
        if self.on_error == "raise":
            raise RewardRuntimeError(self._violation_message(problem))
        self._skipped(problem, len(completions), len(completions), kwargs)
        return [None] * len(completions)

    def _skipped(self, problem: str | None, bad: int, count: int, kwargs: dict) -> None:
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and count:
            log_metric(f"{self.__name__}/error_rate", bad / count)
        if not bad:
            return
        self.error_count += bad
        self._error_events += 1
        level = logging.WARNING if self._error_events <= _WARNED_EVENTS else logging.DEBUG
        logger.log(
            level, "reward '%s' %s; %d sample(s) scored None (on_error: skip)", self.__name__, problem, bad
        )

    def _violation_message(self, problem: str) -> str:
        return (
            f"reward '{self.__name__}' {problem}; a reward must return one finite number or None per "
            "completion. Fix the reward, or set `on_error: skip` on its spec to score such samples None."
        )

    def _exception_message(self, exc: Exception, completions: list, kwargs: dict) -> str:
        where = f"on a batch of {len(completions)}"
        culprit = self._first_failing_sample(completions, kwargs)
        if culprit is not None:
            index, _ = culprit
            where = f"on sample {index} of {len(completions)} ({_preview(completions[index])})"
        return (
            f"reward '{self.__name__}' raised {type(exc).__name__}: {exc} {where}. "
            "Fix the reward, or set `on_error: skip` on its spec to score such batches None."
        )

    def _first_failing_sample(self, completions: list, kwargs: dict) -> tuple[int, Exception] | None:
        """Call the reward on one sample at a time to find the first that fails alone.

        Rewards are pure, so this repeats no side effect; it runs only on the way to an error.
        """
        count = len(completions)
        per_sample = {k: v for k, v in kwargs.items() if isinstance(v, (list, tuple)) and len(v) == count}
        shared = {k: v for k, v in kwargs.items() if k not in per_sample and k not in _CALLBACK_KWARGS}
        for index in range(count):
            sample = {k: v[index : index + 1] for k, v in per_sample.items()}
            try:
                self.fn(completions=completions[index : index + 1], **shared, **sample)
            except Exception as exc:
                return index, exc
        return None


def _as_score(value: Any) -> tuple[float | None, str | None]:
    """(the value as a float or None, None) when valid, else (None, what is wrong)."""
    if value is None:
        return None, None
    if isinstance(value, (str, bytes)):
        return None, f"returned {value!r:.60} ({type(value).__name__})"
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None, f"returned {value!r:.60} ({type(value).__name__})"
    if not math.isfinite(score):
        return None, f"returned {score}"
    return score, None


def _preview(completion: Any) -> str:
    try:
        text = completion_text(completion)
    except TypeError:
        text = repr(completion)
    return f"completion: {text[:_PREVIEW_CHARS]!r}" + (" ..." if len(text) > _PREVIEW_CHARS else "")
