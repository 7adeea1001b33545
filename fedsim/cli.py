"""The ``fedsim`` command line.

    fedsim presets
    fedsim run PRESET_OR_TOML [--set key=value ...] [--out DIR] [--resume | --overwrite] [--seeds 0,1,2] [--arms A,B]
        [--export csv,tensorboard] [--quiet]
    fedsim repro ef21 --dataset phishing --method ef21,ef14 [--step-multiplier 8] [--json]
    fedsim launch | server | client | certs   (the gRPC runtime, see fedsim/experiments/grpc_commands.py)
    fedsim bench runtime [--rounds N] [--skip-flower] [--json]   (see fedsim/bench/)
    fedsim bench sim [--clients-per-round 10,50] [--population 100] [--rounds 5] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def _presets(_args) -> int:
    from .config import preset_names
    from .experiments.setup import load as load_config

    for name in preset_names():
        cfg = load_config(name)
        arms = f" [arms: {', '.join(cfg.arms)}]" if cfg.arms else ""
        print(f"{name:<22} {cfg.description}{arms}")
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0, got {text!r}")
    return seeds


def _export_list(text: str) -> list[str]:
    from .experiments.export import EXPORTS

    kinds = [x.strip() for x in text.split(",") if x.strip()]
    bad = [k for k in kinds if k not in EXPORTS]
    if not kinds or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(EXPORTS)}, got {text!r}")
    return kinds


def _run(args) -> int:
    from .experiments.run import check_out_dir, run_config
    from .experiments.setup import load as load_config

    cfg = load_config(args.config, args.set + ([f"seeds={args.seeds}"] if args.seeds else []))
    if args.arms:
        from .config import select_arms

        cfg = select_arms(cfg, args.arms)
    out = args.out or os.path.join("runs", cfg.name)
    check_out_dir(out, resume=args.resume, overwrite=args.overwrite)
    run_config(cfg, out, resume=args.resume, progress=not args.quiet)
    if args.export:
        from .experiments.export import export_run

        for metrics in sorted(Path(out).rglob("metrics.jsonl")):  # one per arm and seed
            try:
                for path in export_run(metrics.parent, args.export):
                    print(f"exported {path}")
            except RuntimeError as exc:  # an optional package missing: the run's own outputs are kept
                print(f"fedsim: error: {exc}", file=sys.stderr)
                return 2
    print(f"outputs in {out}/")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsim")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description="Federated learning simulator on Flower.")
    p.add_argument("--version", action="version", version=f"fedsim {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="list the packaged experiment presets").set_defaults(func=_presets)
    r = sub.add_parser("run", help="run an experiment in this process (virtual clock)")
    r.add_argument("config", help="preset name (see `fedsim presets`) or path to a TOML file")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set strategy.name=afa-cs (repeatable)")
    r.add_argument("--out", help="output directory (default runs/<name>)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    r.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (default: refuse)")
    r.add_argument("--export", type=_export_list, default=[], metavar="csv,tensorboard",
                   help="also write each run's metrics as metrics.csv and/or TensorBoard events")
    r.add_argument("--seeds", type=_seed_list, metavar="S1,S2,...",
                   help="run every arm once per seed and report mean ± std (same as --set 'seeds=[...]')")
    r.add_argument("--arms", type=lambda t: [a.strip() for a in t.split(",") if a.strip()], metavar="A1,A2,...",
                   help="run only these arms of a comparison")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    r.set_defaults(func=_run)
    from .experiments.grpc_commands import add_parsers as add_grpc_parsers
    add_grpc_parsers(sub)
    from .experiments.repro_cli import add_parser as add_repro_parser
    add_repro_parser(sub)
    from .privacy.cli import add_parser as add_privacy_parser
    add_privacy_parser(sub)
    from .attacks.cli import add_parser as add_attack_parser
    add_attack_parser(sub)
    from .bench import add_parser as add_bench_parser
    add_bench_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .data import DatasetUnavailable
    from .experiments.run import CheckpointError, NoValidAnswers

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DatasetUnavailable, CheckpointError, NoValidAnswers) as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `fedsim presets | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("fedsim: interrupted; metrics so far and the last checkpoint are kept (use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
