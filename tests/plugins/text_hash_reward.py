"""User rewards loaded by file path in tests, whose spread over a prompt's samples is known in advance.

`text_hash` gives every distinct completion text its own score, so two samples of a prompt score the
same only if they are the same text (which two samples of the random tiny model practically never
are). `text_hash_unless_same` scores 0.0 for every completion of a prompt containing "[same]": no
spread, so a prompt filter must drop exactly those prompts.
"""

import hashlib


def _text(value):
    return value[-1]["content"] if isinstance(value, list) else value


def _hash(text):
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16**12


def text_hash(completions, **kwargs):
    return [_hash(_text(c)) for c in completions]


def text_hash_unless_same(completions, prompts, **kwargs):
    return [
        0.0 if "[same]" in _text(p) else _hash(_text(c)) for p, c in zip(prompts, completions, strict=True)
    ]
