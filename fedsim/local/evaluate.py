"""Central evaluation of a flat parameter vector on a held-out split."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core.params import ParamSpec


def evaluate(model: nn.Module, spec: ParamSpec, params: torch.Tensor, split, *, batch_size: int = 1000,
             limit: int | None = None) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``params`` on ``split`` (first ``limit`` rows)."""
    out = evaluate_classes(model, spec, params, split, batch_size=batch_size, limit=limit)
    return out["loss"], out["accuracy"]


@torch.no_grad()
def evaluate_classes(model: nn.Module, spec: ParamSpec, params: torch.Tensor, split, *, batch_size: int = 1000,
                     limit: int | None = None, classes: list[int] | None = None) -> dict[str, float | None]:
    """``{"loss", "accuracy", "accuracy_classes"}``; the last is the accuracy on the rows whose label
    is in ``classes`` (None when ``classes`` is not given or no such row is evaluated)."""
    model.load_state_dict(spec.unflatten(params))
    model.eval()
    n = len(split) if limit is None else min(limit, len(split))
    wanted = None if classes is None else torch.tensor(sorted(classes), dtype=torch.int64)
    loss_sum, correct, sub_correct, sub_n = 0.0, 0, 0, 0
    for _, logits, y in _logits(model, split, n, batch_size):
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        hit = logits.argmax(dim=1) == y
        correct += int(hit.sum())
        if wanted is not None:
            mask = torch.isin(y, wanted)
            sub_correct += int(hit[mask].sum())
            sub_n += int(mask.sum())
    return {"loss": loss_sum / n, "accuracy": correct / n,
            "accuracy_classes": sub_correct / sub_n if sub_n else None}


@torch.no_grad()
def client_accuracy(model: nn.Module, spec: ParamSpec, params: torch.Tensor, split, parts, *,
                    batch_size: int = 1000) -> dict[str, float]:
    """The global model on each client's own training data: ``{"client_accuracy_mean",
    "client_accuracy_worst10"}`` (the mean over clients, and the mean over the worst 10% of them, at
    least one); one pass over the split. Clients without data are left out."""
    model.load_state_dict(spec.unflatten(params))
    model.eval()
    hit = torch.zeros(len(split), dtype=torch.bool)
    for idx, logits, y in _logits(model, split, len(split), batch_size):
        hit[idx] = logits.argmax(dim=1) == y
    acc = torch.tensor([float(hit[torch.as_tensor(p, dtype=torch.int64)].double().mean()) for p in parts if len(p)])
    worst = torch.sort(acc).values[:max(1, len(acc) // 10)]
    return {"client_accuracy_mean": float(acc.mean()), "client_accuracy_worst10": float(worst.mean())}


def _logits(model: nn.Module, split, n: int, batch_size: int):
    """``(row indices, logits, labels)`` of the first ``n`` rows of ``split``, batch by batch."""
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, y = split.take(idx)
        yield idx, model(x), y
