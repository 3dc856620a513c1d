"""Linear probes: closed-form ridge regression to one-hot targets, scored on held-out rows.

For features X (rows x width: hidden states of one layer) and class labels y, the probe is
W = argmin |Z W - onehot(y)|^2 + lam |W|^2 over the fit rows, where Z is X standardised with the fit
rows' mean and standard deviation plus a bias column; it predicts argmax(Z W). Reported per layer:

- `accuracy`: top-1 accuracy on the held-out rows;
- `majority`: always predicting the fit rows' most frequent class (the unigram / chance baseline);
- `shuffled`: the same procedure fitted to the fit rows' labels in a random order, scored on the true
  held-out labels: a control that should land at `majority`; above it, the procedure leaks.

lam is chosen from `RIDGE_GRID` on a validation slice of the fit rows' groups (never the held-out
rows); one eigendecomposition of Z'Z per layer serves the whole grid and every label set.

Limits: a linear read-out only, and least squares to one-hot targets is a weaker classifier than
logistic regression, so the accuracies are lower bounds on what the layer makes linearly available.
Decodable is not the same as used: a probe can read information the model never acts on.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

# lam / (number of fit rows); features are standardised, so Z'Z has diagonal ~ rows.
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
VALIDATION_FRACTION = 0.2  # of the fit groups, for choosing lam


def split_groups(groups: Sequence[int], fit_fraction: float, seed: int) -> list[bool]:
    """Fit (True) or held out (False) per row, whole groups (texts, items) on one side only."""
    unique = sorted(set(groups))
    random.Random(seed).shuffle(unique)
    count = min(max(1, round(fit_fraction * len(unique))), max(1, len(unique) - 1))
    fit_groups = set(unique[:count])
    return [g in fit_groups for g in groups]


def _standardise(x, fit):
    import torch

    x = x.float()
    mean = x[fit].mean(0)
    std = x[fit].std(0).clamp(min=1e-6) if int(fit.sum()) > 1 else torch.ones_like(mean)
    z = (x - mean) / std
    return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)


def _one_hot(labels, num_classes: int):
    import torch

    return torch.nn.functional.one_hot(labels, num_classes).float()


def _solve(z_train, targets: list, z_eval, ridges: Sequence[Sequence[float]]) -> list[list[Any]]:
    """Predictions on z_eval for each target matrix and each of its lams (one eigendecomposition)."""
    import torch

    # float64 for the decomposition only; the products around it are fine in float32.
    eigenvalues, vectors = torch.linalg.eigh((z_train.T @ z_train).double())
    eigenvalues, vectors = eigenvalues.float(), vectors.float()
    projected = z_eval @ vectors
    out = []
    for target, lams in zip(targets, ridges, strict=True):
        right = vectors.T @ (z_train.T @ target)
        out.append([(projected @ (right / (eigenvalues + lam).unsqueeze(1))).argmax(1) for lam in lams])
    return out


def probe_layers(
    features,
    labels: Mapping[str, Any],
    num_classes: Mapping[str, int],
    fit: Sequence[bool],
    groups: Sequence[int],
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Probe every layer of `features` [layers, rows, width] for each label set (LongTensor [rows]).

    Returns {name: {accuracy: [per layer], shuffled: [per layer], ridge: [per layer], majority,
    num_fit, num_held_out}}.
    """
    import torch

    fit_mask = torch.tensor(list(fit), dtype=torch.bool)
    held = ~fit_mask
    if int(held.sum()) == 0 or int(fit_mask.sum()) < 2:
        raise ValueError("a probe needs at least 2 fit rows and 1 held-out row")
    fit_groups = [g for g, f in zip(groups, fit, strict=True) if f]
    in_train = split_groups(fit_groups, 1.0 - VALIDATION_FRACTION, seed + 1)
    train = torch.zeros_like(fit_mask)
    train[fit_mask.nonzero().squeeze(1)] = torch.tensor(in_train, dtype=torch.bool)
    validation = fit_mask & ~train
    generator = torch.Generator().manual_seed(seed)

    names = list(labels)
    shuffled_labels = {}
    for name in names:
        y = labels[name].clone()
        fit_rows = fit_mask.nonzero().squeeze(1)
        y[fit_rows] = y[fit_rows[torch.randperm(len(fit_rows), generator=generator)]]
        shuffled_labels[name] = y
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        y = labels[name]
        majority_class = int(torch.bincount(y[fit_mask], minlength=num_classes[name]).argmax())
        results[name] = {
            "accuracy": [],
            "shuffled": [],
            "ridge": [],
            "majority": round(float((y[held] == majority_class).double().mean()), 4),
            "num_fit": int(fit_mask.sum()),
            "num_held_out": int(held.sum()),
        }
    for layer in range(features.shape[0]):
        z = _standardise(features[layer], fit_mask)
        variants = [(name, labels[name], False) for name in names] + [
            (name, shuffled_labels[name], True) for name in names
        ]
        chosen = []
        if int(validation.sum()) > 0 and int(train.sum()) > 1:
            n = int(train.sum())
            ridges = [r * n for r in RIDGE_GRID]
            targets = [_one_hot(y[train], num_classes[name]) for name, y, _ in variants]
            predictions = _solve(z[train], targets, z[validation], [ridges] * len(targets))
            for (_, y, _), per_ridge in zip(variants, predictions, strict=True):
                scores = [float((p == y[validation]).double().mean()) for p in per_ridge]
                best = max(range(len(scores)), key=lambda i: (scores[i], i))  # ties: the stronger ridge
                chosen.append(RIDGE_GRID[best])
        else:
            chosen = [1.0] * len(variants)
        n_fit = int(fit_mask.sum())
        targets = [_one_hot(y[fit_mask], num_classes[name]) for name, y, _ in variants]
        solved = _solve(z[fit_mask], targets, z[held], [[lam * n_fit] for lam in chosen])
        predictions = [per_ridge[0] for per_ridge in solved]
        true_held = {name: labels[name][held] for name in names}
        for (name, _, is_shuffled), prediction, lam in zip(variants, predictions, chosen, strict=True):
            accuracy = round(float((prediction == true_held[name]).double().mean()), 4)
            if is_shuffled:
                results[name]["shuffled"].append(accuracy)
            else:
                results[name]["accuracy"].append(accuracy)
                results[name]["ridge"].append(lam)
    for entry in results.values():
        best = max(range(len(entry["accuracy"])), key=lambda i: entry["accuracy"][i])
        entry["best_layer"] = best
        entry["best_accuracy"] = entry["accuracy"][best]
    return results
