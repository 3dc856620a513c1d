"""ntp-rl: SFT, RLHF and RLVR fine-tuning of Hugging Face causal LMs as a thin layer over TRL and PEFT.

The engine lives here (config, data, models, stages, pipeline, cli); recipes in `recipes/` say what
to run, rewards in `rewards/` (installed as `ntp_rl.rewards`) say how whole responses are scored.
"""

__version__ = "0.1.0"
