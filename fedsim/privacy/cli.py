"""``fedsim privacy`` commands.

    fedsim privacy plan --steps 64 --participations 4 --separation 16 --pattern fixed-epoch \\
        --mechanism optimal [--bands 8] [--save F.npz] [--load F.npz] [--epsilon 4 --delta 1e-5] [--json]
    fedsim privacy epsilon --noise-multiplier 1.0 --delta 1e-5 [--steps T --sampling q]
        [--mechanism independent|correlated|banded-amplified --bands B] [--accountant pld|rdp] [--json]

Bad arguments exit with status 2 and a message naming the argument.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from .accounting import ACCOUNTANTS, NEIGHBOURING, amplified_steps, epsilon, noise_multiplier_for
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
EPSILON_MECHANISMS = ("independent", "correlated", "banded-amplified")
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
    plan.add_argument("--mechanism", choices=MECHANISMS + ("banded-amplified",),
                      help="banded-amplified: choose the bands b minimising error at --epsilon under b-cyclic "
                           "Poisson sampling (needs --cohort-fraction)")
    plan.add_argument("--cohort-fraction", type=_number(float, 0, 1, lo_open=True),
                      help="banded-amplified: expected fraction of all clients per round; with b groups each "
                           "eligible client joins with q = b x this")
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
    eps.add_argument("--steps", type=POS_INT, default=1, help="noisy steps or rounds n (default 1)")
    eps.add_argument("--sampling", type=_number(float, 0, 1, lo_open=True), default=1.0,
                     help="Poisson sampling probability q per step (banded-amplified: of each member of "
                          "the eligible group; default 1)")
    eps.add_argument("--mechanism", choices=EPSILON_MECHANISMS, default="independent",
                     help="independent: DP-SGD / DP-FedAvg; correlated: one matrix-factorization release "
                          "(no amplification); banded-amplified: BandMF with b-cyclic Poisson sampling")
    eps.add_argument("--bands", type=POS_INT, help="banded-amplified: bands b = number of cyclic groups")
    eps.add_argument("--correlated", action="store_true", help="same as --mechanism correlated")
    eps.add_argument("--accountant", choices=ACCOUNTANTS, default="pld",
                     help="which accountant gives `epsilon` (default pld; both are printed)")
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
    if (args.cohort_fraction is not None) != (args.mechanism == "banded-amplified"):
        parser.error("argument --cohort-fraction: required with --mechanism banded-amplified, and only with it")
    if args.mechanism == "banded-amplified":
        return _plan_amplified(args, parser)
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


def _plan_amplified(args, parser) -> int:
    """Amplified BandMF (arXiv 2306.08153, Thm 4): for each candidate b, the column-normalised
    BandMF factor for b-min-separation, the σ reaching --epsilon as DP-SGD with Poisson q = b·f over
    ceil(n/b) steps, and the error σ·sqrt(mean_t ‖B[t]‖²) (one participation has sensitivity 1)."""
    n, f = args.steps, args.cohort_fraction
    if n is None or args.epsilon is None:
        parser.error("argument --mechanism banded-amplified: needs --steps, --epsilon and --delta")
    for name in ("load", "save", "pattern", "participations", "separation", "buffers"):
        if getattr(args, name) is not None:
            parser.error(f"argument --{name}: not used with --mechanism banded-amplified")
    top = min(n, int(1.0 / f + 1e-9))  # q = b·f must stay <= 1
    if args.bands is not None:
        if args.bands > top:
            parser.error(f"argument --bands: at most {top} (--steps, and b x --cohort-fraction <= 1), got {args.bands}")
        candidates = [args.bands]
    else:
        candidates = sorted({1, top} | {1 << i for i in range(top.bit_length()) if 1 << i <= top})
    A = workload(n, args.momentum or 0.0, lr_schedule(n, args.lr_decay) if args.lr_decay else None)
    rows = []
    for i, b in enumerate(candidates):
        print(f"[{i + 1}/{len(candidates)}] bands {b}: planning BandMF for n={n}", file=sys.stderr, flush=True)
        k = amplified_steps(n, b)
        schema = ParticipationSchema("min-separation", n, k, b) if k > 1 else ParticipationSchema.single(n)
        fac = plan_factorization("banded", schema, A=A, bands=b, max_iter=args.max_iter)
        sigma = noise_multiplier_for(args.epsilon, args.delta, steps=k, sampling=min(1.0, b * f),
                                     accountant=args.accountant)
        unit = float((fac.B() ** 2).sum(axis=1).mean() ** 0.5)
        rows.append({"bands": b, "sampling": min(1.0, b * f), "dp_sgd_steps": k, "noise_multiplier": sigma,
                     "rmse": sigma * unit, "rmse_per_unit_noise": unit})
    best = min(rows, key=lambda r: r["rmse"])
    out = {"mechanism": "banded-amplified", "steps": n, "cohort_fraction": f, "epsilon": args.epsilon,
           "delta": args.delta, "accountant": args.accountant, "neighbouring": NEIGHBOURING,
           "sampling_scheme": f"{best['bands']}-cyclic poisson (q={best['sampling']:g}), amplified BandMF",
           **best, "candidates": rows}
    if args.json:
        print(json.dumps(out))
    else:
        for r in rows:
            print(f"bands {r['bands']:>5}: q {r['sampling']:.4g}, {r['dp_sgd_steps']} steps, noise multiplier "
                  f"{r['noise_multiplier']:.4f}, rmse {r['rmse']:.4f}{'  <- best' if r is best else ''}")
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
    mechanism = "correlated" if args.correlated else args.mechanism
    if args.correlated and args.mechanism not in ("independent", "correlated"):
        parser.error("argument --correlated: not allowed with --mechanism " + args.mechanism)
    if mechanism == "correlated" and (args.steps != 1 or args.sampling != 1.0):
        parser.error("argument --correlated: the matrix-factorization release is one Gaussian mechanism; "
                     "--steps and --sampling do not apply")
    if (args.bands is not None) != (mechanism == "banded-amplified"):
        parser.error("argument --bands: required with --mechanism banded-amplified, and only with it")
    steps = args.steps
    if mechanism == "banded-amplified":
        if args.bands > args.steps:
            parser.error(f"argument --bands: must be <= --steps ({args.steps}), got {args.bands}")
        steps = amplified_steps(args.steps, args.bands)  # arXiv 2306.08153, Thm 4
        scheme = f"{args.bands}-cyclic poisson (q={args.sampling:g}), amplified BandMF"
    elif mechanism == "correlated":
        scheme = "one correlated release"
    else:
        scheme = "no sampling" if args.sampling == 1.0 else f"poisson (q={args.sampling:g})"
    both = epsilon(args.noise_multiplier, args.delta, steps, args.sampling, correlated=mechanism == "correlated")
    out = {"epsilon": both[f"epsilon_{args.accountant}"], **both, "accountant": args.accountant,
           "noise_multiplier": args.noise_multiplier, "delta": args.delta, "steps": args.steps,
           "sampling": args.sampling, "mechanism": mechanism, "correlated": mechanism == "correlated",
           **({"bands": args.bands, "dp_sgd_steps": steps} if args.bands else {}),
           "neighbouring": NEIGHBOURING, "sampling_scheme": scheme}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"epsilon {out['epsilon']:.4f} ({args.accountant}; RDP {out['epsilon_rdp']:.4f}, PLD "
              f"{out['epsilon_pld']:.4f}) at delta {args.delta}, {scheme}")
    return 0
