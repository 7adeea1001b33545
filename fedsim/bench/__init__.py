"""``fedsim bench``: benchmarks that measure things side by side in one run and print ratios.

    fedsim bench runtime [--rounds N] [--clients N] [--processes 3] [--skip-flower] [--json]
    fedsim bench sim [--clients-per-round 10,50] [--population 100] [--rounds 5] [--device cpu|cuda] [--json]
    fedsim bench scale [--sizes 1000,10000,100000] [--processes 1,2,4] [--clients-per-round 100] [--json]

Each benchmark is a module with ``add_parser(bench_subparsers)``, listed in ``BENCHMARKS``; the process
handling (own sessions, stop by PID) is in ``processes.py``, the memory sampler in ``memory.py``.
"""

from __future__ import annotations

BENCHMARKS = ("runtime", "sim", "scale")


def add_parser(sub) -> None:
    import importlib

    b = sub.add_parser("bench", help="side-by-side benchmarks (ratios measured in one run)")
    bsub = b.add_subparsers(dest="bench", required=True)
    for name in BENCHMARKS:
        importlib.import_module(f"{__name__}.{name}").add_parser(bsub)
