"""The errors of the reward layer, and which exit status the CLI gives each.

- `RewardSpecError`: a recipe names a reward that cannot be used (unknown name, import failure,
  wrong signature, missing data column). Bad input: exit status 2, raised before training starts.
- `RewardDataError`: the data, not the model, is wrong (a gold answer that cannot be parsed). Bad
  input too, and never turned into a skipped sample by the `on_error: skip` policy.
- `RewardRuntimeError`: a reward broke while scoring (raised, or returned something that is not one
  finite number or None per completion). A failure while running: exit status 1.
"""

from __future__ import annotations

from ntp_rl.errors import UserError


class RewardSpecError(UserError, ValueError):
    """A reward spec that cannot be resolved; the message names the spec and what to do."""


class RewardDataError(UserError, ValueError):
    """A data row that no reward can score fairly (e.g. an unparseable gold answer)."""


class RewardRuntimeError(RuntimeError):
    """A reward that raised or returned invalid values during scoring."""
