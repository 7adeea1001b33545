"""``fedsim bench attack``: reconstruction quality against the optimiser's budget, per attack.

Every point is a fresh ``fedsim attack`` evaluation of one cell (the preset's data, model state and
victims; no defense unless ``--set`` says otherwise) with the attack's budget set to that value --
``attack.<name>.evals`` for DLG/iDLG, ``attack.<name>.steps`` for the Adam attacks -- and the
paper's schedule, so a point at 300 steps is a real 300-step run (IG's step decays sit at fixed
fractions of the budget: a prefix of a longer run would not be one). ``trials`` trials per point
draw the same images and starting points for every attack and budget, so two attacks at one budget
are paired: ``sme`` against ``ig-update`` (SME with alpha fixed at 0, its paper's baseline) is
reported as the mean per-trial difference with its 95% interval. One more point per attack runs the
convergence stop (``plateau_steps``) with the largest budget as its cap and reports the steps it
took. Results go to ``budget.json`` (rewritten after every point) and ``budget.png``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import int_list, progress_log

LBFGS = ("dlg", "idlg")


def add_parser(bsub) -> None:
    s = bsub.add_parser("attack", help="attacks: PSNR against the optimiser's budget, and the convergence stop")
    s.add_argument("--preset", default="grid-fmnist", help="attack preset giving data, model state and victims")
    s.add_argument("--attacks", default="dlg,ig,sme,ig-update", help="comma-separated attacks")
    s.add_argument("--budgets", default="30,100,300,1000,3000",
                   help="budgets (DLG: gradient evaluations; the others: Adam steps)")
    s.add_argument("--batch-size", type=int, default=1, help="images per victim")
    s.add_argument("--trials", type=int, default=3, help="trials per point (different images and seeds)")
    s.add_argument("--plateau", type=int, default=100,
                   help="plateau_steps of the convergence-stop point (0: no such point)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the preset (repeatable), e.g. state=round-20")
    s.add_argument("--out", default=os.path.join("runs", "bench-attack"), help="output directory")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=_cli)


def _cli(args) -> int:
    from ..config import ConfigError

    if args.trials < 1 or args.batch_size < 1 or args.plateau < 0:
        raise ConfigError("--trials and --batch-size must be >= 1, --plateau >= 0")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    result = bench_attack(args.preset, attacks, int_list(args.budgets, "--budgets"), args.batch_size, args.trials,
                          args.plateau, args.set, Path(args.out), progress_log(args))
    print(json.dumps(result, indent=2) if args.json else format_tables(result))
    return 0


def _family(attack: str) -> str:
    return "sme" if attack == "ig-update" else attack


def bench_attack(preset: str, attacks: list[str], budgets: list[int], batch_size: int, trials: int,
                 plateau: int, overrides: list[str], out: Path, log=print) -> dict:
    from ..attacks.config import ATTACKS, ConfigError, load_attack_config
    from ..attacks.evaluate import evaluate
    from ..core.stats import ci95

    for a in attacks:
        if a not in ATTACKS or a in ("cpa", "analytic", "imprint"):
            raise ConfigError(f"--attacks: {a!r} has no step budget; choose from dlg, idlg, ig, sme, ig-update, unrolled")
    budgets = sorted(set(budgets))
    out.mkdir(parents=True, exist_ok=True)
    federations: dict = {}  # one training run serves every point of a round-R state
    result = {"preset": preset, "batch_size": batch_size, "trials": trials, "overrides": list(overrides),
              "points": [], "paired": []}

    def point(attack: str, budget: int, stop: int) -> dict:
        fam = _family(attack)
        key = "evals" if attack in LBFGS else "steps"
        cfg = load_attack_config(preset, [*overrides, f'grid.attacks=["{attack}"]', f"grid.batch_sizes=[{batch_size}]",
                                          f"trials={trials}", "utility.rounds=0", f"attack.{fam}.{key}={budget}",
                                          f"attack.{fam}.plateau_steps={stop}"])
        cfg = _first_defense(cfg)
        (row,), _, _ = evaluate(cfg, progress=False, federations=federations)
        if row.get("error"):
            raise RuntimeError(f"{attack} at budget {budget}: {row['error']}")
        p = {"attack": attack, "budget": budget, "stop": stop, "steps_run": row["steps_run"],
             "psnr_mean": row["psnr_mean"], "psnr_ci95": row["psnr_ci95"], "trial_means": row["psnr_trial_means"],
             "ssim_mean": row["ssim_mean"], "ms_ssim_mean": row["ms_ssim_mean"], "floor_psnr": row["floor_psnr"], "defense": row["defense"],
             "state": row["state"], "model": row["model"], "seconds_per_trial": row["runtime"] / trials}
        result["points"].append(p)
        (out / "budget.json").write_text(json.dumps(result, indent=2))
        log(f"bench attack: {attack} budget {budget}{' (stop)' if stop else ''}: {p['psnr_mean']:.2f} dB "
            f"(floor {p['floor_psnr']:.2f}), {p['steps_run']:.0f} steps run, {p['seconds_per_trial']:.1f} s/trial")
        return p

    for attack in attacks:
        for budget in budgets:
            point(attack, budget, 0)
        if plateau:
            point(attack, budgets[-1], plateau)
    if "sme" in attacks and "ig-update" in attacks:  # paired: same images, observation and start
        by = {(p["attack"], p["budget"], p["stop"]): p for p in result["points"]}
        for (attack, budget, stop), a in by.items():
            b = by.get(("ig-update", budget, stop))
            if attack != "sme" or b is None:
                continue
            diffs = [x - y for x, y in zip(a["trial_means"], b["trial_means"])]
            result["paired"].append({"budget": budget, "stop": stop, "sme_minus_ig_update": sum(diffs) / len(diffs),
                                     "ci95": list(ci95(diffs)) if len(diffs) > 1 else None, "diffs": diffs})
    (out / "budget.json").write_text(json.dumps(result, indent=2))
    _plot(result, out / "budget.png")
    return result


def _first_defense(cfg):
    """One cell: the first defense of the preset's grid (a single-cell preset has one already)."""
    import dataclasses

    grid = dataclasses.replace(cfg.grid, defenses=list(cfg.grid.defenses[:1]))
    return dataclasses.replace(cfg, grid=grid)


def format_tables(result: dict) -> str:
    pts = result["points"]
    if not pts:
        return "no points"
    head = pts[0]
    lines = [f"PSNR against the optimiser's budget: preset {result['preset']}, B = {result['batch_size']}, "
             f"{result['trials']} trials per point, defense {head['defense']}, model state {head['state']}",
             "", "| attack | model | budget | stop | steps run | PSNR mean | 95% interval | SSIM | floor | s/trial |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in pts:
        lo, hi = p["psnr_ci95"] or (float("nan"), float("nan"))
        ssim = "–" if p["ssim_mean"] is None else f"{p['ssim_mean']:.3f}"
        lines.append(f"| {p['attack']} | {p['model']} | {p['budget']} | {'plateau ' + str(p['stop']) if p['stop'] else 'schedule'} "
                     f"| {p['steps_run']:.0f} | {p['psnr_mean']:.2f} | [{lo:.2f}, {hi:.2f}] | {ssim} | "
                     f"{p['floor_psnr']:.2f} | {p['seconds_per_trial']:.1f} |")
    if result["paired"]:
        lines += ["", "SME minus its alpha = 0 baseline (ig-update) on the same updates, per-trial PSNR difference:", "",
                  "| budget | stop | mean difference (dB) | 95% interval | per trial |", "|---|---|---|---|---|"]
        for q in result["paired"]:
            lo, hi = q["ci95"] or (float("nan"), float("nan"))
            lines.append(f"| {q['budget']} | {'plateau' if q['stop'] else 'schedule'} | {q['sme_minus_ig_update']:+.2f} | "
                         f"[{lo:+.2f}, {hi:+.2f}] | {', '.join(f'{d:+.2f}' for d in q['diffs'])} |")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    attacks = list(dict.fromkeys(p["attack"] for p in result["points"]))
    for i, attack in enumerate(attacks):
        color = f"C{i}"
        pts = [p for p in result["points"] if p["attack"] == attack and not p["stop"]]
        xs = [p["budget"] for p in pts]
        ys = [p["psnr_mean"] for p in pts]
        err = [[y - (p["psnr_ci95"] or (y, y))[0] for p, y in zip(pts, ys)],
               [(p["psnr_ci95"] or (y, y))[1] - y for p, y in zip(pts, ys)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", color=color, capsize=3,
                    label=attack + (" (evaluations)" if attack in LBFGS else " (steps)"))
        for p in (q for q in result["points"] if q["attack"] == attack and q["stop"]):
            ax.plot([p["steps_run"]], [p["psnr_mean"]], marker="*", markersize=12, color=color, linestyle="none")
    floors = [p["floor_psnr"] for p in result["points"]]
    ax.axhline(sum(floors) / len(floors), color="grey", linestyle="--", linewidth=1, label="no-information floor")
    ax.set_xscale("log")
    ax.set_xlabel("budget (L-BFGS evaluations / Adam steps); ★ = convergence stop at its steps run")
    ax.set_ylabel("PSNR (dB), mean over trials, 95% interval")
    ax.set_title(f"{result['preset']}: PSNR against budget, B = {result['batch_size']}, {result['trials']} trials",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
