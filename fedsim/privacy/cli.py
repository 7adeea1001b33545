"""``fedsim privacy`` commands.

    fedsim privacy plan --steps 64 --participations 4 --separation 16 --pattern fixed-epoch \\
        --mechanism optimal [--bands 8] [--save F.npz] [--load F.npz] [--epsilon 4 --delta 1e-5] [--json]
    fedsim privacy epsilon --noise-multiplier 1.0 --delta 1e-5 [--steps T --sampling q] [--correlated] [--json]

Bad arguments exit with status 2 and a message naming the argument.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from .accounting import ACCOUNTANTS, NEIGHBOURING, epsilon, noise_multiplier_for
from .factorization import Factorization
from .mechanisms import MECHANISMS, plan_factorization
from .patterns import KINDS, ParticipationSchema
from .workloads import LR_DECAYS, lr_schedule, workload


def _number(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {text}")
        if hi is not None and (v > hi or (hi_open and v == hi)):
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {text}")
        return v
    return parse


POS_INT = _number(int, 1)
POS_FLOAT = _number(float, 0, lo_open=True)
DELTA = _number(float, 0, 1, lo_open=True, hi_open=True)


def add_parser(subparsers) -> None:
    """Register ``privacy plan`` and ``privacy epsilon`` on the top-level subparsers."""
    p = subparsers.add_parser("privacy", help="DP planner: correlated-noise factorizations and accounting")
    sub = p.add_subparsers(dest="privacy_command", required=True)

    plan = sub.add_parser("plan", help="compute a factorization and its sensitivity, RMSE, noise multiplier")
    plan.add_argument("--steps", type=POS_INT, help="number of rounds n")
    plan.add_argument("--participations", type=POS_INT, help="max participations per client k (default 1)")
    plan.add_argument("--separation", type=POS_INT, help="min steps between participations b (default n/k)")
    plan.add_argument("--pattern", choices=KINDS, help="participation schema (default fixed-epoch)")
    plan.add_argument("--mechanism", choices=MECHANISMS)
    plan.add_argument("--bands", type=POS_INT, help="banded: number of bands (default b)")
    plan.add_argument("--buffers", type=POS_INT, help="blt: number of buffers (default 4)")
    plan.add_argument("--momentum", type=_number(float, 0, 1, hi_open=True),
                      help="workload momentum beta (default 0: prefix sums)")
    plan.add_argument("--lr-decay", choices=LR_DECAYS, help="workload learning-rate schedule (default none)")
    plan.add_argument("--max-iter", type=POS_INT, help="cap on optimiser iterations")
    plan.add_argument("--save", metavar="FILE", help="write the factorization (.npz)")
    plan.add_argument("--load", metavar="FILE", help="evaluate a saved factorization instead of computing one")
    plan.add_argument("--epsilon", type=POS_FLOAT, help="target epsilon: report the smallest noise multiplier")
    plan.add_argument("--delta", type=DELTA, help="target delta (with --epsilon)")
    plan.add_argument("--accountant", choices=ACCOUNTANTS, default="pld", help="for --epsilon (default pld)")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=_plan, _parser=plan)

    eps = sub.add_parser("epsilon", help="epsilon (RDP and PLD) of a Gaussian release")
    eps.add_argument("--noise-multiplier", type=POS_FLOAT, required=True)
    eps.add_argument("--delta", type=DELTA, required=True)
    eps.add_argument("--steps", type=POS_INT, default=1, help="independent noisy steps (default 1)")
    eps.add_argument("--sampling", type=_number(float, 0, 1, lo_open=True), default=1.0,
                     help="Poisson sampling probability per step (default 1)")
    eps.add_argument("--correlated", action="store_true",
                     help="matrix-factorization noise: the whole release is one Gaussian (steps ignored)")
    eps.add_argument("--json", action="store_true", help="print one JSON object")
    eps.set_defaults(func=_epsilon, _parser=eps)


def _factorization(args, parser) -> Factorization:
    if args.load:
        for name in ("bands", "buffers", "momentum", "lr_decay", "max_iter"):
            if getattr(args, name) is not None:
                parser.error(f"argument --{name.replace('_', '-')}: not allowed with --load")
        try:
            f = Factorization.load(args.load)
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"argument --load: cannot read {args.load}: {exc}")
        if args.mechanism and args.mechanism != f.mechanism:
            parser.error(f"argument --mechanism: {args.load} holds {f.mechanism!r}, not {args.mechanism!r}")
        if args.steps and args.steps != f.steps:
            parser.error(f"argument --steps: {args.load} has {f.steps} steps, not {args.steps}")
        s = f.schema
        if (args.pattern, args.participations, args.separation) != (None, None, None):
            f = f.with_schema(_schema(args, parser, f.steps, s))
        return f
    for name in ("steps", "mechanism"):
        if getattr(args, name) is None:
            parser.error(f"argument --{name} is required (unless --load is given)")
    schema = _schema(args, parser, args.steps, None)
    if args.bands is not None and args.mechanism != "banded":
        parser.error("argument --bands: only for --mechanism banded")
    if args.buffers is not None and args.mechanism != "blt":
        parser.error("argument --buffers: only for --mechanism blt")
    if args.bands is not None and args.bands > args.steps:
        parser.error(f"argument --bands: must be <= --steps ({args.steps}), got {args.bands}")
    A = workload(args.steps, args.momentum or 0.0,
                 lr_schedule(args.steps, args.lr_decay) if args.lr_decay else None)
    return plan_factorization(args.mechanism, schema, A=A, bands=args.bands, buffers=args.buffers or 4,
                              max_iter=args.max_iter)


def _schema(args, parser, n: int, saved: ParticipationSchema | None) -> ParticipationSchema:
    kind = args.pattern or (saved.kind if saved else "fixed-epoch")
    k = args.participations or (saved.participations if saved else 1)
    if k > n:
        parser.error(f"argument --participations: must be <= --steps ({n}), got {k}")
    b = args.separation or (saved.separation if saved else n // k)
    if b > n:
        parser.error(f"argument --separation: must be <= --steps ({n}), got {b}")
    if kind == "fixed-epoch" and n != k * b:
        parser.error(f"argument --separation: fixed-epoch needs --steps = --participations x --separation, "
                     f"got {n} != {k} x {b}")
    if kind == "min-separation" and k > 1 + (n - 1) // b:
        parser.error(f"argument --participations: {k} participations {b} steps apart do not fit in "
                     f"{n} steps (at most {1 + (n - 1) // b})")
    return ParticipationSchema(kind, n, k, b)


def _plan(args) -> int:
    parser = args._parser
    if (args.epsilon is None) != (args.delta is None):
        parser.error("argument --epsilon: --epsilon and --delta go together")
    start = time.perf_counter()
    f = _factorization(args, parser)
    m = f.metrics()
    solver = {"method": "closed form", "iterations": 0, "grad_norm": None, **f.solver}
    solver["seconds"] = solver.get("seconds", round(time.perf_counter() - start, 4))
    out = {"mechanism": f.mechanism, "pattern": f.schema.to_dict(), "structure": f.structure["kind"],
           **({"bands": int(f.structure["bands"])} if "bands" in f.structure else {}),
           **m.to_dict(), "solver": solver, "fingerprint": f.fingerprint(),
           **({"loaded": args.load} if args.load else {})}
    if not m.sensitivity_exact:
        out["note"] = "sensitivity is an upper bound (BandMF Alg. 4 / |X| bound), not exact"
    if f.mechanism == "optimal" and f.schema.kind == "min-separation" and f.schema.participations > 1:
        out["note"] = ("optimal under min-separation zeroes X_ij for |i-j| >= b: it is BandMF with "
                       "b bands")
    if args.epsilon is not None:
        sigma = noise_multiplier_for(args.epsilon, args.delta, correlated=True, accountant=args.accountant)
        row = float(f.noise_row_norms().max())
        out.update({"epsilon": args.epsilon, "delta": args.delta, "accountant": args.accountant,
                    "neighbouring": NEIGHBOURING, "sampling_scheme": f"{f.schema.kind} participation schema",
                    "noise_multiplier": sigma, **epsilon(sigma, args.delta, correlated=True),
                    "z_std_per_clip": sigma * m.sensitivity,
                    "max_round_noise_std_per_clip": sigma * m.sensitivity * row})
    if args.save:
        try:
            f.save(args.save)
        except OSError as exc:
            parser.error(f"argument --save: cannot write {args.save}: {exc}")
        out["saved"] = args.save
    if args.json:
        print(json.dumps(out))
    else:
        _summary(out)
    return 0


def _summary(out: dict) -> None:
    p = out["pattern"]
    print(f"{out['mechanism']} ({out['structure']}) for {p['kind']}: n={p['steps']}, k={p['participations']}, "
          f"b={p['separation']}")
    print(f"  sensitivity {out['sensitivity']:.6f}{'' if out['sensitivity_exact'] else ' (upper bound)'}")
    print(f"  rmse        {out['rmse']:.6f}")
    print(f"  max error   {out['max_error']:.6f}")
    print(f"  loss        {out['loss']:.6f}")
    s = out["solver"]
    grad = "" if s["grad_norm"] is None else f", grad norm {s['grad_norm']:.3g}"
    print(f"  solver      {s['method']}: {s['iterations']} iterations{grad}, {s['seconds']:.2f} s")
    if "noise_multiplier" in out:
        print(f"  noise multiplier {out['noise_multiplier']:.5f} for epsilon {out['epsilon']} at delta "
              f"{out['delta']} ({out['accountant']}); z std per unit clip {out['z_std_per_clip']:.5f}")
    if "note" in out:
        print(f"  note: {out['note']}")
    if "saved" in out:
        print(f"  saved to {out['saved']}")


def _epsilon(args) -> int:
    parser = args._parser
    if args.correlated and (args.steps != 1 or args.sampling != 1.0):
        parser.error("argument --correlated: the matrix-factorization release is one Gaussian mechanism; "
                     "--steps and --sampling do not apply")
    scheme = ("one correlated release" if args.correlated else
              "no sampling" if args.sampling == 1.0 else f"poisson (q={args.sampling:g})")
    out = {"noise_multiplier": args.noise_multiplier, "delta": args.delta, "steps": args.steps,
           "sampling": args.sampling, "correlated": args.correlated, "neighbouring": NEIGHBOURING,
           "sampling_scheme": scheme,
           **epsilon(args.noise_multiplier, args.delta, args.steps, args.sampling, correlated=args.correlated)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"epsilon {out['epsilon_rdp']:.4f} (RDP), {out['epsilon_pld']:.4f} (PLD) at delta {args.delta}")
    return 0
