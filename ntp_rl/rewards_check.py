"""`ntp-rl rewards check`: score a model's own samples with an rl stage's rewards, before training.

    ntp-rl rewards check recipes/quickstart.yaml --model default --num-prompts 16 --samples 4

A reward that is broken, flat or gameable wastes a whole RL run, and each of these shows within a
minute of sampling. This takes the rl stage's training prompts (its data's train split, shuffled with
the run's seed) and its reward specs, resolved as the stage resolves them; samples completions from
the policy the stage would start from (the recipe's model, plus the stage's init adapter when the run
folder of this config already holds it), chat-templated as in training; and calls every reward as
TRL's GRPOTrainer does, on the whole batch: `reward(prompts=..., completions=[[{"role": "assistant",
"content": text}], ...], completion_ids=..., trainer_state=..., log_extra=..., log_metric=..., **columns)`.

Per reward it reports the mean, std, share of None, samples on which it raised (caught and counted,
never a crash), `math_accuracy`'s parse failures, and the share of prompts whose samples all scored
the same (GRPO's advantage is zero there). It warns about:
- no learning signal: a reward (or the weighted total) that gave every sample the same score;
- errors: a reward that raised or returned an invalid value on some samples;
- hackable: a synthetic degenerate completion (empty, the prompt echoed, `Answer: 0`, one word
  repeated to the length limit) that scores at or above the samples' mean, while some completion
  scores lower (a degenerate completion merely tied with everything at the floor is not flagged).
These are heuristics: a warning is a reason to look, and no warning is no guarantee.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ntp_rl.config import Recipe, RlStage
from ntp_rl.errors import UserError

logger = logging.getLogger(__name__)

# Synthetic completions that no reward should pay for, and how the warnings describe them.
DEGENERATE_COMPLETIONS = {
    "empty": "an empty completion",
    "prompt_echo": "the prompt echoed back",
    "answer_zero": "'Answer: 0' and nothing else",
    "repetition": "one word repeated up to the length limit",
}
TOTAL = "weighted total"
EXAMPLES_SHOWN = 4
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class CheckSettings:
    """What to sample. None for `temperature`/`max_new_tokens` means: as the stage trains."""

    stage: str | None = None
    model: str | None = None  # default: the recipe's model (+ the stage's init adapter if trained)
    num_prompts: int = 16
    samples: int = 4
    temperature: float | None = None  # default: the stage's trainer.temperature, else 1.0
    max_new_tokens: int | None = None  # default: the stage's trainer.max_completion_length, else 64
    batch_size: int = 32


@dataclass(frozen=True)
class Policy:
    base: str  # a model folder or hub id
    adapter: Path | None
    dtype: str
    label: str


# --------------------------------------------------------------------------------------------
# Stage, policy and data


def select_rl_stage(recipe: Recipe, name: str | None) -> tuple[int, RlStage]:
    names = [s.stage_name for s in recipe.stages]
    if name is None:
        rl = [(i, s) for i, s in enumerate(recipe.stages) if isinstance(s, RlStage)]
        if not rl:
            raise UserError(f"the recipe has no rl stage (stages: {names}); rewards check scores an rl stage")
        return rl[0]
    if name not in names:
        raise UserError(f"--stage {name!r}: the recipe has stages {names}")
    index = names.index(name)
    stage = recipe.stages[index]
    if not isinstance(stage, RlStage):
        raise UserError(f"--stage {name!r} is a {stage.kind} stage; rewards check needs an rl stage")
    return index, stage


def choose_policy(recipe: Recipe, index: int, stage: RlStage, recipe_dir: Path, model: str | None) -> Policy:
    """The model to sample from: `--model` (default, tiny, a model, adapter or stage folder, a hub id),
    else the recipe's model with the stage's init adapter when this config's run folder has it."""
    from ntp_rl.models import BUILTIN_MODELS, resolve_model_path
    from ntp_rl.stages.common import ADAPTER_DIR

    if model is None:
        base = resolve_model_path(recipe.model.name_or_path)
        adapter = _trained_init_adapter(recipe, index, stage, recipe_dir, base)
        label = recipe.model.name_or_path + (f" + adapter {adapter}" if adapter else "")
        return Policy(base, adapter, recipe.model.dtype, label)
    if model in BUILTIN_MODELS:
        # The tiny random model runs in float32, as in --smoke.
        return Policy(
            resolve_model_path(model), None, "float32" if model == "tiny" else recipe.model.dtype, model
        )
    path = Path(model).expanduser()
    for adapter in (path / ADAPTER_DIR, path):
        if (adapter / "adapter_config.json").is_file():
            base = _adapter_base(adapter, recipe)
            return Policy(base, adapter, recipe.model.dtype, f"{base} + adapter {adapter}")
    return Policy(resolve_model_path(model), None, recipe.model.dtype, model)


def _trained_init_adapter(
    recipe: Recipe, index: int, stage: RlStage, recipe_dir: Path, base: str
) -> Path | None:
    from ntp_rl.pipeline import choose_run_dir
    from ntp_rl.stages.common import StageContext
    from ntp_rl.stages.rl import init_adapter_dir

    run_dir = choose_run_dir(recipe, new_run=True)  # this config's run folder (looked up, not created)
    ctx = StageContext(
        recipe=recipe, stage=stage, index=index, run_dir=run_dir, base_model_path=base, recipe_dir=recipe_dir
    )
    adapter = init_adapter_dir(ctx)
    if adapter is None:
        return None
    if (adapter / "adapter_config.json").is_file():
        return adapter
    logger.info("the stage starts from %s, which is not trained yet: sampling from the base model", adapter)
    return None


def _adapter_base(adapter: Path, recipe: Recipe) -> str:
    """The adapter's recorded base when that folder exists here, else the recipe's model."""
    from ntp_rl.models import resolve_model_path

    try:
        recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--model: {adapter / 'adapter_config.json'} is not readable JSON ({exc})") from None
    if recorded and Path(recorded).is_dir():
        return recorded
    return resolve_model_path(recipe.model.name_or_path)


def load_policy(policy: Policy, trust_remote_code: bool):
    import torch

    from ntp_rl.dtypes import resolve_dtype
    from ntp_rl.models import check_adapter_weights, load_causal_lm, load_tokenizer

    if policy.adapter is not None:  # before any model loads; peft would unpickle a .bin adapter
        check_adapter_weights(Path(policy.adapter), "--model")
    tokenizer = load_tokenizer(policy.base, trust_remote_code)  # the base's tokenizer, as in training
    model = load_causal_lm(policy.base, resolve_dtype(policy.dtype), trust_remote_code)
    if policy.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(policy.adapter))
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# Calling a reward as TRL does


@dataclass
class Scored:
    values: list[float | None]
    errors: int  # samples on which the reward raised or returned an invalid value
    error_messages: list[str]  # distinct messages, first few
    logged: dict[str, float]  # what the reward reported through log_metric (mean per name)


def score_like_trl(
    reward: Callable[..., Any],
    prompts: list[Any],
    texts: list[str],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
) -> Scored:
    """Call `reward` on the batch as training does (`rewards.scoring.call_reward`); a failing batch is
    re-scored per sample.

    `columns` are the data columns, one value per completion. Exceptions are caught and counted (a
    `RewardDataError`, a problem of the data, is not: it propagates as bad input).
    """
    from ntp_rl.rewards.errors import RewardDataError
    from ntp_rl.rewards.scoring import call_reward

    logged: dict[str, list[float]] = {}

    def log_metric(name: str, value: float) -> None:
        logged.setdefault(name, []).append(float(value))

    def call(part: slice) -> list[float | None]:
        return call_reward(
            reward,
            prompts[part],
            texts[part],
            completion_ids[part],
            {name: column[part] for name, column in columns.items()},
            log_metric=log_metric,
        )

    count = len(texts)
    skipped_before = getattr(reward, "error_count", 0)
    messages: list[str] = []
    try:
        values = call(slice(None))
        errors = 0
    except RewardDataError:
        raise
    except Exception as batch_error:
        values, errors = [], 0
        for index in range(count):
            try:
                values += call(slice(index, index + 1))
            except RewardDataError:
                raise
            except Exception as exc:
                values.append(None)
                errors += 1
                messages.append(_describe(exc))
        if errors == 0:  # it fails on the whole batch only
            values, errors, messages = [None] * count, count, [_describe(batch_error)]
    skipped = getattr(reward, "error_count", 0) - skipped_before  # `on_error: skip` scored these None
    if skipped:
        errors += skipped
        messages.append(f"{skipped} sample(s) scored None by `on_error: skip` (the log says why)")
    distinct = list(dict.fromkeys(messages))[:3]
    return Scored(values, errors, distinct, {k: statistics.fmean(v) for k, v in logged.items()})


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc  # GuardedReward wraps the reward's own error
    return f"{type(cause).__name__}: {cause}"[:300]


# --------------------------------------------------------------------------------------------
# Statistics and heuristics


def summarise(values: list[float | None], group_size: int) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    groups = [values[i : i + group_size] for i in range(0, len(values), group_size)]
    flat = sum(len({v for v in group if v is not None}) <= 1 for group in groups)
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.pstdev(present) if present else None,
        "min": min(present) if present else None,
        "max": max(present) if present else None,
        "none_share": 1 - len(present) / len(values) if values else 0.0,
        "flat_prompt_share": flat / len(groups) if groups else 0.0,
    }


def degenerate_texts(prompt_text: str, tokenizer, max_new_tokens: int) -> dict[str, tuple[str, list[int]]]:
    """Each degenerate completion as (text, completion ids), EOS-terminated like a finished sample,
    except the repetition, which runs into the length limit."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def finished(text: str) -> tuple[str, list[int]]:
        return text, tokenizer(text, add_special_tokens=False)["input_ids"] + eos

    repeated = tokenizer(" ".join(["the"] * max_new_tokens), add_special_tokens=False)["input_ids"]
    repeated = repeated[:max_new_tokens]
    return {
        "empty": finished(""),
        "prompt_echo": finished(prompt_text),
        "answer_zero": finished("Answer: 0"),
        "repetition": (tokenizer.decode(repeated, skip_special_tokens=True), repeated),
    }


def hacks(sampled: list[float | None], degenerate: dict[str, list[float | None]]) -> dict[str, float]:
    """Degenerate kinds whose mean score is at or above the samples' mean and above the floor."""
    present = [v for v in sampled if v is not None]
    if not present:
        return {}
    sampled_mean = statistics.fmean(present)
    everything = present + [v for values in degenerate.values() for v in values if v is not None]
    floor = min(everything)
    found = {}
    for kind, values in degenerate.items():
        scored = [v for v in values if v is not None]
        if not scored:
            continue
        mean = statistics.fmean(scored)
        if mean >= sampled_mean - _TOLERANCE and mean > floor + _TOLERANCE:
            found[kind] = mean
    return found


def find_warnings(report: dict[str, Any]) -> list[dict[str, str]]:
    warnings: list[dict[str, str]] = []

    def warn(kind: str, reward: str, message: str, level: str = "warning") -> None:
        warnings.append({"level": level, "kind": kind, "reward": reward, "message": message})

    rewards = report["rewards"]
    for entry in rewards:
        name, stats = entry["name"], entry["sampled"]
        if entry["errors"]["count"]:
            errors = entry["errors"]
            outcome = "stop the run" if entry["on_error"] == "raise" else "score them None"
            warn(
                "errors",
                name,
                f"reward '{name}' failed on {errors['count']} of {report['num_samples']} samples "
                f"({'; '.join(errors['messages'])}); in training this would {outcome} (on_error: {entry['on_error']})",
            )
        if stats["mean"] is None:
            warn(
                "not_applicable", name, f"reward '{name}' scored None on every sample: it never applies here"
            )
        elif stats["std"] is not None and stats["std"] <= _TOLERANCE:
            warn(
                "no_signal",
                name,
                f"reward '{name}' gave every sample {stats['mean']:.4g}: no learning signal from it on these "
                "prompts (GRPO learns from differences between a prompt's samples). If the model never "
                "succeeds, start from an SFT adapter, use easier data or sample more.",
            )
    total = report["total"]
    if total["sampled"]["mean"] is not None and total["sampled"]["flat_prompt_share"] >= 1.0:
        warn(
            "no_signal",
            TOTAL,
            "every prompt's samples got the same weighted total reward: all GRPO advantages would be zero",
        )
    for kind, mean in total["hackable_by"].items():
        payers = [e["name"] for e in rewards if kind in e["hackable_by"]]
        warn(
            "hackable",
            TOTAL,
            f"the rewards may be hackable: {DEGENERATE_COMPLETIONS[kind]} ({kind}) earns a weighted total of "
            f"{mean:.4g}, at or above the samples' mean {total['sampled']['mean']:.4g}"
            + (f"; paid by {', '.join(repr(p) for p in payers)}" if payers else ""),
        )
    for entry in rewards:
        for kind, mean in entry["hackable_by"].items():
            if kind in total["hackable_by"]:
                continue
            warn(
                "hackable",
                entry["name"],
                f"reward '{entry['name']}' alone pays {DEGENERATE_COMPLETIONS[kind]} ({kind}) {mean:.4g}, at or "
                f"above its samples' mean {entry['sampled']['mean']:.4g}; the weighted total does not, as "
                "other rewards outweigh it",
                level="note",
            )
    return warnings


# --------------------------------------------------------------------------------------------
# The check


def check_rewards(recipe: Recipe, recipe_path: Path, settings: CheckSettings) -> dict[str, Any]:
    """Sample, score and judge; returns the report (a JSON-ready dict). Bad input raises UserError."""
    from ntp_rl.data import load_rows, to_prompt_format
    from ntp_rl.generation import Decoding, generate
    from ntp_rl.rewards.math import math_accuracy, score_math_answer
    from ntp_rl.rewards.scoring import WITHHELD_COLUMNS, weighted_sum
    from ntp_rl.stages.rl import RL_DEFAULTS, resolve_stage_rewards

    recipe_dir = recipe_path.resolve().parent
    index, stage = select_rl_stage(recipe, settings.stage)
    where = f"stages[{index}] ({stage.stage_name})"
    data = recipe.stage_data(stage)
    rows = to_prompt_format(load_rows(data, data.train_split, recipe.run.seed, recipe_dir), where)
    rows = rows.shuffle(seed=recipe.run.seed).select(range(min(settings.num_prompts, len(rows))))
    from ntp_rl.pipeline import choose_run_dir

    # A reward model named by its stage is read from this config's run folder (it must have run).
    run_dir = choose_run_dir(recipe, new_run=True)
    rewards, weights = resolve_stage_rewards(
        stage, index, rows.column_names, recipe_dir, check_data=rows, recipe=recipe, run_dir=run_dir
    )

    trainer = {**RL_DEFAULTS, **stage.trainer}
    temperature = settings.temperature if settings.temperature is not None else float(trainer["temperature"])
    max_new_tokens = settings.max_new_tokens or int(trainer["max_completion_length"])
    decoding = Decoding(
        num_samples=settings.samples,
        temperature=temperature,
        top_p=float(trainer.get("top_p", 1.0)),
        max_new_tokens=max_new_tokens,
        seed=recipe.run.seed,
    )
    policy = choose_policy(recipe, index, stage, recipe_dir, settings.model)
    logger.info("sampling %d x %d completions from %s", len(rows), settings.samples, policy.label)
    model, tokenizer = load_policy(policy, recipe.model.trust_remote_code)
    prompts = list(rows["prompt"])
    generations = generate(model, tokenizer, prompts, decoding, settings.batch_size)

    # One entry per completion, prompt-major, as TRL's batch: each row repeated `samples` times.
    k = settings.samples
    batch_prompts = [p for p in prompts for _ in range(k)]
    ids = [ids for g in generations for ids in g.token_ids]
    texts = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]  # as TRL decodes
    names = [c for c in rows.column_names if c not in WITHHELD_COLUMNS]
    row_columns = {c: list(rows[c]) for c in names}
    columns = {c: [v for v in values for _ in range(k)] for c, values in row_columns.items()}

    scored = [score_like_trl(r, batch_prompts, texts, ids, columns) for r in rewards]
    sampled_total = weighted_sum([s.values for s in scored], weights)

    # Degenerate completions: one of each kind per prompt.
    per_prompt = [degenerate_texts(p[-1]["content"], tokenizer, max_new_tokens) for p in prompts]
    degenerate: dict[str, list[list[float | None]]] = {}
    for kind in DEGENERATE_COMPLETIONS:
        kind_texts = [d[kind][0] for d in per_prompt]
        kind_ids = [d[kind][1] for d in per_prompt]
        degenerate[kind] = [
            score_like_trl(r, prompts, kind_texts, kind_ids, row_columns).values for r in rewards
        ]
    degenerate_total = {kind: weighted_sum(v, weights) for kind, v in degenerate.items()}

    entries = []
    for r_index, (reward, weight, result) in enumerate(zip(rewards, weights, scored, strict=True)):
        deg = {kind: values[r_index] for kind, values in degenerate.items()}
        entry: dict[str, Any] = {
            "name": reward.__name__,
            "weight": weight,
            "on_error": getattr(reward, "on_error", "raise"),
            "sampled": summarise(result.values, k),
            "errors": {"count": result.errors, "messages": result.error_messages},
            "parse_failures": None,
            "degenerate": {kind: _mean(v) for kind, v in deg.items()},
            "hackable_by": hacks(result.values, deg),
            "logged_metrics": result.logged,
        }
        if getattr(reward, "fn", None) is math_accuracy and "answer" in columns:
            verdicts = [score_math_answer(t, str(g)) for t, g in zip(texts, columns["answer"], strict=True)]
            reasons: dict[str, int] = {}
            for v in verdicts:
                if v.parse_failed:
                    reasons[v.failure or "unknown"] = reasons.get(v.failure or "unknown", 0) + 1
            failed = sum(reasons.values())
            entry["parse_failures"] = {"count": failed, "share": failed / len(verdicts), "reasons": reasons}
        entries.append(entry)

    samples = []
    for i, text in enumerate(texts):
        samples.append(
            {
                "prompt_index": i // k,
                "prompt": prompts[i // k][-1]["content"],
                "completion": text,
                "num_tokens": len(ids[i]),
                "scores": {e["name"]: s.values[i] for e, s in zip(entries, scored, strict=True)},
                "total": sampled_total[i],
            }
        )
    report: dict[str, Any] = {
        "recipe": str(recipe_path),
        "stage": stage.stage_name,
        "model": policy.label,
        "settings": {**asdict(settings), "temperature": temperature, "max_new_tokens": max_new_tokens},
        "num_prompts": len(rows),
        "num_samples": len(texts),
        "rewards": entries,
        "total": {
            "sampled": summarise(sampled_total, k),
            "degenerate": {kind: _mean(v) for kind, v in degenerate_total.items()},
            "hackable_by": hacks(sampled_total, degenerate_total),
        },
        "examples": [samples[p * k] for p in range(min(EXAMPLES_SHOWN, len(rows)))],
        "samples": samples,
    }
    report["warnings"] = find_warnings(report)
    return report


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


# --------------------------------------------------------------------------------------------
# Output


def write_json(report: dict[str, Any], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--json {path}: cannot write ({exc.strerror})") from None


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render(report: dict[str, Any], console) -> None:
    """Print the report as rich tables, then the warnings."""
    from rich.markup import escape
    from rich.table import Table

    settings = report["settings"]
    console.print(
        f"[bold]rewards check[/bold]: stage [cyan]{escape(report['stage'])}[/cyan] of "
        f"{escape(report['recipe'])}; model {escape(report['model'])}; {report['num_prompts']} prompts x "
        f"{settings['samples']} samples, temperature {settings['temperature']}, "
        f"max {settings['max_new_tokens']} new tokens"
    )
    table = Table(title="rewards on the model's samples")
    for column in ("reward", "weight", "mean", "std", "None", "parse fail", "errors", "flat prompts"):
        table.add_column(
            column, justify="left" if column == "reward" else "right", no_wrap=column == "reward"
        )
    for entry in report["rewards"]:
        stats, parse = entry["sampled"], entry["parse_failures"]
        table.add_row(
            entry["name"],
            _number(entry["weight"]),
            _number(stats["mean"]),
            _number(stats["std"]),
            _share(stats["none_share"]),
            "-" if parse is None else f"{parse['count']} ({_share(parse['share'])})",
            str(entry["errors"]["count"]),
            _share(stats["flat_prompt_share"]),
        )
    total = report["total"]["sampled"]
    table.add_row(
        TOTAL, "", _number(total["mean"]), _number(total["std"]), _share(total["none_share"]), "", "",
        _share(total["flat_prompt_share"]), style="bold",
    )  # fmt: skip
    console.print(table)

    degenerate = Table(title="degenerate completions (mean score over the prompts)")
    degenerate.add_column("completion", no_wrap=True)
    for entry in report["rewards"]:
        degenerate.add_column(entry["name"], justify="right")
    degenerate.add_column(TOTAL, justify="right")
    for kind in DEGENERATE_COMPLETIONS:
        cells = [_number(e["degenerate"][kind]) for e in report["rewards"]]
        degenerate.add_row(kind, *cells, _number(report["total"]["degenerate"][kind]))
    console.print(degenerate)

    examples = Table(title="example completions", show_lines=True)
    examples.add_column("prompt", ratio=1)
    examples.add_column("completion", ratio=2)
    examples.add_column("scores", no_wrap=True)
    for sample in report["examples"]:
        scores = "\n".join(f"{name}={_number(value)}" for name, value in sample["scores"].items())
        examples.add_row(_clip(sample["prompt"], 160), _clip(sample["completion"], 300), scores)
    console.print(examples)

    if not report["warnings"]:
        console.print("[green]no warnings[/green]")
    for item in report["warnings"]:
        style = "yellow" if item["level"] == "warning" else "cyan"
        console.print(f"[{style}]{item['level']}[/{style}] ({item['kind']}) {escape(item['message'])}")


def _clip(text: str, limit: int) -> str:
    from rich.markup import escape

    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return escape(text)
