"""``fedsim bench``: benchmarks that measure things side by side in one run and print ratios.

    fedsim bench runtime [--rounds N] [--clients N] [--processes 3] [--skip-flower] [--json]
    fedsim bench sim [--clients-per-round 10,50] [--population 100] [--rounds 5] [--device cpu|cuda] [--json]
    fedsim bench scale [--sizes 1000,10000,100000] [--processes 1,2,4] [--clients-per-round 100] [--json]
    fedsim bench noise [--dims 10000,100000,1000000] [--steps 100] [--mechanism sqrt-toeplitz] [--json]
    fedsim bench repair [--model mlp] [--steps 1000] [--delay 40] [--batch 4] [--device cpu|cuda] [--json]
    fedsim bench attack [--preset grid-fmnist] [--attacks dlg,ig,sme,ig-update] [--budgets 30,100,300,1000,3000] [--json]

Each benchmark is a module with ``add_parser(bench_subparsers)``, listed in ``BENCHMARKS``; the process
handling (own sessions, stop by PID) is in ``processes.py``, the memory sampler in ``memory.py``.
"""

from __future__ import annotations

import sys
from typing import NoReturn

BENCHMARKS = ("runtime", "sim", "scale", "noise", "repair", "attack")


def fedsim_cmd(*args: str) -> list[str]:
    """``python -m fedsim ARGS`` with this interpreter (each benchmark arm starts a fresh one)."""
    return [sys.executable, "-m", "fedsim", *args]


def set_args(overrides) -> list[str]:
    """``--set KEY=VALUE`` for each dotted override."""
    return [a for s in overrides for a in ("--set", s)]


def int_list(text: str, what: str) -> list[int]:
    """A comma-separated list of positive integers from the command line (``what`` names the flag)."""
    values = _number_list(text, what, int, "integers")
    if min(values) < 1:
        _bad(what, "positive integers", text)
    return values


def fraction_list(text: str, what: str) -> list[float]:
    """A comma-separated list of numbers in (0, 1] from the command line."""
    values = _number_list(text, what, float, "numbers")
    if not all(0 < v <= 1 for v in values):
        _bad(what, "numbers in (0, 1]", text)
    return values


def _number_list(text: str, what: str, kind, kinds: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        _bad(what, f"comma-separated {kinds}", text)
    return values


def _bad(what: str, expected: str, text: str) -> NoReturn:
    from ..config import ConfigError

    raise ConfigError(f"{what} must be {expected}, got '{text}'")


def add_parser(sub) -> None:
    import importlib

    b = sub.add_parser("bench", help="side-by-side benchmarks (ratios measured in one run)")
    bsub = b.add_subparsers(dest="bench", required=True)
    for name in BENCHMARKS:
        importlib.import_module(f"{__name__}.{name}").add_parser(bsub)


def progress_log(args):
    """The progress logger of a benchmark's command line: stderr when ``--json`` owns stdout."""
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print


def cli_setup(args):
    """What every round-timing benchmark's command line checks first: ``--rounds`` >= 2 (the steady round
    is the median of the rounds after the first); returns the progress logger (``progress_log``)."""
    from ..config import ConfigError

    if args.rounds < 2:
        raise ConfigError("--rounds must be >= 2 (the steady round is the median of rounds after the first)")
    return progress_log(args)
