"""``fedsim bench``: benchmarks that measure things side by side in one run and print ratios.

    fedsim bench runtime [--rounds N] [--clients N] [--processes 3] [--skip-flower] [--json]

Each benchmark is a module with ``add_parser(bench_subparsers)``; add new ones (e.g. ``sim``) to
``BENCHMARKS``.
"""

from __future__ import annotations

BENCHMARKS = ("runtime",)


def add_parser(sub) -> None:
    import importlib

    b = sub.add_parser("bench", help="side-by-side benchmarks (ratios measured in one run)")
    bsub = b.add_subparsers(dest="bench", required=True)
    for name in BENCHMARKS:
        importlib.import_module(f"{__name__}.{name}").add_parser(bsub)
