"""Beyond next-token prediction: instruments that look inside a checkpoint, for base vs SFT vs RL.

Each instrument is one file and says in its docstring what it measures and what it cannot show:

- `future.py`: linear probes from the hidden state at position t to the token at t+k (Future Lens).
- `answer.py`: the final answer's last digit and size, read at the last prompt token, before any
  answer token exists.
- `rhyme.py`: a built-in set of couplet openings; the rhyme class of the line to come, read at the
  line break, and how often the generated line really rhymes.
- `credit.py`: how much of the gradient reaching position t comes from the loss at t+1 versus t+k,
  with a stop-gradient control that must show none beyond t+1.
- `distance.py`: NLL of reference text and KL to the base against the reward gained.

Shared parts (the `probes:` block of a suite or eval stage is `ntp_rl/probe_settings.py`): `texts.py` (text
sources), `hidden.py` (hidden states at chosen positions), `linear.py` (the ridge probe and its
baselines), `run.py` (every instrument over a set of checkpoints -> the report's `beyond_ntp`
section), `render.py` (Markdown, HTML, plots) and `commands.py` (`ntp-rl probe ...`).

Nothing here is imported by the training path; importing this package loads neither torch nor
transformers.
"""
