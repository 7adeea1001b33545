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
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, y = split.take(idx)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        hit = logits.argmax(dim=1) == y
        correct += int(hit.sum())
        if wanted is not None:
            mask = torch.isin(y, wanted)
            sub_correct += int(hit[mask].sum())
            sub_n += int(mask.sum())
    return {"loss": loss_sum / n, "accuracy": correct / n,
            "accuracy_classes": sub_correct / sub_n if sub_n else None}
