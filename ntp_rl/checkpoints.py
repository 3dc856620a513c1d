"""Checkpoints to evaluate: `label=spec` -> a base model and, optionally, a LoRA adapter over it.

A spec is `default` or `tiny`, a local model folder, a hub id, a run's stage folder
(`runs/q/sft`: its `adapter/` over the adapter's base) or an adapter folder itself. The base of an
adapter is `base_model_name_or_path` of its `adapter_config.json`; when that folder is gone (a run
copied from another machine), the run's `manifest.json` names the model it was trained from.

Checkpoints that share a base are evaluated on one copy of it: the adapters are loaded side by side
into one `PeftModel` (no weights are copied) and switched on in turn; the base itself is the same
model with adapters disabled, which is also the reference for KL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntp_rl.errors import UserError

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
BASE = "base"  # the label of the base model, the reference of paired comparisons and probes


def reference_label(labels: list[str]) -> str:
    """The checkpoint the others are compared with: the base model when it is evaluated, else the first."""
    return BASE if BASE in labels else labels[0]


@dataclass
class Checkpoint:
    label: str
    spec: str  # as the user gave it
    base: str  # resolved base model folder or hub id
    adapter: Path | None = None  # LoRA adapter folder, None for a plain model
    stage_dir: Path | None = None  # the run stage folder the adapter came from (training curves)

    def describe(self) -> dict[str, Any]:
        """Provenance: what was loaded, with the adapter's sha256."""
        info: dict[str, Any] = {"spec": self.spec, "base_model": self.base}
        if self.adapter is not None:
            info["adapter"] = str(self.adapter)
            info["adapter_sha256"] = adapter_sha256(self.adapter)
        if self.stage_dir is not None:
            info["stage_dir"] = str(self.stage_dir)
        return info


def adapter_sha256(adapter: Path) -> str | None:
    """sha256 of the adapter's weights file, read in place (1 MiB at a time)."""
    weights = adapter / ADAPTER_WEIGHTS
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _adapter_base(adapter: Path, stage_dir: Path | None, where: str) -> str:
    from ntp_rl.models import resolve_model_path

    try:
        config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{where}: cannot read {adapter / ADAPTER_CONFIG}: {exc}") from None
    base = config.get("base_model_name_or_path")
    looks_local = isinstance(base, str) and base.startswith((".", "/", "~"))
    if isinstance(base, str) and base and (not looks_local or Path(base).expanduser().is_dir()):
        return resolve_model_path(base)
    # The recorded folder is gone: fall back to the run's manifest (the model the run was trained from).
    manifest = stage_dir.parent / "manifest.json" if stage_dir is not None else None
    if manifest is not None and manifest.is_file():
        name = json.loads(manifest.read_text()).get("config", {}).get("model", {}).get("name_or_path")
        if name:
            logger.info("%s: adapter base %s is missing; using the run's model %r", where, base, name)
            return resolve_model_path(name)
    raise UserError(
        f"{where}: the adapter's base model {base!r} (base_model_name_or_path in {adapter / ADAPTER_CONFIG}) "
        "is not available; give the base as its own --model, or fix that path"
    )


def resolve_checkpoint(label: str, spec: str) -> Checkpoint:
    """One `label=spec` -> a Checkpoint (UserError naming the spec when it is not usable)."""
    from ntp_rl.models import BUILTIN_MODELS, resolve_model_path

    where = f"--model {label}={spec}"
    if spec in BUILTIN_MODELS:
        return Checkpoint(label, spec, resolve_model_path(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "adapter" / ADAPTER_CONFIG).is_file():  # a run stage folder
            adapter = path / "adapter"
            return Checkpoint(label, spec, _adapter_base(adapter, path, where), adapter, path)
        if (path / ADAPTER_CONFIG).is_file():  # an adapter folder
            stage_dir = path.parent if (path.parent / "metrics.jsonl").is_file() else None
            return Checkpoint(label, spec, _adapter_base(path, stage_dir, where), path, stage_dir)
        if (path / "config.json").is_file():
            return Checkpoint(label, spec, str(path))
        if (path / "COMPLETE").is_file() or (path / "checkpoints").is_dir():
            raise UserError(
                f"{where}: {path} is a run stage without an adapter/ (unfinished, or not a training stage)"
            )
        raise UserError(
            f"{where}: {path} is neither a model folder (config.json), an adapter folder "
            f"({ADAPTER_CONFIG}) nor a run stage folder (adapter/)"
        )
    try:
        return Checkpoint(label, spec, resolve_model_path(spec))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def parse_model_args(values: Sequence[str]) -> list[tuple[str, str]]:
    """`--model` values (`label=spec`, or a bare spec labelled by its last path part) -> (label, spec)."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        label, sep, spec = value.partition("=")
        if not sep:
            spec = value
            label = Path(value.rstrip("/")).name or value
        label, spec = label.strip(), spec.strip()
        if not spec:
            raise UserError(f"--model {value!r}: expected label=spec, e.g. sft=runs/quickstart/sft")
        if not LABEL_PATTERN.match(label):
            raise UserError(f"--model {value!r}: label {label!r}: use letters, digits, '.', '_' and '-'")
        if label in {existing for existing, _ in pairs}:
            raise UserError(
                f"--model {value!r}: label {label!r} is used twice; give each model its own label"
            )
        pairs.append((label, spec))
    if not pairs:
        raise UserError("give at least one --model label=spec (e.g. --model base=default)")
    return pairs


def group_by_base(checkpoints: Sequence[Checkpoint]) -> list[tuple[str, list[Checkpoint]]]:
    """Checkpoints sharing a base model, in order of first appearance: one model load per group."""
    groups: dict[str, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        key = str(Path(checkpoint.base).resolve()) if Path(checkpoint.base).exists() else checkpoint.base
        groups.setdefault(key, []).append(checkpoint)
    return [(members[0].base, members) for members in groups.values()]


class LoadedGroup:
    """One base model with its checkpoints' adapters loaded side by side (one PeftModel)."""

    def __init__(self, base: str, members: Sequence[Checkpoint], dtype: str, trust_remote_code: bool):
        from ntp_rl.models import check_adapter_weights, load_causal_lm, load_tokenizer

        for member in members:  # before any model loads; peft would unpickle a .bin adapter
            if member.adapter is not None:
                check_adapter_weights(Path(member.adapter), f"checkpoint {member.label!r}")
        self.base = base
        self.members = list(members)
        self.tokenizer = load_tokenizer(base, trust_remote_code)
        self.model = load_causal_lm(base, dtype, trust_remote_code)
        self.adapters = [c for c in members if c.adapter is not None]
        if self.adapters:
            from peft import PeftModel

            first = self.adapters[0]
            # from_pretrained wraps the loaded base in place; load_adapter adds only the LoRA weights.
            self.model = PeftModel.from_pretrained(self.model, str(first.adapter), adapter_name=first.label)
            for checkpoint in self.adapters[1:]:
                self.model.load_adapter(str(checkpoint.adapter), adapter_name=checkpoint.label)
        self.model.eval()

    @contextmanager
    def active(self, checkpoint: Checkpoint) -> Iterator[Any]:
        """The model as `checkpoint`: its adapter switched on, or every adapter disabled for a plain base."""
        if checkpoint.adapter is not None:
            self.model.set_adapter(checkpoint.label)
            yield self.model
        else:
            with self.as_base():
                yield self.model

    def as_base(self):
        return self.model.disable_adapter() if self.adapters else nullcontext()

    @contextmanager
    def for_generation(self, checkpoint: Checkpoint, merge: bool = True) -> Iterator[Any]:
        """The model as `checkpoint` for generate(): with `merge`, a copy with its adapter merged in.

        Unmerged LoRA runs a dozen small extra operations per layer and token; merged, generation runs
        none of them (see `generation.merged_copy`). The copy leaves the shared model
        untouched (merging in place and unmerging again would not restore bf16 weights exactly); it is
        dropped on exit. Merged weights are rounded once to the model dtype, as in any merged export.
        """
        if checkpoint.adapter is None or not merge:
            with self.active(checkpoint) as model:
                yield model
            return
        from ntp_rl.generation import merged_copy

        self.model.set_adapter(checkpoint.label)
        yield merged_copy(self.model)
