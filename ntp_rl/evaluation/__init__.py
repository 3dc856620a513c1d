"""Evaluation: checkpoints on a suite of held-out prompts -> a report with paired statistics.

- `suite.py`: eval suites (`eval/*.yaml`), validated; where suites and metric modules are found.
- `checkpoints.py`: `label=spec` model specs; one base model per group, adapters side by side.
- `harness.py`: `run_suite`, the whole evaluation (used by `ntp-rl eval` and the eval stage).
- `logprobs.py`: KL to the base and NLL of reference text, per token.
- `metrics.py`: metric modules (local `evaluate` modules), lengths, rewards, intervals.
- `report.py`: comparisons, flips, report.json/.md/samples.jsonl, `ntp-rl compare`.
- `html.py`: the self-contained report.html with inline plots.
"""
