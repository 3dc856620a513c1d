"""Rewards for tests of `ntp-rl rewards check`: one hackable, one broken, one that fails on some samples."""


def mentions_answer(completions, **kwargs):
    """Hackable on purpose: pays any completion that contains 'Answer:', right or wrong."""
    return [1.0 if "Answer:" in c[-1]["content"] else 0.0 for c in completions]


def broken(completions, **kwargs):
    """Raises on every call."""
    raise ZeroDivisionError("division by zero in broken")


def fails_on_bad(completions, **kwargs):
    """Raises when a completion contains 'bad', else scores the length in characters."""
    texts = [c[-1]["content"] for c in completions]
    if any("bad" in t for t in texts):
        raise ValueError("saw 'bad'")
    return [float(len(t)) for t in texts]
