"""A reward that holds its first call open until the test releases it: a training step that lasts as
long as a test needs (to signal a run twice inside one step, say).

The test names a folder in NTP_RL_TEST_GATE; the first call of each process creates `reached-<rank>`
there and waits until `release` appears (5 minutes at most, so that a broken test cannot hang).
Without the variable the reward scores every completion 0 at once.
"""

import os
import time
from pathlib import Path

GATE_VARIABLE = "NTP_RL_TEST_GATE"
LONGEST_HOLD_SECONDS = 300


def held_reward(completions, **kwargs):
    gate = os.environ.get(GATE_VARIABLE)
    reached = Path(gate or ".") / f"reached-{os.environ.get('RANK', '0')}"
    if gate and not reached.exists():
        reached.touch()
        deadline = time.monotonic() + LONGEST_HOLD_SECONDS
        while not (Path(gate) / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return [0.0] * len(completions)
