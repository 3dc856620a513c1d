def label(completions, **kwargs):
    raise KeyError("score")
