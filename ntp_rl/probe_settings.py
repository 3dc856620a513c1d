"""The `probes:` block of an eval suite or an eval stage: which instruments run, with what budgets.

    probes: {future: {k: 3, texts: 100}, answer: true, rhyme: true, credit: {texts: 8}}
    probes: true          # every instrument with the defaults below
    probes: {}            # no instrument, only the distance-from-NTP plot
    probes: null          # (the default) none; `false` means the same

In a mapping, an instrument that is not named does not run; `true` gives it its defaults. The
defaults are sized for the default model (135M) on 2 CPU cores: each instrument costs well under a
minute per checkpoint there. The distance-from-NTP plot costs nothing (it reads the report's own
NLL, KL and accuracy) and is on whenever the block is.

It sits beside `ntp_rl.config` (which includes it in an eval stage), outside the `probes` package,
so that loading a recipe never imports the instruments.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TEXT_SOURCE = "synthetic:arithmetic"


class _Strict(BaseModel):
    # The same rules as ntp_rl.config.StrictModel (defined apart to keep this module free of cycles).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FutureProbeSettings(_Strict):
    """Linear probes from the hidden state at t to the token at t+k, k = 1..`k` (and k = 0 as a check)."""

    k: int = Field(3, ge=1, le=16)
    # Texts read: `synthetic:arithmetic` (chat-rendered prompts and worked solutions of the test
    # split), or a local .jsonl/.json/.txt/.csv/.parquet file (`column` holds the text; a .txt file
    # gives one text per non-empty line).
    data: str = DEFAULT_TEXT_SOURCE
    column: str = "text"
    texts: int = Field(64, gt=1)
    max_tokens: int = Field(160, gt=1)  # per text; longer texts are cut
    # Target classes: the `vocab` most frequent tokens of the fit texts, plus one "other" class.
    vocab: int = Field(64, ge=2)
    # Positions sampled over all texts (hidden states of every layer are kept for each: 2000 x 31
    # layers x 576 floats is about 140 MB for the default model).
    max_positions: int = Field(2000, gt=10)


class AnswerProbeSettings(_Strict):
    """The final answer's last digit and size bucket, read at the last prompt token."""

    # Rows with `prompt` and an integer `answer`: `synthetic:arithmetic` (its test split) or a local file.
    data: str = DEFAULT_TEXT_SOURCE
    examples: int = Field(300, gt=9)
    # Size buckets: quantiles of the fit items' answers (chance is about 1/buckets).
    buckets: int = Field(4, ge=2, le=10)


class RhymeProbeSettings(_Strict):
    """Rhyme class of the line to come, read at the line break of a built-in couplet set."""

    # Prompts whose second line is generated (greedy) to check that it really rhymes; 0 = probe only.
    generate: int = Field(64, ge=0)
    max_new_tokens: int = Field(16, gt=0)


class CreditSettings(_Strict):
    """Gradient credit by distance: |d loss(t+k) / d hidden(t)| for k = 1..`k`, and a stop-gradient control."""

    k: int = Field(4, ge=2, le=32)
    data: str = DEFAULT_TEXT_SOURCE
    column: str = "text"
    texts: int = Field(8, gt=0)
    max_tokens: int = Field(48, gt=2)
    # Target positions per batch, each one backward pass (evenly spaced over the sequence).
    max_targets: int = Field(8, gt=0)
    # Also measure with keys and values detached (no gradient across positions): credit beyond
    # k = 1 must vanish. Run on the first checkpoint only; it is a check of the instrument.
    control: bool = True


class ProbeSettings(_Strict):
    future: FutureProbeSettings | None = None
    answer: AnswerProbeSettings | None = None
    rhyme: RhymeProbeSettings | None = None
    credit: CreditSettings | None = None
    # Share of texts / items whose hidden states fit the probes; the rest are held out (split by
    # text, never by position, so that no text is on both sides).
    fit_fraction: float = Field(0.7, gt=0.1, lt=0.95)
    seed: int = 0
    batch_size: int = Field(16, gt=0)  # sequences per forward pass

    @model_validator(mode="before")
    @classmethod
    def _all_on(cls, value: Any) -> Any:
        if value is True:
            return {"future": True, "answer": True, "rhyme": True, "credit": True}
        return value

    @field_validator("future", "answer", "rhyme", "credit", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        return value

    def enabled(self) -> list[str]:
        return [name for name in ("future", "answer", "rhyme", "credit") if getattr(self, name) is not None]
