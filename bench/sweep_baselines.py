"""The server-side settings of the ``baselines-fmnist`` preset, chosen by a sweep: each arm alone on
seed 9 (not one of the reported seeds 0-2), 30 rounds, one setting changed at a time. Prints one line
per run and writes ``sweep.json`` in the output folder.

    python3 bench/sweep_baselines.py [OUT [ARM ...]]   (default runs/sweep-baselines, every arm; ~12 min)
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from fedsim.experiments.run import NoValidAnswers, run_single  # noqa: E402
from fedsim.experiments.setup import load  # noqa: E402

# arm -> (dotted key in the arm's config, values tried); the local rate is swept first (FedAvg), the
# preset's value then holds for every arm's server-side sweep
GRID = {
    "fedavg": ("client.lr", [0.01, 0.03, 0.05, 0.1, 0.2]),
    "fedavgm": ("strategy.server_lr", [0.1, 0.3, 1.0]),
    "fedprox": ("strategy.mu", [0.001, 0.01, 0.1, 1.0]),
    "scaffold": ("client.lr", [0.005, 0.01, 0.02, 0.03]),  # diverged at the shared 0.05 on seed 0: its own rate
    "fedadam": ("server_optimizer.lr", [0.003, 0.01, 0.03, 0.1]),
    "fedadam-flower": ("strategy.args.eta", [0.003, 0.01, 0.03, 0.1]),
}


def _set(raw: dict, key: str, value) -> None:
    *path, last = key.split(".")
    for part in path:
        raw = raw.setdefault(part, {})
    raw[last] = value


def main(out: Path, arms: list[str]) -> None:
    base = load("baselines-fmnist")
    results = []
    for arm in arms:
        key, values = GRID[arm]
        for value in values:
            raw = copy.deepcopy(base.arms[arm])
            raw.update(seeds=[], seed=9, rounds=30, arms={})
            _set(raw, key, value)
            try:
                summary = run_single(load(raw), out / f"{arm}-{key}-{value}", progress=False)
            except (NoValidAnswers, FloatingPointError) as exc:  # the setting diverged: a result too
                results.append({"arm": arm, "key": key, "value": value, "diverged": str(exc)})
                print(f"{arm:15s} {key}={value:<6g} diverged", flush=True)
                continue
            results.append({"arm": arm, "key": key, "value": value, "final_accuracy": summary["final_accuracy"],
                            "tail_accuracy": summary["tail_accuracy"]})
            print(f"{arm:15s} {key}={value:<6g} final {summary['final_accuracy']:.4f} "
                  f"tail {summary['tail_accuracy']:.4f}", flush=True)
    (out / "sweep.json").write_text(json.dumps(results, indent=2))  # the arms of this call


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/sweep-baselines"), sys.argv[2:] or list(GRID))
