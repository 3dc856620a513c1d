"""Every enabled instrument over a set of checkpoints -> the `beyond_ntp` section of a report.

    inputs = prepare_inputs(settings, base_dir)          # data read and checked before any model loads
    per checkpoint, with its model active:                # the eval harness's loaded groups, or load_and_probe
        results[label] = probe_checkpoint(settings, inputs, model, tokenizer, control=...)
    section = beyond_ntp_section(settings, results, summary=..., reference=..., adapters=...)

Used by the eval harness (a suite's or eval stage's `probes:` block) and by `ntp-rl probe ...`.
Every checkpoint sees the same texts, items, splits and seeds, so differences between checkpoints
are differences of the models.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ntp_rl.errors import UserError
from ntp_rl.probe_settings import ProbeSettings
from ntp_rl.probes.texts import Text, encode_text, load_answer_items, load_texts

logger = logging.getLogger(__name__)

INSTRUMENTS = ("future", "answer", "rhyme", "credit")


@dataclass
class ProbeInputs:
    future_texts: list[Text] | None = None
    answer_items: list[tuple[Text, int]] | None = None
    credit_texts: list[Text] | None = None


def prepare_inputs(
    settings: ProbeSettings, base_dir: Path | None = None, where: str | None = "probes"
) -> ProbeInputs:
    """Read every instrument's data (UserError naming `where`.<instrument>.data, or --data when None)."""

    def name(instrument: str) -> str:
        return f"{where}.{instrument}.data" if where else "--data"

    inputs = ProbeInputs()
    seed = settings.seed
    if settings.future is not None:
        f = settings.future
        inputs.future_texts = load_texts(f.data, f.column, f.texts, seed, base_dir, name("future"))
    if settings.answer is not None:
        a = settings.answer
        inputs.answer_items = load_answer_items(a.data, a.examples, seed, base_dir, name("answer"))
    if settings.credit is not None:
        c = settings.credit
        inputs.credit_texts = load_texts(c.data, c.column, c.texts, seed, base_dir, name("credit"))
    return inputs


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _instrument(name: str, settings: ProbeSettings, inputs: ProbeInputs, model, tokenizer, control: bool):
    from ntp_rl.probes.answer import answer_probe
    from ntp_rl.probes.credit import gradient_credit
    from ntp_rl.probes.future import future_token_probe
    from ntp_rl.probes.rhyme import rhyme_probe

    seed, fit_fraction, batch_size = settings.seed, settings.fit_fraction, settings.batch_size
    pad_id = _pad_id(tokenizer)
    if name == "future":
        f = settings.future
        sequences = [encode_text(tokenizer, t, f.max_tokens) for t in inputs.future_texts or []]
        return future_token_probe(
            model, sequences, f.k, f.vocab, f.max_positions, fit_fraction, seed, pad_id, batch_size
        )
    if name == "answer":
        a = settings.answer
        items = inputs.answer_items or []
        return answer_probe(model, tokenizer, items, a.buckets, fit_fraction, seed, batch_size)
    if name == "rhyme":
        r = settings.rhyme
        return rhyme_probe(model, tokenizer, r.generate, r.max_new_tokens, fit_fraction, seed, batch_size)
    c = settings.credit
    sequences = [encode_text(tokenizer, t, c.max_tokens) for t in inputs.credit_texts or []]
    result = gradient_credit(model, sequences, c.k, c.max_targets, pad_id, batch_size)
    if control and c.control:
        result["control"] = gradient_credit(
            model, sequences, c.k, c.max_targets, pad_id, batch_size, detach_kv=True
        )
    return result


def probe_checkpoint(
    settings: ProbeSettings,
    inputs: ProbeInputs,
    model,
    tokenizer,
    control: bool = False,
    label: str = "",
    raise_errors: bool = False,
) -> dict[str, Any]:
    """Every enabled instrument on one model state; `control` adds the credit stop-gradient control.

    An instrument that cannot measure (too few positions or items, texts shorter than k, a model
    without k/v projections for the control) raises a UserError when `raise_errors`, else its result
    is `{"error": message}` and the others still run (an eval should not be lost to a probe).
    """
    results: dict[str, Any] = {}
    for name in settings.enabled():
        started = time.time()
        try:
            result = _instrument(name, settings, inputs, model, tokenizer, control)
        except ValueError as exc:
            if raise_errors:
                raise UserError(f"probe {name} on {label or 'the model'}: {exc}") from None
            logger.warning("probe %s on %s could not measure: %s", name, label or "the model", exc)
            result = {"error": str(exc)}
        result["seconds"] = round(time.time() - started, 2)
        logger.info("probe %s on %s: %.1f s", name, label or "model", result["seconds"])
        results[name] = result
    return results


def load_and_probe(
    settings: ProbeSettings,
    inputs: ProbeInputs,
    checkpoints: Sequence[Any],
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> dict[str, dict[str, Any]]:
    """Load each checkpoint in turn, its adapter merged into the weights, and probe it.

    Merged weights make a plain forward pass, without the LoRA wrappers' extra operations; the eval
    harness, which has its models loaded already, probes adapters in place.
    """
    from ntp_rl.checkpoints import LoadedGroup, reference_label

    reference = reference_label([c.label for c in checkpoints])
    results: dict[str, dict[str, Any]] = {}
    for checkpoint in checkpoints:
        group = LoadedGroup(checkpoint.base, [checkpoint], dtype, trust_remote_code)
        model = group.model.merge_and_unload() if checkpoint.adapter is not None else group.model
        model.eval()
        results[checkpoint.label] = probe_checkpoint(
            settings,
            inputs,
            model,
            group.tokenizer,
            control=checkpoint.label == reference,
            label=checkpoint.label,
            raise_errors=True,
        )
        del group, model  # free this copy before the next loads
    return results


def beyond_ntp_section(
    settings: ProbeSettings,
    results: dict[str, dict[str, Any]],
    summary: dict[str, Any] | None = None,
    reference: str | None = None,
    adapters: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """The report section: settings, each instrument's results by checkpoint, and distance from NTP."""
    from ntp_rl.probes.distance import distance_from_ntp

    section: dict[str, Any] = {
        "settings": settings.model_dump(mode="json"),
        "checkpoints": list(results),
    }
    for name in INSTRUMENTS:
        by_label = {label: r[name] for label, r in results.items() if name in r and "error" not in r[name]}
        if by_label:
            section[name] = by_label
        failed = {label: r[name]["error"] for label, r in results.items() if "error" in r.get(name, {})}
        if failed:
            section.setdefault("errors", {})[name] = failed
    if summary is not None and reference is not None:
        section["distance_from_ntp"] = distance_from_ntp(summary, reference, adapters or {})
    return section
