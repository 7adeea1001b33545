"""``fedsim bench noise``: server memory and time per round of DP-MF's correlated noise for a dense
factor, with the past noise stored against regenerated from its seeds, side by side.

A dense (``optimal``) or Toeplitz (``sqrt-toeplitz``) factor makes w_t depend on every earlier
w_j. Storing them costs n·D float64 (88 GB at n = 2,000 rounds for an 11M-parameter model);
``NoiseStream`` instead regenerates each z_j from its key once that store would pass
``STORE_LIMIT``, so its state is the step alone and its memory per round is O(D), at O(t·D) work
in round t. For each D of ``--dims`` this runs both modes of the same stream for ``--steps`` rounds
and reports the state each keeps (MiB), the mean and last-round milliseconds, and the largest
difference between their noise (they must be the same numbers).
"""

from __future__ import annotations

import json
import time

import numpy as np

from . import int_list

MIB = 1024 * 1024


def add_parser(bsub) -> None:
    s = bsub.add_parser("noise", help="DP-MF dense-factor noise: stored past noise vs regenerated from seeds")
    s.add_argument("--dims", default="10000,100000,1000000", help="model dimensions D (comma-separated)")
    s.add_argument("--steps", type=int, default=100, help="rounds n of the factorization (default 100)")
    s.add_argument("--mechanism", default="sqrt-toeplitz", choices=("optimal", "sqrt-toeplitz"),
                   help="a dense-factor mechanism (default sqrt-toeplitz: no optimiser to wait for)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=_cli)


def _cli(args) -> int:
    from ..config import ConfigError

    if args.steps < 2:
        raise ConfigError("--steps must be >= 2")
    result = bench_noise(int_list(args.dims, "--dims"), args.steps, args.mechanism)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if all(r["max_abs_diff"] <= 1e-9 for r in result["runs"]) else 1


def bench_noise(dims: list[int], steps: int, mechanism: str) -> dict:
    import torch

    from ..privacy import NoiseStream, ParticipationSchema, plan_factorization

    f = plan_factorization(mechanism, ParticipationSchema("fixed-epoch", steps, 1, steps))
    runs = []
    for dim in dims:
        streams = {"stored": NoiseStream(f, dim, seed=0, dtype=torch.float64, store_limit=1 << 62),
                   "regenerated": NoiseStream(f, dim, seed=0, dtype=torch.float64, store_limit=0)}
        row, last = {"dim": dim, "steps": steps}, {}
        for name, stream in streams.items():
            row[f"{name}_state_mib"] = stream._buf.numel() * stream._buf.element_size() / MIB
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                last[name] = stream.next()
                times.append(time.perf_counter() - t0)
            row[f"{name}_ms_mean"] = 1e3 * float(np.mean(times))
            row[f"{name}_ms_last"] = 1e3 * times[-1]
        row["max_abs_diff"] = float((last["stored"] - last["regenerated"]).abs().max())  # the last round's noise
        runs.append(row)
    return {"mechanism": mechanism, "runs": runs}


def format_table(result: dict) -> str:
    lines = [f"{result['mechanism']} factor; state = past noise each mode keeps (float64)", "",
             "| D | rounds | stored: state (MiB) | stored: ms/round (mean, last) | regenerated: state (MiB) "
             "| regenerated: ms/round (mean, last) | same noise (max abs diff) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['dim']} | {r['steps']} | {r['stored_state_mib']:.1f} | {r['stored_ms_mean']:.1f}, "
                     f"{r['stored_ms_last']:.1f} | {r['regenerated_state_mib']:.1f} | {r['regenerated_ms_mean']:.1f}, "
                     f"{r['regenerated_ms_last']:.1f} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)
