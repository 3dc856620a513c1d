"""Recipes: YAML -> one typed, validated `Recipe`, with `a.b.c=value` overrides.

Validation happens once, at load time, and every problem is reported with its full key path
(`stages[0].trainer.lerning_rate: unknown key; did you mean learning_rate?`) as a `UserError`
(exit status 2). The `trainer:` mapping of a stage and the `lora:` mapping of the model are not
copied field by field: they are checked against TRL's own config class (`SFTConfig`, `GRPOConfig`,
...) and peft's `LoraConfig`, and passed through to them, so TRL and peft stay the source of truth.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ntp_rl.errors import UserError
from ntp_rl.probe_settings import ProbeSettings

# Trainer arguments the pipeline sets itself (a recipe that set them would be silently overridden):
# where the value comes from, and what to do instead.
PIPELINE_OWNED_TRAINER_KEYS = {
    "output_dir": ("run.output_dir and the stage name", "remove it"),
    "seed": ("the stage's `seed:` (default run.seed)", "set `seed:` on the stage instead"),
    "reward_weights": ("the `weight` of each entry in the stage's rewards", "remove it"),
}
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunSettings(StrictModel):
    name: str = Field(description="Run folder name under output_dir; letters, digits, '.', '_', '-'.")
    output_dir: str = "runs"
    seed: int = 42

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not RUN_NAME_PATTERN.match(value) or ".." in value:
            raise ValueError("use letters, digits, '.', '_' and '-' only (no '/', no '..')")
        return value


class ModelSettings(StrictModel):
    name_or_path: str = "default"
    # `auto`: bfloat16 where it is faster on this machine, else float32 (ntp_rl/dtypes.py). The
    # default stays float32, so the config hash of runs made before `auto` existed does not change.
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    trust_remote_code: bool = False
    # transformers' attention implementation (`eager`, `sdpa`, `flash_attention_2`, ...) of the models
    # the sft, reward_model and rl stages train; None = transformers' default. The generation one is
    # for `generate` in those stages (rl rollouts, held-out evaluation); None = the same.
    attn_implementation: str | None = None
    generation_attn_implementation: str | None = None
    # peft LoraConfig fields, passed through (checked against LoraConfig when the recipe loads).
    lora: dict[str, Any] = Field(
        default_factory=lambda: {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
    )


class ArithmeticOptions(StrictModel):
    num_train: int = Field(2000, gt=0)
    num_test: int = Field(200, gt=0)
    two_step_fraction: float = Field(0.0, ge=0.0, le=1.0)
    # Worked solutions that split a two-digit operand into tens and ones ("47 + 38 = 47 + 30 + 8 =
    # 77 + 8 = 85.") instead of one step ("47 + 38 = 85."); same problems, easier to learn for SFT.
    decomposed_solutions: bool = False


class DataSettings(StrictModel):
    # `synthetic:arithmetic`, a local .jsonl/.json/.parquet/.csv file, or a hub data set name.
    source: str = "synthetic:arithmetic"
    train_split: str = "train"
    test_split: str = "test"
    # Hub data sets with several configurations (GSM8K: "main").
    subset: str | None = None
    # Our column name -> the source's column name, e.g. {prompt: question}.
    columns: dict[str, str] = Field(default_factory=dict)
    # A regex whose first group extracts the gold answer from the answer column (GSM8K: '####\s*(.+)$').
    answer_pattern: str | None = None
    # Rewrite that match in the derived `solution` into the canonical final-answer line `Answer: <gold>`
    # (GSM8K's `#### 72` -> `Answer: 72`), so SFT teaches the line math_accuracy and format read.
    solution_answer_line: bool = False
    # Cap on the number of rows used from each split (None = all).
    max_train_examples: int | None = Field(None, gt=0)
    max_test_examples: int | None = Field(None, gt=0)
    arithmetic: ArithmeticOptions = Field(default_factory=ArithmeticOptions)
    # A named source layout: `hh` = Anthropic HH (`chosen`/`rejected` full transcripts with
    # "\n\nHuman:" / "\n\nAssistant:" turns), split into a shared prompt and the two final responses.
    format: Literal["hh"] | None = None
    # Preference data: drop pairs that are identical, empty or unparseable (counted in the log) instead
    # of stopping with an error naming the first; for large public sets with a few broken rows.
    skip_invalid_pairs: bool = False

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _answer_line_needs_pattern(self) -> DataSettings:
        if self.solution_answer_line and self.answer_pattern is None:
            raise ValueError("solution_answer_line rewrites the answer_pattern match; set answer_pattern too")
        return self


class StageBase(StrictModel):
    name: str | None = None  # defaults to the kind; must be unique within the recipe
    data: DataSettings | None = None  # overrides the recipe's `data` for this stage

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        # The name becomes a folder under the run folder, beside manifest.json.
        if value is not None and (
            not RUN_NAME_PATTERN.match(value) or ".." in value or value == "manifest.json"
        ):
            raise ValueError("use letters, digits, '.', '_' and '-' only (no '/', no '..')")
        return value

    @property
    def stage_name(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]


class TrainingStage(StageBase):
    # Arguments of TRL's config class for this stage (SFTConfig, GRPOConfig, ...), passed through.
    trainer: dict[str, Any] = Field(default_factory=dict)
    # Seed of this stage's randomness: the trainer's (initialisation, data order, sampling) and the
    # sampling before training (prompt filter, policy pairs). None = run.seed. The data itself (splits,
    # synthetic problems) always follows run.seed, so stages with different seeds see the same data:
    # give the rl stage another seed to replicate it against the same SFT, reward model and eval items.
    seed: int | None = None


class SftStage(TrainingStage):
    kind: Literal["sft"]
    # Held-out rows on which eval loss is measured before and after training (0 = skip).
    eval_examples: int = Field(64, ge=0)


class RewardSpecSettings(StrictModel):
    """One reward spec (an rl stage's `rewards`, a suite's `scorers`, `policy_pairs.gold`): exactly one
    of `name`, `path` or `reward_model`, with its weight and settings.

    The one reward-spec model: `ntp_rl.rewards.resolve_reward` turns it into a callable, and
    `ntp_rl.rewards.RewardSpec` is this model built from Python code, a failed check raised as
    `RewardSpecError` instead of pydantic's `ValidationError`.
    """

    # A built-in reward: a key of ntp_rl.rewards.BUILTIN_REWARDS.
    name: str | None = None
    # `package.module:attr` or `path/to/file.py:attr` (a file: the recipe's folder, then the current one).
    path: str | None = None
    # A learned reward model: a reward_model stage of this run (by name), its folder, or a hub id.
    reward_model: str | None = None
    # Its weight in TRL's weighted sum (`reward_weights`); 0 logs the reward without training on it.
    weight: float = Field(1.0, strict=True, allow_inf_nan=False)
    # Constructor arguments of a reward class, or keyword arguments bound to a reward function.
    kwargs: dict[str, Any] = Field(default_factory=dict)
    on_error: Literal["raise", "skip"] = "raise"
    # Wall-clock limit of one reward call (a batch); past it the call is an error under `on_error`.
    timeout_seconds: float | None = Field(120.0, gt=0)
    # A gold signal (the true objective) watched beside a learned reward for over-optimisation;
    # logged with weight 0 unless the recipe gives it a weight.
    gold: bool = False

    @model_validator(mode="before")
    @classmethod
    def _gold_weight(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("gold") is True and "weight" not in data:
            data = {**data, "weight": 0.0}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpecSettings:
        if sum(x is not None for x in (self.name, self.path, self.reward_model)) != 1:
            raise ValueError(
                "give exactly one of `name` (a built-in reward), `path` (module:attr or file.py:attr) "
                "or `reward_model` (a reward_model stage of this run, its folder, or a hub id)"
            )
        return self

    def describe(self) -> str:
        """The spec's source for messages: "name format", "path ./my_rewards.py:brevity"."""
        return describe_reward_source(self.name, self.path, self.reward_model)


def describe_reward_source(name: Any, path: Any, reward_model: Any) -> str:
    """A reward spec's source for messages, also for one that failed its checks (no source, or two)."""
    sources = {"name": name, "path": path, "reward_model": reward_model}
    given = [(key, value) for key, value in sources.items() if value is not None]
    if len(given) == 1:
        return f"{given[0][0]} {given[0][1]}"
    return ", ".join(f"{key} {value!r}" for key, value in given) or "no name, path or reward_model"


class PromptFilterSettings(StrictModel):
    """Keep only training prompts whose sampled rewards vary under the starting policy.

    A group whose completions all score the same has zero advantage and teaches GRPO/RLOO nothing;
    after SFT most easy prompts are such groups. Before training, `samples` completions are drawn
    for each of `candidates` prompts at the training temperature and prompts with a reward spread of
    at least `min_spread` are kept (a pass-rate filter, the offline form of DAPO's dynamic sampling).
    """

    candidates: int = Field(256, gt=0)
    samples: int = Field(4, ge=2)
    min_spread: float = Field(1e-6, ge=0.0)
    max_new_tokens: int | None = Field(None, gt=0)  # default: the trainer's max_completion_length
    batch_size: int = Field(64, gt=0)


class RlStage(TrainingStage):
    kind: Literal["rl"]
    algorithm: Literal["grpo", "rloo"] = "grpo"
    rewards: list[RewardSpecSettings] = Field(default_factory=list)
    prompt_filter: PromptFilterSettings | None = None
    # Stage whose adapter the policy starts from; None = the previous sft stage if there is one.
    init_from: str | None = None
    # Training prompts held out (never trained on) for TRL's own evaluation loop: the policy is sampled
    # and scored on them before the first step and every `trainer.eval_steps` (default: a quarter of
    # max_steps), logged as eval_rewards/<name>/mean; the over-optimisation monitor compares the gold
    # there. 0 = no evaluation during training.
    eval_examples: int = Field(0, ge=0)
    # Skip the forward/backward of completions whose advantage is exactly 0 (a group that all scored the
    # same), where that leaves the update as TRL computes it (beta 0 for GRPO; see
    # ntp_rl/stages/rl_trainer.py). false = TRL's computation row for row.
    skip_zero_advantage: bool = True
    # Run a prompt shared by a group's completions through the policy once in the training forward
    # (same log-probabilities and gradient; one process, no gradient checkpointing). false = once per row.
    share_prompt_prefix: bool = True
    # Sample rollouts with one random number per completion and token (ntp_rl.generation.InverseCdfSampler)
    # instead of torch.multinomial's one per vocabulary entry: the same distribution, other draws.
    fast_sampling: bool = True

    @field_validator("rewards")
    @classmethod
    def _non_empty(cls, value: list[RewardSpecSettings]) -> list[RewardSpecSettings]:
        if not value:
            raise ValueError("an rl stage needs at least one reward, e.g. [{name: math_accuracy}]")
        return value


class PolicyPairsSettings(StrictModel):
    """Preference pairs from the policy's own samples, labelled by a gold reward (reward_model stage).

    The labeller is any reward spec (`gold`); with `tau` or `disagreement` it labels with
    Bradley-Terry noise, as human labellers disagree with each other: of two samples a and b, a is
    preferred with probability sigmoid((gold(a) - gold(b)) / tau). Neither: the gold's own ranking.
    """

    # An earlier sft stage: its adapter over the base is the policy sampled.
    policy: str
    # The labeller: a reward spec, by default the arithmetic checker.
    gold: RewardSpecSettings = Field(default_factory=lambda: RewardSpecSettings(name="math_accuracy"))
    prompts: int = Field(256, gt=0)  # training prompts sampled (the stage data's train split)
    samples: int = Field(4, ge=2)  # completions per prompt
    temperature: float = Field(1.0, gt=0.0)
    max_new_tokens: int = Field(64, gt=0)
    max_pairs_per_prompt: int = Field(4, gt=0)
    batch_size: int = Field(64, gt=0)  # sequences per generate call
    # Bradley-Terry temperature of the labels, in the gold's units: higher = noisier. None = noiseless.
    tau: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    # Instead of tau: the share of labels that should disagree with the noiseless gold (human labellers
    # disagree with each other on 25-35 % of comparisons); tau is solved on the pairs drawn.
    disagreement: float | None = Field(None, gt=0.0, lt=0.5)

    @model_validator(mode="after")
    def _one_noise_setting(self) -> PolicyPairsSettings:
        if self.tau is not None and self.disagreement is not None:
            raise ValueError("give `tau` or `disagreement` (from which tau is solved), not both")
        return self


class RewardModelStage(TrainingStage):
    """A scalar reward model (base + LoRA + one score head) trained on preference pairs (TRL RewardTrainer)."""

    kind: Literal["reward_model"]
    # Held-out pairs (test split) on which pairwise accuracy and margin are measured before and after
    # training (0 = skip). With prompt-only data and policy_pairs: held-out prompts, whose policy
    # samples are paired and labelled by the gold without noise.
    eval_examples: int = Field(200, ge=0)
    # An earlier sft stage: its adapter is merged into the base first, so the reward model starts
    # from the fine-tuned policy (as InstructGPT's did) instead of the base. None = the base.
    init_from: str | None = None
    # Add pairs of the policy's own samples, the better by a gold reward chosen (labellers comparing a
    # policy's outputs, as in RLHF); None = the data's pairs only.
    policy_pairs: PolicyPairsSettings | None = None
    # Shuffle whole prompts (then the pairs within each) so that a prompt's pairs share batches and
    # a response in several pairs is scored once per batch; false = TRL's pair-by-pair shuffle.
    group_pairs_by_prompt: bool = True


class ExtraSplit(StrictModel):
    """A further split evaluated beside the main one, with the same checkpoints, decoding and scorers."""

    split: str
    # Items evaluated; None = the main split's `max_examples`.
    max_examples: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"split": value} if isinstance(value, str) else value


def unique_extra_splits(value: list[ExtraSplit]) -> list[ExtraSplit]:
    names = [extra.split for extra in value]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"split(s) {duplicated} listed twice")
    return value


class EvalStage(StageBase):
    """Greedy and sampled accuracy of the base and the run's trained stages on held-out prompts."""

    kind: Literal["eval"]
    # An eval suite file (`eval/arithmetic.yaml`: the recipe's folder, the current folder, then the
    # bundled suites); inline settings set here override the suite's. None = the inline settings.
    suite: str | None = None
    split: str | None = None  # default: data.test_split
    max_examples: int | None = Field(200, gt=0)
    # Further splits reported beside `split`, e.g. [test_phrasings] (synthetic:arithmetic's test
    # problems in wording never used in training) or [{split: test_phrasings, max_examples: 160}].
    extra_splits: list[ExtraSplit] = Field(default_factory=list)
    max_new_tokens: int = Field(64, gt=0)
    greedy: bool = True
    # Samples per prompt at `temperature` for sampled pass@1, pass@k and maj@k (0 = greedy only).
    num_samples: int = Field(4, ge=0)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int = Field(32, gt=0)
    seed: int = 1234
    # Stages to evaluate beside the base; default: every earlier sft and rl stage.
    checkpoints: list[str] | None = None
    # Checkpoints ("base" or stage names) that also get the sampled decoding; default: every one.
    # Greedy still runs for all. E.g. [sft, rl] skips the base's samples, often the longest ones.
    sampled_checkpoints: list[str] | None = None
    # Stages the other evaluated stages are also measured against: KL(stage || that one) per token on
    # the stage's own samples, beside the KL to the base. E.g. [sft]: how far RL moved from the SFT
    # policy, the KL that the rl stage's `beta` penalises (reported as kl_to_sft).
    kl_to: list[str] = Field(default_factory=list)
    # Instruments beyond next-token prediction (ntp_rl/probe_settings.py), e.g.
    # {future: {k: 3}, answer: true, rhyme: true, credit: {texts: 8}} or `true` for all; off when null.
    probes: ProbeSettings | None = None

    @field_validator("probes", mode="before")
    @classmethod
    def _probes_off(cls, value: Any) -> Any:
        return None if value is False else value

    _unique_extra_splits = field_validator("extra_splits")(unique_extra_splits)


Stage = Annotated[
    Union[SftStage, RewardModelStage, RlStage, EvalStage],  # noqa: UP007
    Field(discriminator="kind"),
]
STAGE_KINDS = ("sft", "reward_model", "rl", "eval")
STAGE_CLASSES: dict[str, type[StageBase]] = {
    "sft": SftStage,
    "reward_model": RewardModelStage,
    "rl": RlStage,
    "eval": EvalStage,
}


# Stage keys added after runs existed, with their defaults: at the default, a key is left out of the
# config hash, so runs made before it existed keep their hash (and resume). A key removed later
# (rl `positive_advantage_weight`, default 1) leaves the hash of runs made at its default unchanged:
# it was never hashed there; a recipe that still sets it is refused as an unknown key.
ADDED_LATER: dict[str, dict[str, Any]] = {
    "eval": {"probes": None, "sampled_checkpoints": None, "extra_splits": [], "kl_to": []},
    "reward_model": {"init_from": None, "policy_pairs": None, "seed": None, "group_pairs_by_prompt": True},
    "sft": {"seed": None},
    "rl": {
        "seed": None,
        "eval_examples": 0,
        "skip_zero_advantage": True,
        "share_prompt_prefix": True,
        "fast_sampling": True,
    },
}

# The same for keys of the model block.
MODEL_ADDED_LATER: dict[str, Any] = {"attn_implementation": None, "generation_attn_implementation": None}

# The same for keys of a reward_model stage's `policy_pairs`.
POLICY_PAIRS_ADDED_LATER: dict[str, Any] = {"tau": None, "disagreement": None}


class Recipe(StrictModel):
    run: RunSettings
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    stages: list[Stage]

    @model_validator(mode="after")
    def _unique_stage_names(self) -> Recipe:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.stage_name in seen:
                raise ValueError(f"two stages are named {stage.stage_name!r}; give one of them a `name:`")
            seen.add(stage.stage_name)
        if not self.stages:
            raise ValueError("`stages` is empty; list at least one stage")
        for index, stage in enumerate(self.stages):
            if not isinstance(stage, RewardModelStage):
                continue
            earlier = [s.stage_name for s in self.stages[:index] if isinstance(s, SftStage)]
            references = {"init_from": stage.init_from}
            if stage.policy_pairs is not None:
                references["policy_pairs.policy"] = stage.policy_pairs.policy
            for key, name in references.items():
                if name is not None and name not in earlier:
                    raise ValueError(
                        f"stages[{index}].{key}: {name!r} is not an earlier sft stage; "
                        f"earlier sft stages: {earlier or 'none'}"
                    )
        return self

    def stage_data(self, stage: StageBase) -> DataSettings:
        return stage.data or self.data

    def config_hash(self) -> str:
        """Hash of what the run computes; where its folder lives (run.output_dir) is not part of it."""
        config = without_later_defaults(self.model_dump(mode="json"))
        config["run"].pop("output_dir", None)
        canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def without_later_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A dumped recipe (`Recipe.model_dump(mode="json")`, or a manifest's `config`) without the keys
    added in later versions where they hold their defaults, so that a run made before a key existed
    reads as the same config. Changes `config` in place and returns it.
    """
    model = config.get("model")
    if isinstance(model, dict):
        for key, default in MODEL_ADDED_LATER.items():
            if model.get(key, default) == default:
                model.pop(key, None)
    for stage in config.get("stages", []):
        for key, default in ADDED_LATER.get(stage["kind"], {}).items():
            if key in stage and stage[key] == default:
                del stage[key]
        pairs = stage.get("policy_pairs")
        for key, default in POLICY_PAIRS_ADDED_LATER.items():
            if isinstance(pairs, dict) and key in pairs and pairs[key] == default:
                del pairs[key]
    return config


# --------------------------------------------------------------------------------------------
# Error formatting


def format_path(loc: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _suggest(word: str, candidates: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def model_at(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    """The pydantic model class under `root` (default Recipe) that owns the key at `loc`, for suggestions."""
    model: Any = root or Recipe
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index: `model` is already the element type
            continue
        if part in STAGE_KINDS and isinstance(model, type) and issubclass(model, StageBase):
            model = STAGE_CLASSES[part]  # discriminator tag
            continue
        field = (
            model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        )
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _inner_model(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):  # noqa: UP006
        return _inner_model(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    if origin is Annotated:
        return _inner_model(typing.get_args(annotation)[0])
    return annotation


def _validation_message(error: ValidationError, raw: dict, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        # pydantic inserts the discriminator tag ('sft'/'rl') into stage locations; drop it from the path.
        shown = tuple(
            p for i, p in enumerate(loc) if not (i == 2 and loc[0] == "stages" and p in STAGE_KINDS)
        )
        path = format_path(shown) or "(top level)"
        if item["type"] == "extra_forbidden":
            owner = model_at(loc)
            hint = _suggest(str(loc[-1]), owner.model_fields) if owner else ""
            lines.append(f"{path}: unknown key{hint}")
        elif item["type"] == "union_tag_invalid":
            lines.append(
                f"{path}.kind: must be one of {', '.join(STAGE_KINDS)} (got {item['input'].get('kind')!r})"
            )
        elif item["type"] == "union_tag_not_found":
            lines.append(f"{path}: missing `kind:` (one of {', '.join(STAGE_KINDS)})")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(
                f"{path}: {msg} (got {item.get('input')!r})"
                if item["type"] != "missing"
                else f"{path}: {msg}"
            )
    return f"{source}: invalid recipe:\n  " + "\n  ".join(lines)


# --------------------------------------------------------------------------------------------
# Pass-through argument checks against library dataclasses (TRL configs, peft LoraConfig)


def _scalar_types(annotation: Any) -> set[type] | None:
    """The scalar types a field accepts, or None when it is not a plain scalar field."""
    args = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (Union, types.UnionType)
        else (annotation,)
    )
    allowed: set[type] = set()
    for arg in args:
        if arg is type(None):
            continue
        if arg not in (int, float, bool, str):
            return None  # lists, dicts, enums, literals: the library validates them
        allowed.add(arg)
    return allowed or None


def _coerce_scalar(annotation: Any, value: Any) -> tuple[bool, Any]:
    """(ok, value) for a scalar against a dataclass field type.

    YAML 1.1 reads `3e-4` as a string; a string that is a number is accepted for a numeric field.
    """
    allowed = _scalar_types(annotation)
    if value is None or allowed is None:
        return True, value
    if isinstance(value, bool):
        return bool in allowed, value
    if isinstance(value, int) and (int in allowed or float in allowed):
        return True, value
    if isinstance(value, float) and float in allowed:
        return True, value
    if isinstance(value, str):
        if str in allowed:
            return True, value
        if float in allowed:
            try:
                return True, float(value)
            except ValueError:
                pass
    return False, value


def check_dataclass_kwargs(cls: type, kwargs: dict[str, Any], path: str) -> dict[str, Any]:
    """Check key names and scalar types of `kwargs` for dataclass `cls`; raise UserError with `path`.

    Returns the kwargs with numeric strings (`"3e-4"`) converted for numeric fields.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    problems, checked = [], {}
    for key, value in kwargs.items():
        if key not in fields:
            problems.append(f"{path}.{key}: unknown key for {cls.__name__}{_suggest(key, fields)}")
            continue
        ok, checked[key] = _coerce_scalar(hints.get(key, Any), value)
        if not ok:
            expected = " or ".join(sorted(t.__name__ for t in _scalar_types(hints[key]) or ()))
            problems.append(f"{path}.{key}: expected {expected}, got {type(value).__name__} {value!r}")
    if problems:
        raise UserError("\n  ".join(problems))
    return checked


def build_dataclass(cls: type, kwargs: dict[str, Any], path: str, **fixed: Any) -> Any:
    """Instantiate `cls(**kwargs, **fixed)`, turning the library's own validation errors into UserError."""
    kwargs = check_dataclass_kwargs(cls, kwargs, path)
    try:
        return cls(**kwargs, **fixed)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: rejected by {cls.__module__}.{cls.__name__}: {exc}") from None


def trainer_config_class(stage: TrainingStage) -> type:
    if isinstance(stage, SftStage):
        from trl import SFTConfig

        return SFTConfig
    if isinstance(stage, RlStage):
        if stage.algorithm == "rloo":
            from trl import RLOOConfig

            return RLOOConfig
        from trl import GRPOConfig

        return GRPOConfig
    if isinstance(stage, RewardModelStage):
        from trl import RewardConfig

        return RewardConfig
    raise TypeError(stage)


def check_attention_name(name: str | None) -> str | None:
    """Why transformers would not know `name` as an attention implementation, or None.

    Known: `eager` and the names registered with transformers' `AttentionInterface` (`sdpa`,
    `flash_attention_2`, `flex_attention`, ...), and hub kernels (`org/repo`). Whether this machine
    can run a known one is checked when the model loads.
    """
    if name is None or "/" in name:
        return None
    from transformers import AttentionInterface

    known = sorted({"eager", *AttentionInterface()})
    known = [k for k in known if "|" not in k]  # internal combined keys (paged|eager)
    if name in known:
        return None
    return f"{name!r} is not an attention implementation transformers knows; one of {known}{_suggest(name, known)}"


def check_recipe_against_libraries(recipe: Recipe, source: str) -> None:
    """Check pass-through mappings (lora, trainer) against peft and TRL, with full key paths."""
    from peft import LoraConfig

    problems: list[str] = []
    try:
        recipe.model.lora = check_dataclass_kwargs(LoraConfig, recipe.model.lora, "model.lora")
        build_dataclass(LoraConfig, recipe.model.lora, "model.lora", task_type="CAUSAL_LM")
    except UserError as exc:
        problems.append(str(exc))
    for key in ("attn_implementation", "generation_attn_implementation"):
        problem = check_attention_name(getattr(recipe.model, key))
        if problem:
            problems.append(f"model.{key}: {problem}")
    rank = recipe.model.lora.get("r")
    if isinstance(rank, int) and rank < 1:  # peft accepts it; the model would fail to build an adapter
        problems.append(f"model.lora.r: the adapter's rank must be at least 1, got {rank}")
    for index, stage in enumerate(recipe.stages):
        if not isinstance(stage, TrainingStage):
            continue
        path = f"stages[{index}].trainer"
        owned = [k for k in stage.trainer if k in PIPELINE_OWNED_TRAINER_KEYS]
        for key in owned:
            source, remedy = PIPELINE_OWNED_TRAINER_KEYS[key]
            problems.append(f"{path}.{key}: set by the pipeline from {source}; {remedy}")
        cls = trainer_config_class(stage)
        trainer_kwargs = {k: v for k, v in stage.trainer.items() if k not in owned}
        try:
            stage.trainer = {
                **check_dataclass_kwargs(cls, trainer_kwargs, path),
                **{k: stage.trainer[k] for k in owned},
            }
        except UserError as exc:
            problems.append(str(exc))
        rate = stage.trainer.get("learning_rate")
        if isinstance(rate, (int, float)) and rate < 0:  # TRL accepts it and trains away from the data
            problems.append(
                f"{path}.learning_rate: must be >= 0, got {rate}; a negative rate climbs the loss"
            )
    if problems:
        raise UserError(f"{source}: invalid recipe:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------
# Loading and overrides


def _parse_override_path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in key.replace("]", "").replace("[", ".").split("."):
        if token == "":
            raise UserError(f"override {key!r}: empty key segment; write a.b.c=value")
        parts.append(int(token) if token.isdigit() else token)
    return parts


def apply_override(raw: dict, override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`3e-4`, `[a, b]`, `null`)."""
    if "=" not in override:
        raise UserError(
            f"override {override!r}: expected key.path=value (e.g. stages[0].trainer.max_steps=10)"
        )
    key, _, text = override.partition("=")
    parts = _parse_override_path(key.strip())
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"override {override!r}: the value is not valid YAML: {exc}") from None
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        here = format_path(parts[: depth + 1])
        if isinstance(node, list):
            if isinstance(part, str):  # stages.sft.trainer... selects a stage by name or kind
                matches = [s for s in node if isinstance(s, dict) and part in (s.get("name"), s.get("kind"))]
                if len(matches) != 1:
                    raise UserError(f"override {override!r}: {here}: no single stage named {part!r}")
                node = matches[0]
                continue
            if part >= len(node):
                raise UserError(
                    f"override {override!r}: {here}: index out of range (the list has {len(node)} items)"
                )
            node = node[part]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise UserError(f"override {override!r}: {here} is a {type(node).__name__}, not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise UserError(f"override {override!r}: {key}: not a valid list index")
    elif not isinstance(node, dict):
        raise UserError(f"override {override!r}: {format_path(parts[:-1])} is not a mapping")
    node[last] = value


def read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: no such recipe file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None


# `--smoke`: the whole recipe on the tiny random model with budgets cut to a few steps.
SMOKE_TRAINER = {
    "max_steps": 2,
    "logging_steps": 1,
    "save_steps": 1000,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "warmup_steps": 0,  # so that two steps really move the weights
}
SMOKE_RL_TRAINER = {
    "num_generations": 2,
    "num_generations_eval": None,  # held-out groups as the training ones: a smoke eval batch is tiny
    "max_completion_length": 12,
    "generation_batch_size": None,
    "use_vllm": False,  # smoke runs check a recipe on any machine, vLLM or not
}
SMOKE_PROMPT_FILTER = {"candidates": 8, "samples": 2, "batch_size": 16}
SMOKE_EVAL = {"max_examples": 4, "num_samples": 2, "max_new_tokens": 8, "batch_size": 8}
# Each instrument an eval stage runs, at the smallest budget its checks accept: the probes still run
# end to end, in seconds rather than minutes.
SMOKE_PROBES = {
    "future": {"texts": 4, "max_tokens": 24},
    "answer": {"examples": 20},
    "rhyme": {"generate": 2, "max_new_tokens": 4},
    "credit": {"texts": 1, "max_tokens": 8},
}
SMOKE_DATA = {
    "max_train_examples": 16,
    "max_test_examples": 4,
    "arithmetic": {"num_train": 16, "num_test": 4},
}


def _smoke_probes(probes: Any) -> Any:
    if probes is True:
        probes = dict.fromkeys(SMOKE_PROBES, True)
    if not isinstance(probes, dict):
        return probes  # null, false or a mistake that validation will name
    probes = dict(probes)
    for name, small in SMOKE_PROBES.items():
        value = probes.get(name)
        if value is True:
            probes[name] = dict(small)
        elif isinstance(value, dict):
            probes[name] = {**value, **small}
    return probes


def apply_smoke(raw: dict) -> None:
    """Rewrite a raw recipe in place for `--smoke` (before validation, so the result is validated too)."""
    run = raw.setdefault("run", {})
    if isinstance(run, dict) and isinstance(run.get("name"), str):
        run["name"] = f"{run['name']}-smoke"
    model = raw.setdefault("model", {})
    if isinstance(model, dict):
        model.update({"name_or_path": "tiny", "dtype": "float32"})

    def shrink_data(data: Any) -> None:
        if isinstance(data, dict):
            arithmetic = {**(data.get("arithmetic") or {}), **SMOKE_DATA["arithmetic"]}
            data.update({**SMOKE_DATA, "arithmetic": arithmetic})

    shrink_data(raw.setdefault("data", {}))
    for stage in raw.get("stages") or []:
        if not isinstance(stage, dict):
            continue
        shrink_data(stage.get("data"))
        if stage.get("kind") == "eval":
            stage.update(SMOKE_EVAL)
            if isinstance(stage.get("extra_splits"), list):  # each at the main split's smoke size
                stage["extra_splits"] = [
                    {**extra, "max_examples": None} if isinstance(extra, dict) else extra
                    for extra in stage["extra_splits"]
                ]
            if "probes" in stage:
                stage["probes"] = _smoke_probes(stage["probes"])
            continue
        trainer = stage.setdefault("trainer", {})
        if isinstance(trainer, dict):
            trainer.update(SMOKE_TRAINER)
            if stage.get("kind") == "rl":
                trainer.update(SMOKE_RL_TRAINER)
                if isinstance(stage.get("prompt_filter"), dict):
                    stage["prompt_filter"].update(SMOKE_PROMPT_FILTER)
        if stage.get("kind") in ("sft", "reward_model"):
            stage["eval_examples"] = min(int(stage.get("eval_examples", 4) or 0), 4)
        if stage.get("kind") == "rl" and isinstance(stage.get("eval_examples"), int):
            stage["eval_examples"] = min(stage["eval_examples"], 2)  # of the smoke data's 16 prompts


def load_recipe(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    check_libraries: bool = True,
    smoke: bool = False,
) -> Recipe:
    """Read, override and validate a recipe. Every problem becomes a UserError naming its key path."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping with run, model, data and stages")
    for override in overrides:
        apply_override(raw, override)
    if smoke:
        apply_smoke(raw)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_validation_message(exc, raw, str(path))) from None
    if check_libraries:
        check_recipe_against_libraries(recipe, str(path))
    return recipe
