"""Exports of a finished run's ``metrics.jsonl`` for other tools (pure functions of the rows).

- ``csv``: ``metrics.csv`` beside it, one row per round, one column per key that any row has
  (empty cells where a row lacks it, e.g. accuracy between evaluations);
- ``tensorboard``: event files under ``tensorboard/`` (every numeric key as a scalar against the
  round), through ``torch.utils.tensorboard``, which needs the optional ``tensorboard`` package
  (``pip install 'fedsim[export]'``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from .report import read_rows

EXPORTS = ("csv", "tensorboard")


def export_run(run_dir: str | Path, kinds: list[str]) -> list[Path]:
    """Write each export of ``run_dir``'s metrics; returns the paths written."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir / "metrics.jsonl")
    written = []
    for kind in kinds:
        if kind == "csv":
            written.append(_csv(rows, run_dir / "metrics.csv"))
        elif kind == "tensorboard":
            written.append(_tensorboard(rows, run_dir / "tensorboard"))
        else:
            raise ValueError(f"unknown export {kind!r}; choose from {EXPORTS}")
    return written


def _csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))  # first-seen order: round first
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, restval="")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return path


def _tensorboard(rows: list[dict], path: Path) -> Path:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError("--export tensorboard needs the tensorboard package: pip install 'fedsim[export]' "
                           "(or pip install tensorboard)") from None
    with SummaryWriter(log_dir=str(path)) as writer:
        for r in rows:
            for key, value in r.items():
                if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    writer.add_scalar(key, value, global_step=int(r["round"]))
    return path
