"""A user reward loaded by file path in tests: longer completions score higher (varies on a random model)."""


def completion_length(completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [len(t) / 100.0 for t in texts]
