"""``fedsim attack PRESET_OR_TOML [--set key=value ...] [--out DIR] [--quiet]``.

Runs an attack evaluation (one cell or a grid) and writes ``results.json``, ``results.md`` and
``grid.png`` to ``--out`` (default ``runs/<name>``); ``results.json`` is rewritten after every
cell, so an interrupted grid keeps what it finished.
"""

from __future__ import annotations

import os

__all__ = ["add_parser"]


def _run(args) -> int:
    from .config import attack_preset_names, load_attack_config
    from .evaluate import evaluate
    from .report import markdown_table, write_outputs, write_results_json

    if args.config == "list":
        for name in attack_preset_names():
            print(f"{name:<22} {load_attack_config(name).description}")
        return 0
    cfg = load_attack_config(args.config, args.set)
    out = args.out or os.path.join("runs", cfg.name)
    os.makedirs(out, exist_ok=True)
    config = cfg.to_dict()
    partial = os.path.join(out, "results.json")
    rows, examples, meta = evaluate(cfg, progress=not args.quiet,
                                    on_row=lambda rs, m: write_results_json(rs, m, config, partial))
    grid_b = cfg.report.grid_batch_size or cfg.batch_sizes[0]
    write_outputs(out, rows, examples, meta, config, grid_b)
    print(markdown_table(rows, meta))
    print(f"outputs in {out}/ (results.json, results.md, grid.png)")
    return 0


def add_parser(subparsers) -> None:
    """Register ``fedsim attack`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("attack", help="gradient-inversion attacks against defenses (one cell or a grid)")
    p.add_argument("config", help="attack preset name (see `fedsim attack list`), 'list', or a TOML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set attack.batch_size=4 --set defense.name=dp (repeatable)")
    p.add_argument("--out", help="output directory (default runs/<name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
