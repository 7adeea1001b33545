"""``fedsim repro ef21``: the EF21 logistic-regression reproduction from the command line.

    fedsim repro ef21 --dataset phishing [--data-dir DIR] --method ef21,ef14 --compressor top-k --k 1
                      --step-multiplier 8 --iterations 5000 [--tol 1e-5] [--json] [--out DIR]

Writes ``results.json`` and ``grad_norm_vs_bits.png`` to ``--out`` (default
``runs/repro-ef21-<dataset>/``). With one method the JSON is that run's object; with several it is
``{"runs": {method: object}}``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_parser(subparsers) -> None:
    """Register ``repro`` (with its ``ef21`` subcommand) on the top-level ``fedsim`` subparsers."""
    from fedsim.experiments.ef21_repro import COMPRESSORS, METHODS

    repro = subparsers.add_parser("repro", help="reproduce published experiments")
    which = repro.add_subparsers(dest="experiment", required=True)
    p = which.add_parser("ef21", help="EF21 / EF21-W / EF14 / GD on nonconvex logistic regression (LIBSVM)",
                         description="The official EF21 logistic-regression recipe "
                                     "(arXiv 2106.05203, Sec. 5).")
    p.add_argument("--dataset", default="phishing", help="LIBSVM file stem in the data folder (default phishing)")
    p.add_argument("--data-dir", help="folder holding <dataset>.txt (default $FEDSIM_LIBSVM_DIR, "
                                      "else ../shared/data/libsvm)")
    p.add_argument("--method", type=_methods(METHODS), default=["ef21"], metavar="M[,M...]",
                   help=f"one or a comma-separated list of {', '.join(METHODS)} (default ef21)")
    p.add_argument("--compressor", choices=COMPRESSORS, default="top-k",
                   help="contractive forms: top-k and unscaled rand-k (alpha = k/d), natural = (8/9) C_nat "
                        "(alpha = 8/9); default top-k; gd ignores it")
    p.add_argument("--k", type=_int_at_least(1), default=1, help="coordinates kept by top-k / rand-k (default 1)")
    p.add_argument("--step-multiplier", type=_positive(float), default=8.0,
                   help="step = multiplier x theoretical step (default 8, the official README's example)")
    p.add_argument("--iterations", type=_int_at_least(0), default=5000, help="default 5000")
    p.add_argument("--tol", type=_positive(float), help="stop early once ||grad f(x)||^2 < TOL")
    p.add_argument("--clients", type=_int_at_least(1), default=20, help="number of clients n (default 20)")
    p.add_argument("--participation", type=_fraction, default=0.5,
                   help="ef21-pp: probability that a client takes part in a round (default 0.5)")
    p.add_argument("--batch-fraction", type=_fraction, default=0.5,
                   help="ef21-sgd: minibatch size as a fraction of each client's rows (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of rand-k, natural, participation and minibatches")
    p.add_argument("--out", help="output folder (default runs/repro-ef21-<dataset>/)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_ef21)


def run_ef21(args) -> int:
    from fedsim.config import ConfigError
    from fedsim.experiments.ef21_repro import build_problem, plot_runs, run_method

    try:
        problem = build_problem(args.dataset, args.data_dir, args.clients)
    except ValueError as exc:  # bad name, too many clients, not two classes
        raise ConfigError(str(exc)) from exc
    if args.compressor in ("top-k", "rand-k") and args.k > problem.d:
        raise ConfigError(f"--k {args.k} exceeds the dimension d={problem.d} of {args.dataset}")
    runs = {}
    for method in args.method:
        runs[method] = run_method(problem, method, dataset=args.dataset, compressor=args.compressor, k=args.k,
                                  step_multiplier=args.step_multiplier, iterations=args.iterations,
                                  tol=args.tol, participation=args.participation,
                                  batch_fraction=args.batch_fraction, seed=args.seed)
    summaries = {m: r.summary for m, r in runs.items()}
    result = summaries[args.method[0]] if len(runs) == 1 else {"runs": summaries}
    out = Path(args.out or os.path.join("runs", f"repro-ef21-{args.dataset}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_runs({f"{m} (x{args.step_multiplier:g})": r for m, r in runs.items()}, out / "grad_norm_vs_bits.png",
              title=f"{args.dataset}: n={problem.n}, d={problem.d}, {_compressor_label(args)}")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_summary(summaries, args, out)
    return 0


def _print_summary(summaries: dict, args, out: Path) -> None:
    first = next(iter(summaries.values()))
    print(f"EF21 reproduction on {args.dataset}: n={first['n_clients']}, d={first['d']}, L={first['L']:.4g}, "
          f"L_QM={first['L_QM']:.4g}, L_AM={first['L_AM']:.4g}, step multiplier {args.step_multiplier:g}")
    print(f"{'method':<9} {'compressor':<10} {'step':>9} {'iters':>6} {'final |grad|^2':>15} "
          f"{'<1e-2':>6} {'<1e-3':>6} {'<1e-4':>6} {'<1e-5':>6} {'Mbit/client':>11} {'(paper)':>9}")
    for s in summaries.values():
        fb = ["-" if v is None else str(v) for v in s["first_below"].values()]
        final = "diverged" if s["final_grad_norm_sq"] is None else f"{s['final_grad_norm_sq']:.3e}"
        comp = s["compressor"] + (f"-{s['k']}" if s["compressor"] in ("top-k", "rand-k") else "")
        print(f"{s['method']:<9} {comp:<10} {s['step']:>9.3g} {s['iterations']:>6} {final:>15} "
              f"{fb[0]:>6} {fb[1]:>6} {fb[2]:>6} {fb[3]:>6} {s['bits_per_client'] / 1e6:>11.4f} "
              f"{s['bits_per_client_paper'] / 1e6:>9.4f}")
    print("first iteration below each tolerance ('-' = never); bits: exact wire size incl. Top-k indices and "
          "the initial round (paper: iterations*k*32)")
    print(f"outputs in {out}/")


def _compressor_label(args) -> str:
    return f"{args.compressor}" + (f" k={args.k}" if args.compressor in ("top-k", "rand-k") else "")


def _methods(allowed):
    def parse(text: str) -> list[str]:
        names = [m.strip() for m in text.split(",") if m.strip()]
        bad = [m for m in names if m not in allowed]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(bad) or repr(text)}; "
                                             f"choose from {', '.join(allowed)}")
        if len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"method listed twice in {text!r}")
        return names
    return parse


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value
    return parse


def _fraction(text: str) -> float:
    value = _positive(float)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value
