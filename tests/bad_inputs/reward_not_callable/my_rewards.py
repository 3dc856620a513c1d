"""Reward plug-ins for the bad-input corpus: some fine, some broken on purpose."""

NOT_CALLABLE = 3


def good(completions, **kwargs):
    return [0.0 for _ in completions]


def no_kwargs(completions, answer):
    return [0.0 for _ in completions]


def needs_difficulty(completions, difficulty, **kwargs):
    return [0.0 for _ in completions]
