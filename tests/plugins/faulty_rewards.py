"""Broken rewards for the end-to-end fault tests: each misbehaves in one way a user's reward might."""

import time

from ntp_rl.rewards import math_accuracy


def raises(completions, **kwargs):
    raise ZeroDivisionError("division by zero in my reward")


def returns_nan(completions, **kwargs):
    return [float("nan")] * len(completions)


def hangs(completions, **kwargs):
    time.sleep(3600)
    return [0.0] * len(completions)


def pathological_latex(completions, answer, **kwargs):
    """math_accuracy on completions with nested LaTeX appended: must finish under math-verify's deadline."""
    bad = "\\frac{" * 400 + "1" + "}" * 400 + " \\sqrt{" * 200
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return math_accuracy([f"{t}\nAnswer: {bad}" for t in texts], answer=answer, **kwargs)


def hangs_computing(completions, **kwargs):
    """Hangs inside torch (as a slow reward model does), not in Python: its thread cannot be dropped quietly."""
    import torch

    x = torch.randn(256, 256)
    while True:
        x = torch.tanh(x @ x)
