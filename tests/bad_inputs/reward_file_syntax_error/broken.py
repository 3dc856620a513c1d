def fn(completions, **kwargs)
    return []
