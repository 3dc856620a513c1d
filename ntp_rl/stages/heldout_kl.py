"""KL(policy || its start) on the held-out completions of every evaluation during RL, for any beta.

Gao et al. 2022 plot the gold and the proxy reward against sqrt(KL) from the RL policy to its
initialisation; the rl stage's over-optimisation curve (overoptimisation.py) does the same at each
of the held-out evaluations TRL runs when the stage has `eval_examples`. The KL is TRL's own `eval_kl`:
per completion token, on the completions each evaluation samples, at the sampling temperature, to a
reference that is the policy's start (a frozen "ref" copy of the adapter it started from, or, for a
fresh adapter, the base with adapters disabled: the SFT policy either way). GRPOTrainer's estimator
is k3 = exp(r) - r - 1 with r = log q(token) - log p(token) (p the policy, q its start), unbiased per
token and never negative; RLOOTrainer's is the first-order -r, which can be negative.

TRL computes it only when it penalises it (`trainer.beta` != 0). With `beta: 0` it keeps no
reference and computes nothing, so `HeldoutKl`:
- keeps the reference TRL keeps with a penalty: a frozen "ref" copy of a starting adapter, made
  before training;
- sets the trainer's coefficient to `KL_PROBE_BETA` for the duration of each evaluation only, so
  that TRL's own evaluation computes the reference's log-probabilities and its KL, and logs `eval_kl`,
  exactly as with a KL penalty. Training never sees it. The evaluation's loss gains
  KL_PROBE_BETA x KL (RLOO: its rewards lose it), far below anything those numbers are read for.

Cost: one forward pass of the reference per evaluation batch, what TRL spends on its KL with a
penalty. Checked with TRL 1.16: both trainers read `self.beta` when they score a batch and compute
the loss, and nothing else about evaluation depends on it; no public option computes a KL without a
KL penalty.

The mixin also keeps every held-out completion of the latest evaluation with its score under each
reward (`heldout_rows`: prompt, completion, rewards), which TRL reduces to a mean and a spread per
reward before it logs them: the over-optimisation monitor compares evaluations prompt by prompt
(the same prompts every time), and with `heldout_samples_path` the rows are appended there (one JSON
line each, with the step; `rl/heldout_samples.jsonl`), so a resumed run reads them back and a user
can see what the policy wrote at each evaluation. TRL's own completion buffer holds one generation
batch, fewer than an evaluation's; the rows are taken where TRL scores them (`_calculate_rewards`,
whose scores are already gathered from every process).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REFERENCE_ADAPTER = "ref"  # TRL's name for the frozen copy of the adapter the policy started from
KL_PROBE_BETA = 1e-12  # nonzero: TRL computes the KL; tiny: what it adds to the eval loss is nothing


def kl_estimator(algorithm: str) -> str:
    """Which estimator the stage's `eval_kl` is: RLOO's first-order one, else GRPO's k3."""
    return "k1" if algorithm == "rloo" else "k3"


def keep_reference_adapter(model: Any) -> None:
    """Add a frozen copy of the PEFT model's "default" adapter as "ref", as TRL does when beta != 0."""
    if REFERENCE_ADAPTER in model.peft_config:
        return
    model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            reference = model.get_parameter(name.replace(".default.", f".{REFERENCE_ADAPTER}."))
            reference.data.copy_(param.data)
            reference.requires_grad_(False)


def with_heldout_kl(trainer_class: type) -> type:
    """`trainer_class` (TRL's GRPOTrainer or RLOOTrainer, or a subclass) logging `eval_kl` at any beta."""
    return type(trainer_class.__name__, (HeldoutKl, trainer_class), {})


class HeldoutKl:
    """Mixin for TRL's GRPOTrainer and RLOOTrainer: `eval_kl` at every evaluation, also with beta = 0,
    and every held-out completion's scores (`heldout_rows`; in `heldout_samples_path` when given).

    Keyword arguments only (as the rl stage builds its trainer).
    """

    _last_written_step: int | None = None  # the last evaluation step in heldout_samples_path

    def __init__(self, heldout_samples_path: Path | None = None, **kwargs: Any):
        from accelerate.utils import is_peft_model

        self.heldout_samples_path = heldout_samples_path
        self.heldout_rows: list[dict[str, Any]] = []
        args, model = kwargs.get("args"), kwargs.get("model")
        self._probe_kl = args is not None and args.beta == 0.0 and kwargs.get("eval_dataset") is not None
        started_from_adapter = is_peft_model(model)
        super().__init__(**kwargs)
        if not self._probe_kl:
            return
        if not is_peft_model(self.model):
            logger.warning(
                "held-out KL: the policy is not a PEFT model, so it has no reference; not measured"
            )
            self._probe_kl = False
        elif started_from_adapter:
            # Before training, so the adapter the policy starts from (a resumed run loads its checkpoint
            # into "default" later, in train()). RLOOTrainer keeps one at any beta; GRPOTrainer only
            # with a KL penalty. A fresh adapter needs none: disabled, it is the base it started as.
            keep_reference_adapter(self.model)

    def evaluate(self, *args: Any, **kwargs: Any):
        self.heldout_rows = []
        if not self._probe_kl:
            metrics = super().evaluate(*args, **kwargs)
        else:
            self.beta = KL_PROBE_BETA
            try:
                metrics = super().evaluate(*args, **kwargs)
            finally:
                self.beta = 0.0
        self._write_heldout_rows()
        return metrics

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if not self.model.training:  # an evaluation: keep each completion's scores
            from accelerate.utils import gather_object

            # Every process scores its share; the scores come back gathered, in process order.
            all_prompts, all_completions = gather_object(list(prompts)), gather_object(list(completions))
            names = list(self.reward_func_names)
            for prompt, completion, scores in zip(
                all_prompts, all_completions, rewards.tolist(), strict=True
            ):
                self.heldout_rows.append(
                    {
                        "prompt": prompt_text(prompt),
                        "completion": completion,
                        "rewards": {
                            n: v if math.isfinite(v) else None for n, v in zip(names, scores, strict=True)
                        },
                    }
                )
        return rewards

    def _write_heldout_rows(self) -> None:
        if self.heldout_samples_path is None or not self.heldout_rows or not self.is_world_process_zero():
            return
        step = self.state.global_step
        path = Path(self.heldout_samples_path)
        if self._last_written_step is None:  # what an interrupted run wrote: read once, then kept here
            self._last_written_step = last_step_in(path)
        if step <= self._last_written_step:
            return  # a resumed run evaluates again at its checkpoint's step: the first one stands
        with path.open("a", encoding="utf-8") as handle:
            for row in self.heldout_rows:
                handle.write(json.dumps({"step": step, **row}, default=str) + "\n")
        self._last_written_step = step


def last_step_in(path: Path) -> int:
    """The step of the last complete line of a JSON-lines file of records with a `step`; -1 if none."""
    if not path.is_file():
        return -1
    for line in reversed(path.read_text(encoding="utf-8").splitlines()):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue  # a line cut short by an interruption
        if isinstance(step, int):
            return step
    return -1


def prompt_text(prompt: Any) -> str:
    """A prompt as the text its completions are grouped by: a conversation's last message, else the string."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content"))
    return str(prompt)
