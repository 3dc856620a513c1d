"""TRL's RewardTrainer, with each distinct response scored once per batch.

Labelled pairs of a policy's own samples share their texts: `k` samples of a prompt give up to
`k(k-1)/2` pairs, and each sample is in `k-1` of them. TRL's trainer scores a batch's chosen and
rejected sequences row by row, so a sample in several pairs of a batch is run through the model once
per pair. InstructGPT trained on all of a prompt's comparisons together for this reason: one forward
pass per response instead of one per comparison.

`SharedResponseRewardTrainer` keeps TRL's loss and metrics and changes two things:

- **Distinct rows once** (always): the batch's rows (prompt + response, tokenized, padded) are
  deduplicated before the forward and the scores gathered back to every row. The loss is the same
  function of the same scores; a repeated row's gradient is the sum over its copies either way.
- **A prompt's pairs together** (`group_pairs_by_prompt`): the training sampler shuffles whole
  prompts, then the pairs within each, so pairs that share samples share batches, and the
  deduplication above has something to remove. The pairs an epoch visits are the same; their order
  differs from TRL's pair-by-pair shuffle. Off, TRL's sampler is used unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch.utils.data import Sampler
from trl import RewardTrainer

DISTINCT_SHARE_KEY = "distinct_rows"  # logged: distinct rows / rows forwarded, per batch


def distinct_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """(ids, mask, inverse) of the distinct (ids, mask) rows, `inverse[i]` the distinct row of row i;
    None when every row is distinct (nothing to save)."""
    key = torch.cat([input_ids, attention_mask.to(input_ids.dtype)], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if unique.shape[0] == key.shape[0]:
        return None
    width = input_ids.shape[1]
    return unique[:, :width], unique[:, width:].to(attention_mask.dtype), inverse


class _OncePerDistinctRow:
    """Call the model on a batch's distinct rows only; its logits come back expanded to every row."""

    def __init__(self, model, record):
        self.model = model
        self.record = record

    def __call__(self, input_ids, attention_mask, **kwargs):
        rows = input_ids.shape[0]
        found = distinct_rows(input_ids, attention_mask)
        if found is None:
            self.record(1.0)
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        ids, mask, inverse = found
        self.record(ids.shape[0] / rows)
        outputs = self.model(input_ids=ids, attention_mask=mask, **kwargs)
        outputs.logits = outputs.logits.index_select(0, inverse.to(outputs.logits.device))
        return outputs


def prompt_groups(prompts: list[Any]) -> list[list[int]]:
    """Row indices grouped by prompt (equal prompts, wherever they are), groups in first-seen order."""
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


class PromptGroupSampler(Sampler[int]):
    """Whole prompts in a shuffled order, each prompt's rows shuffled within it; a pure function of
    (seed, epoch), so a resumed run visits the rows in the order of an uninterrupted one."""

    def __init__(self, groups: list[list[int]], seed: int):
        self.groups = groups
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(group) for group in self.groups)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        for g in torch.randperm(len(self.groups), generator=generator).tolist():
            group = self.groups[g]
            for r in torch.randperm(len(group), generator=generator).tolist():
                yield group[r]


class SharedResponseRewardTrainer(RewardTrainer):
    """RewardTrainer scoring each distinct row of a batch once; with `group_pairs_by_prompt`, a
    sampler that keeps a prompt's pairs together (module docstring)."""

    def __init__(self, *args, group_pairs_by_prompt: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_pairs_by_prompt = group_pairs_by_prompt

    def _get_train_sampler(self, train_dataset=None):
        # The dataset handed in has lost its unused columns (the prompt among them); its rows are
        # self.train_dataset's, in the same order.
        dataset = self.train_dataset
        columns = getattr(dataset, "column_names", None) or []
        same_rows = train_dataset is None or len(train_dataset) == len(dataset)
        if not self.group_pairs_by_prompt or "prompt" not in columns or not same_rows:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return PromptGroupSampler(prompt_groups(dataset["prompt"]), seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        record = self._metrics[mode][DISTINCT_SHARE_KEY].append
        return super().compute_loss(
            _OncePerDistinctRow(model, record),
            inputs,
            return_outputs=return_outputs,
            num_items_in_batch=num_items_in_batch,
        )
