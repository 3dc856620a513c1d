"""Eval suites: `eval/<suite>.yaml` -> one typed, validated `EvalSuite`, and where suites and metrics live.

A suite says what to evaluate on and how: the data (the recipe's own `DataSettings`: a source, a
column map, an answer pattern), the split and number of items, the decoding (greedy and/or n
samples at a temperature), the scorers (reward specs, resolved by the same code that scored
training), the metric modules (local `evaluate` modules), and the extra measurements (KL to the
base, NLL of reference text). Unknown keys and bad values are `UserError`s naming their key path
(`generation.temprature: unknown key; did you mean temperature?`).

Where files are found. `eval/` is not a Python package (no module may import as a bare `eval`): its
files are read by path. A suite path is tried relative to the given folders (a recipe's folder),
then the current folder, then the bundled copy: `eval/` of the source tree in a clone or an editable
install, `ntp_rl/_bundled_eval/` in an installed wheel (see `[tool.setuptools]` in pyproject.toml).
A metric named by `name:` is `metrics/<name>/` beside the suite file, else in the bundled copy.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

import ntp_rl
from ntp_rl.config import (
    DataSettings,
    ExtraSplit,
    RewardSpecSettings,
    StrictModel,
    _suggest,
    format_path,
    model_at,
    read_yaml,
    unique_extra_splits,
)
from ntp_rl.errors import UserError
from ntp_rl.probe_settings import ProbeSettings

SUITE_DIR_NAME = "eval"
METRICS_DIR_NAME = "metrics"
BUNDLED_DIR_NAME = "_bundled_eval"  # inside the installed package (wheels); see pyproject.toml
MODES = ("greedy", "sampled")


class GenerationSettings(StrictModel):
    """How completions are drawn. The same settings and seeds serve every checkpoint."""

    greedy: bool = True
    # Samples per prompt at `temperature` for sampled pass@1, pass@k and maj@k (0 = greedy only).
    num_samples: int = Field(4, ge=0)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, gt=0)
    seed: int = 1234
    # Sequences per generate() call (prompts x samples).
    batch_size: int = Field(32, gt=0)
    # Checkpoint labels that also get the sampled decoding; default (None): every one. Greedy runs
    # for all. E.g. [sft, rl] skips the base's samples, which are often the longest to generate.
    sampled_checkpoints: list[str] | None = None
    # Generate from a copy with the adapter merged into the weights (faster on CPU; weights rounded
    # once to the model dtype); false generates through the unmerged LoRA layers.
    merge_adapters: bool = True

    @model_validator(mode="after")
    def _something_to_do(self) -> GenerationSettings:
        if not self.greedy and self.num_samples == 0:
            raise ValueError("greedy is false and num_samples is 0: nothing to generate")
        return self


class MetricSpec(StrictModel):
    """A metric module: `name` (a folder `metrics/<name>/`) or `path` (a folder or .py file)."""

    name: str | None = None
    path: str | None = None
    # Decoding modes the metric is computed on.
    modes: list[Literal["greedy", "sampled"]] = Field(default_factory=lambda: list(MODES))
    # Keyword arguments of the module's compute() (e.g. `ks: [1, 4]` for pass_at_k).
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> MetricSpec:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of `name` (a folder under metrics/) or `path`")
        return self

    @property
    def label(self) -> str:
        return self.name or Path(str(self.path)).stem


class ReferenceNllSettings(StrictModel):
    """Per-token NLL of reference responses (e.g. SFT targets) given their prompts."""

    column: str = "solution"
    max_examples: int | None = Field(64, gt=0)


class KlSettings(StrictModel):
    """KL(checkpoint || base) per token, on the checkpoint's own completions (adapter checkpoints only).

    It costs two forward passes (adapter on, adapters off) over each scored completion and its prompt,
    more than generating it, so a subset is scored: the first `max_examples` items and the first
    `samples_per_item` of each item's samples (the sampled completions when there are any, else the
    greedy ones). A few thousand tokens give a tight interval.
    """

    max_examples: int | None = Field(64, gt=0)
    samples_per_item: int = Field(1, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {} if value is True else value


class EvalSuite(StrictModel):
    name: str = "suite"
    description: str = ""
    data: DataSettings = Field(default_factory=DataSettings)
    # Seed of synthetic data (the recipe's run.seed plays this part in a run).
    data_seed: int = 42
    split: str = "test"
    max_examples: int | None = Field(200, gt=0)
    # Further splits of the same data, each evaluated like `split` (same checkpoints, decoding, scorers
    # and metrics; no KL, NLL or probes) and reported beside it, paired comparisons included:
    # [test_phrasings] or [{split: test_phrasings, max_examples: 160}] (None = `max_examples`).
    extra_splits: list[ExtraSplit] = Field(default_factory=list)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    # How a completion's final answer is read and checked for accuracy, pass@k, maj@k and
    # extraction failures: `math` is `score_math_answer`, the check behind the math_accuracy reward.
    # `none`: no answer to check (a task such as synthetic:reviews, with no `answer` column): the
    # scorers are the measure, a `gold: true` one the reference that ranking agreement compares with,
    # and the metric modules default to none (they read the verdicts).
    answer_check: Literal["math", "none"] = "math"
    # Rewards whose mean per checkpoint is reported: reward specs, exactly as in a recipe's rl stage.
    scorers: list[RewardSpecSettings] = Field(
        default_factory=lambda: [RewardSpecSettings(name="math_accuracy")]
    )
    metrics: list[MetricSpec] = Field(default_factory=lambda: default_metrics())
    # KL(checkpoint || its base with adapters disabled), per token, on the checkpoint's completions
    # (`true` = the defaults, `null` or `false` = skip).
    kl_to_base: KlSettings | None = Field(default_factory=KlSettings)
    # Checkpoints (labels) that the other adapter checkpoints on the same base are also measured
    # against: KL(checkpoint || that one) per token on the checkpoint's own completions, on the
    # subset `kl_to_base` sets (its defaults when it is off). E.g. [sft]: how far RL moved from the
    # SFT policy it started from, the KL that RLHF's penalty holds down (reported as `kl_to_sft`).
    kl_to: list[str] = Field(default_factory=list)
    reference_nll: ReferenceNllSettings | None = Field(default_factory=ReferenceNllSettings)
    # Sequences per forward pass for KL and NLL (the logits over the vocabulary dominate memory).
    score_batch_size: int = Field(8, gt=0)
    # Examples of each kind of flip (wrong->right, right->wrong) kept in the report.
    flip_examples: int = Field(3, ge=0)
    # Instruments beyond next-token prediction (ntp_rl/probe_settings.py), reported as `beyond_ntp`:
    # {future: {k: 3}, answer: true, rhyme: true, credit: {texts: 8}}, or `true` for all; off when null.
    probes: ProbeSettings | None = None

    @field_validator("kl_to_base", "probes", mode="before")
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        return None if value is False else value

    @field_validator("kl_to")
    @classmethod
    def _kl_to_checkpoints(cls, value: list[str]) -> list[str]:
        if "base" in value:
            raise ValueError("'base' is measured by `kl_to_base`; list only adapter checkpoints here")
        if len(set(value)) != len(value):
            raise ValueError(f"{value}: a checkpoint is listed twice")
        return value

    @field_validator("extra_splits")
    @classmethod
    def _extra_splits_differ(cls, value: list[ExtraSplit], info: ValidationInfo) -> list[ExtraSplit]:
        main = info.data.get("split")
        if any(extra.split == main for extra in value):
            raise ValueError(f"{main!r} is the main split (`split`) already")
        return unique_extra_splits(value)

    @model_validator(mode="after")
    def _no_verdict_metrics_without_answers(self) -> EvalSuite:
        if self.answer_check == "none" and "metrics" not in self.model_fields_set:
            self.metrics = []
        return self

    @field_validator("metrics")
    @classmethod
    def _unique_metrics(cls, value: list[MetricSpec]) -> list[MetricSpec]:
        labels = [m.label for m in value]
        duplicated = sorted({label for label in labels if labels.count(label) > 1})
        if duplicated:
            raise ValueError(f"metric(s) {duplicated} listed twice")
        return value


def default_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(name="accuracy"),
        MetricSpec(name="pass_at_k", modes=["sampled"]),
        MetricSpec(name="maj_at_k", modes=["sampled"]),
        MetricSpec(name="extraction_failure_rate"),
    ]


# --------------------------------------------------------------------------------------------
# Where suites and metric modules are found


def bundled_eval_dir() -> Path:
    """The shipped `eval/` folder: the source tree's (clone, editable install) or the wheel's copy."""
    package = Path(ntp_rl.__file__).resolve().parent
    for candidate in (package / BUNDLED_DIR_NAME, package.parent / SUITE_DIR_NAME):
        if (candidate / METRICS_DIR_NAME).is_dir():
            return candidate
    raise UserError(
        f"the bundled eval suites are missing (looked in {package / BUNDLED_DIR_NAME} and "
        f"{package.parent / SUITE_DIR_NAME}); reinstall ntp-rl"
    )


def bundled_suites() -> list[str]:
    try:
        return sorted(p.name for p in bundled_eval_dir().glob("*.yaml"))
    except UserError:
        return []


def resolve_suite_path(text: str, base_dirs: typing.Sequence[Path] = ()) -> Path:
    """A suite file: relative to `base_dirs`, then the current folder, then the bundled `eval/`."""
    path = Path(text).expanduser()
    if path.is_absolute():
        if path.is_file():
            return path
        raise UserError(f"suite {text}: no such file")
    candidates = [Path(base) / path for base in base_dirs] + [Path.cwd() / path]
    try:
        bundled = bundled_eval_dir()
        parts = path.parts[1:] if path.parts and path.parts[0] == SUITE_DIR_NAME else path.parts
        tail = Path(*parts) if parts else path
        candidates += [bundled / tail]
        if tail.suffix == "":
            candidates += [bundled / f"{tail}.yaml"]
    except UserError:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = ", ".join(f"eval/{name}" for name in bundled_suites()) or "none"
    raise UserError(
        f"suite {text}: not found (looked in {', '.join(str(c) for c in candidates)}). "
        f"Bundled suites: {known}"
    )


def resolve_metric_path(spec: MetricSpec, suite_dir: Path | None, where: str) -> Path:
    """The folder or .py file of a metric module (evaluate.load takes either)."""
    if spec.path is not None:
        path = Path(spec.path).expanduser()
        candidates = (
            [path] if path.is_absolute() else ([suite_dir / path] if suite_dir else []) + [Path.cwd() / path]
        )
        for candidate in candidates:
            if candidate.is_file() and candidate.suffix == ".py":
                return candidate
            if candidate.is_dir() and (candidate / f"{candidate.name}.py").is_file():
                return candidate
        raise UserError(
            f"{where}.path {spec.path!r}: no metric module there (looked in "
            f"{', '.join(str(c) for c in candidates)}); give a .py file or a folder <name>/ holding <name>.py"
        )
    folders = ([suite_dir / METRICS_DIR_NAME] if suite_dir else []) + [bundled_eval_dir() / METRICS_DIR_NAME]
    for folder in folders:
        candidate = folder / str(spec.name)
        if (candidate / f"{spec.name}.py").is_file():
            return candidate
    known = sorted({p.name for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_dir()})
    raise UserError(
        f"{where}.name {spec.name!r}: unknown metric{_suggest(str(spec.name), known)} "
        f"(available: {', '.join(known) or 'none'}); or give `path:` to your own evaluate module"
    )


# --------------------------------------------------------------------------------------------
# Loading and validation


def _validation_message(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        path = format_path(loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            owner = model_at(loc, EvalSuite)
            hint = _suggest(str(loc[-1]), owner.model_fields) if owner else ""
            lines.append(f"{path}: unknown key{hint}")
        elif item["type"] == "missing":
            lines.append(f"{path}: {item['msg']}")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {msg} (got {item.get('input')!r})")
    return f"{source}: invalid eval suite:\n  " + "\n  ".join(lines)


def validate_suite(raw: Any, source: str) -> EvalSuite:
    if not isinstance(raw, dict):
        raise UserError(
            f"{source}: an eval suite is a YAML mapping (data, split, generation, scorers, metrics)"
        )
    try:
        return EvalSuite.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_validation_message(exc, source)) from None


def load_suite(
    text: str | Path, overrides: typing.Sequence[str] = (), base_dirs: typing.Sequence[Path] = ()
) -> tuple[EvalSuite, Path]:
    """Find, read, override (`a.b=value`, as for recipes) and validate a suite; returns it and its file."""
    from ntp_rl.config import apply_override

    path = resolve_suite_path(str(text), base_dirs)
    raw = read_yaml(path)
    if isinstance(raw, dict):
        for override in overrides:
            apply_override(raw, override)
    return validate_suite(raw, str(path)), path
