"""The registry of built-in rewards and the resolver that turns a recipe's reward spec into a callable.

A recipe lists rewards as `{name|path, weight, kwargs, on_error}`:

    - {name: math_accuracy, weight: 1.0}                               # a key of BUILTIN_REWARDS
    - {path: my_pkg.rewards:brevity, weight: 0.2, kwargs: {max_words: 120}}   # an importable attribute
    - {path: ./my_rewards.py:brevity}                                  # a file: the recipe's folder, then cwd
    - {reward_model: runs/x/reward_model, kwargs: {normalize: batch}}  # a learned reward model (learned.py)

A spec is `ntp_rl.config.RewardSpecSettings`, the one reward-spec model (a recipe's, validated with
the recipe); `RewardSpec` is the same model built in code. `resolve_reward` imports the target,
instantiates a class with `kwargs` (or binds `kwargs` to a function), checks that TRL can call it
and that it pickles, and returns it inside a `GuardedReward` (the run-time error policy). Every problem is a `RewardSpecError` naming the spec and what to do,
raised when the recipe is loaded, not mid-training. `check_reward_columns` checks the data columns
a reward asks for, once the data is known.

Plug-ins are code: a spec's module or file is imported and run with the user's rights.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import pickle
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from ntp_rl.config import RewardSpecSettings, describe_reward_source

from .errors import RewardSpecError
from .format import format_reward
from .guard import GuardedReward
from .length import SoftOverlongPenalty
from .math import math_accuracy
from .scoring import WITHHELD_COLUMNS
from .warmth import review_warmth

# The one registry of built-in rewards: a recipe's `name:` is a key here; anything else is a `path:`.
# A class is instantiated with the spec's kwargs; a function gets them bound.
BUILTIN_REWARDS: dict[str, Callable[..., Any] | type] = {
    "math_accuracy": math_accuracy,
    "format": format_reward,
    "soft_overlong_penalty": SoftOverlongPenalty,
    "review_warmth": review_warmth,
}

# The keyword arguments TRL (1.x GRPOTrainer and RLOOTrainer) passes to every reward besides the
# data columns; `environments` only when the trainer has environments.
TRL_REWARD_KWARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments"}
)


class RewardSpec(RewardSpecSettings):
    """A reward spec built from Python code: `ntp_rl.config.RewardSpecSettings`, the one reward-spec
    model (fields, defaults and checks are its own), with a failed check raised as `RewardSpecError`.

    Exactly one of `name` (a key of `BUILTIN_REWARDS`), `path` (`package.module:attr` or
    `path/to/file.py:attr`) or `reward_model` (a reward model folder or hub id); `weight`, `kwargs`,
    `on_error` ("raise" or "skip"), `timeout_seconds` (default 120) and `gold` as in a recipe.
    """

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            source = describe_reward_source(data.get("name"), data.get("path"), data.get("reward_model"))
            problems = "; ".join(
                (f"{'.'.join(str(part) for part in error['loc'])}: " if error["loc"] else "")
                + error["msg"].removeprefix("Value error, ")
                for error in exc.errors()
            )
            raise RewardSpecError(f"reward spec ({source}): {problems}") from None


def resolve_reward(
    spec: RewardSpecSettings,
    base_dir: Path | None = None,
    *,
    where: str = "reward",
    available_columns: Iterable[str] | None = None,
    unbuilt_reward_models: frozenset[str] = frozenset(),
) -> GuardedReward:
    """The spec's reward, checked and inside its `GuardedReward`.

    `where` names the spec in messages (e.g. "stages.rl.rewards[1]"); `base_dir` is the recipe's
    folder, against which relative file paths are tried first; `available_columns`, when known,
    are checked with `check_reward_columns`. `unbuilt_reward_models`: reward model folders that an
    earlier stage of the run will write, accepted before they exist.
    """
    label = f"{where} ({spec.describe()})"
    if spec.reward_model is not None:
        from .learned import LearnedReward, resolve_reward_model_path

        if "model" in spec.kwargs:
            raise RewardSpecError(f"{label}: kwargs cannot set `model`; the spec's reward_model names it")
        folder = resolve_reward_model_path(spec.reward_model, base_dir, label, unbuilt_reward_models)
        reward = _bind_settings(LearnedReward, {"model": folder, **spec.kwargs}, label)
    else:
        target = _load_target(spec, base_dir, label)
        reward = _bind_settings(target, spec.kwargs, label)
    _check_signature(reward, label)
    guarded = GuardedReward(
        reward, _callable_name(reward), spec.on_error, origin=label, timeout_seconds=spec.timeout_seconds
    )
    try:
        pickle.loads(pickle.dumps(guarded))
    except Exception as exc:
        raise RewardSpecError(
            f"{label}: the reward does not pickle ({type(exc).__name__}: {exc}); TRL may send rewards to other "
            "processes, so define it at module level as a function or a callable class (no lambda or closure)"
        ) from exc
    if available_columns is not None:
        check_reward_columns(guarded, available_columns)
    return guarded


def resolve_rewards(
    specs: Sequence[RewardSpecSettings],
    base_dir: Path | None = None,
    *,
    where: str = "rewards",
    available_columns: Iterable[str] | None = None,
    unbuilt_reward_models: frozenset[str] = frozenset(),
) -> list[GuardedReward]:
    """Resolve a recipe's reward list; a name used twice gets a suffix (`brevity_2`) so TRL logs both."""
    columns = None if available_columns is None else list(available_columns)
    rewards: list[GuardedReward] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(specs):
        reward = resolve_reward(
            spec,
            base_dir,
            where=f"{where}[{index}]",
            available_columns=columns,
            unbuilt_reward_models=unbuilt_reward_models,
        )
        seen[reward.__name__] = seen.get(reward.__name__, 0) + 1
        if seen[reward.__name__] > 1:
            reward.__name__ = f"{reward.__name__}_{seen[reward.__name__]}"
            if spec.reward_model is not None:  # a LearnedReward logs its raw mean under its own name
                reward.fn.__name__ = reward.__name__
        rewards.append(reward)
    return rewards


def check_reward_columns(
    reward: Callable[..., Any], available_columns: Iterable[str], *, where: str | None = None
) -> None:
    """Raise `RewardSpecError` if the reward needs a data column the data does not have.

    A reward needs every parameter it names without a default, other than TRL's own arguments
    (`completions`, `prompts`, `completion_ids`, `trainer_state`, `log_extra`, `log_metric`).
    Keyword arguments bound from the spec must not share a name with a column: TRL would pass the
    column in their place.
    """
    inner = reward.fn if isinstance(reward, GuardedReward) else reward
    label = where or getattr(reward, "origin", None) or f"reward '{_callable_name(inner)}'"
    available = set(available_columns) - WITHHELD_COLUMNS
    try:
        parameters = inspect.signature(inner).parameters.values()
    except (TypeError, ValueError):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    needed = [
        p.name
        for p in parameters
        if p.kind in named and p.default is p.empty and p.name not in TRL_REWARD_KWARGS
    ]
    for column in needed:
        if column in available:
            continue
        hint = (
            " (TRL passes the prompt as `prompts`)"
            if column == "prompt"
            else _did_you_mean(column, available)
        )
        raise RewardSpecError(
            f"{label}: the reward needs the data column '{column}', which the data does not have "
            f"(columns: {', '.join(sorted(available)) or 'none'}){hint}. Add or rename the column (the data's "
            "column map), or give the parameter a default"
        )
    bound = inner.keywords if isinstance(inner, functools.partial) else {}
    clashes = sorted(set(bound) & available)
    if clashes:
        raise RewardSpecError(
            f"{label}: kwargs {', '.join(clashes)} share a name with data columns, and TRL would pass the column "
            "instead; rename the reward's parameter or the column"
        )


# --- resolution steps --------------------------------------------------------------------------


def _load_target(spec: RewardSpecSettings, base_dir: Path | None, label: str) -> Any:
    if spec.name is not None:
        if spec.name in BUILTIN_REWARDS:
            return BUILTIN_REWARDS[spec.name]
        hint = _did_you_mean(spec.name, BUILTIN_REWARDS)
        if not hint and ":" in spec.name:
            hint = " (to import a reward, write it as `path:` instead of `name:`)"
        raise RewardSpecError(
            f"{label}: unknown built-in reward '{spec.name}'{hint}. Built-in rewards: "
            f"{', '.join(BUILTIN_REWARDS)}; any other reward is named by `path: package.module:attr` or "
            "`path: path/to/file.py:attr`"
        )

    source, _, attribute = spec.path.rpartition(":")
    if not source or not attribute:
        raise RewardSpecError(
            f"{label}: a reward path is `package.module:attr` or `path/to/file.py:attr`, "
            f"with the attribute after a colon; got '{spec.path}'"
        )
    if source.endswith(".py") or "/" in source or "\\" in source:
        module = _load_file(source, base_dir, label)
    else:
        module = _import_module(source, base_dir, label)

    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None))]
            raise RewardSpecError(
                f"{label}: '{source}' has no attribute '{attribute}'{_did_you_mean(part, names)}. "
                f"Its public callables: {', '.join(names) or 'none'}"
            )
        target = getattr(target, part)
    return target


def _import_module(module_name: str, base_dir: Path | None, label: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            hint = ""
            as_file = module_name.replace(".", "/") + ".py"
            if any((folder / as_file).is_file() for folder in (base_dir, Path.cwd()) if folder is not None):
                hint = f" (a file of that name exists: write the path as `./{as_file}:...`)"
            raise RewardSpecError(
                f"{label}: no module named '{module_name}'{hint}. Check the spelling and that its package is "
                "installed in this environment, or name the reward by file (`path/to/file.py:attr`)"
            ) from exc
        raise RewardSpecError(
            f"{label}: importing '{module_name}' failed because it imports '{exc.name}', which is not installed"
        ) from exc
    except Exception as exc:
        raise RewardSpecError(
            f"{label}: importing '{module_name}' raised {type(exc).__name__}: {exc}"
        ) from exc


def _load_file(file_text: str, base_dir: Path | None, label: str) -> ModuleType:
    """Import a file as a module registered in sys.modules, so its rewards pickle in this process."""
    relative = Path(file_text).expanduser()
    if relative.is_absolute():
        candidates = [relative]
    else:
        candidates = ([Path(base_dir) / relative] if base_dir is not None else []) + [Path.cwd() / relative]
    file = next((c.resolve() for c in candidates if c.is_file()), None)
    if file is None:
        raise RewardSpecError(
            f"{label}: file not found (looked for {', '.join(str(c) for c in candidates)}); a relative path is "
            "read from the recipe's folder, then from the current folder"
        )
    stem = re.sub(r"\W", "_", file.stem)
    module_name = f"_ntp_rl_reward_file_{stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    if module_spec is None or module_spec.loader is None:
        raise RewardSpecError(f"{label}: {file} cannot be imported as Python source")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[module_name]
        if not isinstance(exc, Exception):
            raise
        raise RewardSpecError(f"{label}: importing {file} raised {type(exc).__name__}: {exc}") from exc
    return module


def _bind_settings(target: Any, kwargs: dict[str, Any], label: str) -> Callable[..., Any]:
    """A class instantiated with the spec's kwargs, or a callable with them bound (functools.partial)."""
    if inspect.isclass(target):
        try:
            inspect.signature(target).bind(**kwargs)
        except TypeError as exc:
            raise RewardSpecError(
                f"{label}: kwargs {kwargs} do not fit {target.__name__}{_signature_text(target)}: {exc}"
            ) from exc
        except ValueError:
            pass  # no signature to check against; the call below reports a mismatch
        try:
            instance = target(**kwargs)
        except Exception as exc:
            raise RewardSpecError(
                f"{label}: {target.__name__}(**kwargs) raised {type(exc).__name__}: {exc}; fix the kwargs"
            ) from exc
        if not callable(instance):
            raise RewardSpecError(
                f"{label}: instances of {target.__name__} are not callable; define __call__"
            )
        return instance

    if not callable(target):
        raise RewardSpecError(
            f"{label}: '{_callable_name(target)}' is a {type(target).__name__}, not a function or class"
        )
    if not kwargs:
        return target
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return functools.partial(target, **kwargs)
    settable = {
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name not in TRL_REWARD_KWARGS
    }
    for key in kwargs:
        if key not in settable:
            # A function takes **kwargs by contract, so a misspelt setting would vanish into it unread.
            raise RewardSpecError(
                f"{label}: '{key}' in kwargs is not a parameter of {_callable_name(target)}"
                f"{_signature_text(target)}{_did_you_mean(key, settable)}; kwargs must name its parameters"
            )
    return functools.partial(target, **kwargs)


def _check_signature(reward: Callable[..., Any], label: str) -> None:
    """TRL calls `reward(prompts=..., completions=..., completion_ids=..., **columns, **callbacks)`."""
    call = reward if inspect.isfunction(reward) or isinstance(reward, functools.partial) else reward.__call__
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(getattr(call, "func", None)):
        raise RewardSpecError(f"{label}: async rewards are not supported; make it a plain function")
    try:
        signature = inspect.signature(reward)
    except (TypeError, ValueError):
        return  # a builtin without a signature: TRL's call is the test
    parameters = list(signature.parameters.values())
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        raise RewardSpecError(
            f"{label}: the reward's signature {signature} has no **kwargs; TRL passes prompts, completion_ids, "
            "trainer_state, log_extra, log_metric and every data column by keyword, so declare "
            "`def reward(completions, <columns it needs>, **kwargs)`"
        )
    for p in parameters:
        if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty:
            raise RewardSpecError(
                f"{label}: parameter '{p.name}' is positional-only, but TRL passes everything by keyword; "
                "remove the '/' from the signature"
            )
    positional = [p for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    if (
        positional
        and positional[0].default is positional[0].empty
        and positional[0].name not in TRL_REWARD_KWARGS
    ):
        raise RewardSpecError(
            f"{label}: the first parameter is '{positional[0].name}', but TRL passes the completions as "
            "`completions=...`; name it `completions`"
        )


# --- helpers -----------------------------------------------------------------------------------


def _callable_name(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _signature_text(fn: Any) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
