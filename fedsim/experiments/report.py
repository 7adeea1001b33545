"""Tables and figures of finished runs (pure functions of the rows in metrics.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.stats import ci95, mean_std


def _pyplot():
    """matplotlib (Agg) on first use: a run's first round should not wait ~0.3-1 s for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(runs: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """Accuracy and loss against round, virtual time and total MB uploaded, one line per run, plus
    the accuracy on the slow clients' classes when the runs track it."""
    stale = any(r.get("accuracy_stale_classes") is not None for rows in runs.values() for r in rows)
    attacked = any(r.get("attack_success") is not None for rows in runs.values() for r in rows)
    ylabels = (["test accuracy", "test loss (dashed: clients' training loss)"]
               + (["accuracy on the slow clients' classes"] if stale else [])
               + (["attack success rate"] if attacked else []))
    plt = _pyplot()
    fig, axes = plt.subplots(len(ylabels), 3, figsize=(15, 3.75 * len(ylabels)), squeeze=False)
    for label, rows in runs.items():
        uploaded, total = {}, 0
        for r in rows:
            total += r.get("bytes_up", 0)
            uploaded[r["round"]] = total / 1e6
        ev = [{**r, "mb_up": uploaded[r["round"]]} for r in rows if r.get("accuracy") is not None]
        trained = [{**r, "mb_up": uploaded[r["round"]]} for r in rows if r.get("train_loss") is not None]
        for col, xkey in enumerate(("round", "virtual_time", "mb_up")):
            xs = [r[xkey] for r in ev]
            for row, key in enumerate(("accuracy", "loss")):
                line, = axes[row, col].plot(xs, [r[key] for r in ev], label=label)
                if ev and f"{key}_std" in ev[0]:  # mean of several seeds: shade ± one std
                    axes[row, col].fill_between(xs, [r[key] - r[f"{key}_std"] for r in ev],
                                                [r[key] + r[f"{key}_std"] for r in ev], color=line.get_color(), alpha=0.2)
                if key == "loss" and trained:  # the clients' own training loss, every round (dashed)
                    axes[row, col].plot([r[xkey] for r in trained], [r["train_loss"] for r in trained], "--",
                                        color=line.get_color(), alpha=0.6, linewidth=0.8)
            if stale:
                axes[2, col].plot(xs, [r.get("accuracy_stale_classes") for r in ev], label=label)
            if attacked:
                axes[2 + stale, col].plot(xs, [r.get("attack_success") for r in ev], label=label)
    for col, xlabel in enumerate(("round", "virtual time (s)", "MB uploaded (all clients)")):
        for row, ylabel in enumerate(ylabels):
            axes[row, col].set_ylabel(ylabel)
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def comparison_table(summaries: dict[str, dict]) -> str:
    """A markdown table of the arms' headline numbers."""
    head = ("| arm | rounds | final accuracy | mean of last 5 evals | best accuracy | final loss | virtual time (s) "
            "| MB up | MB down | wall (s) |")
    private = any("epsilon" in s for s in summaries.values())
    stale = any("final_accuracy_stale_classes" in s for s in summaries.values())
    attacked = any("final_attack_success" in s for s in summaries.values())
    if private:
        head += " ε at δ (accountant; mechanism; sampling; neighbouring) |"
    if stale:
        head += " slow clients' classes: final / mean of last 5 |"
    if attacked:
        head += " attack success: final / mean of last 5 |"
    lines = [head, "|" + "---|" * (10 + private + stale + attacked)]
    for arm, s in summaries.items():
        name = f"{arm} (failed)" if "failed" in s else arm
        line = (f"| {name} | {s['rounds']} | {s['final_accuracy']:.4f} | {s['tail_accuracy']:.4f} | "
                f"{s['best_accuracy']:.4f} | {s['final_loss']:.4f} | {s['virtual_time']:.1f} | "
                f"{s['bytes_up'] / 1e6:.2f} | {s['bytes_down'] / 1e6:.2f} | {s['wall_seconds']:.1f} |")
        if private:
            line += _privacy_cell(s)
        if stale:
            line += (f" {s['final_accuracy_stale_classes']:.4f} / {s['tail_accuracy_stale_classes']:.4f} |"
                     if "final_accuracy_stale_classes" in s else " — |")
        if attacked:
            line += (f" {s['final_attack_success']:.4f} / {s['tail_attack_success']:.4f} |"
                     if "final_attack_success" in s else " — |")
        lines.append(line)
    lines += [f"\n{arm} failed: {s['failed']}" for arm, s in summaries.items() if "failed" in s]
    return "\n".join(lines)


def _privacy_cell(s: dict) -> str:
    return (f" {s['epsilon']:.3g} at {s['delta']:g} ({s['accountant']}; {s['mechanism']}; {s['sampling_scheme']}; "
            f"{s['neighbouring']}) |" if "epsilon" in s else " not private |")


SEED_FIELDS = ("final_accuracy", "tail_accuracy", "best_accuracy", "final_loss", "wall_seconds")
OPTIONAL_SEED_FIELDS = ("final_attack_success", "tail_attack_success",  # aggregated when every seed has them
                        "final_accuracy_stale_classes", "tail_accuracy_stale_classes",
                        "client_accuracy_mean", "client_accuracy_worst10")


def aggregate_seeds(per_seed: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """``{arm: {field: {"mean", "std", "values"}, "seeds": [...], privacy fields}}`` over seeds."""
    out = {}
    for arm, runs in per_seed.items():
        first = next(iter(runs.values()))
        row = {"seeds": sorted(runs)}
        failed = [seed for seed in sorted(runs) if "failed" in runs[seed]]
        if failed:
            row["failed_seeds"] = {str(seed): runs[seed]["failed"] for seed in failed}
        for f in SEED_FIELDS + tuple(f for f in OPTIONAL_SEED_FIELDS if all(f in r for r in runs.values())):
            values = [runs[seed][f] for seed in sorted(runs)]
            mean, std = mean_std(values)
            row[f] = {"mean": mean, "std": std, "ci95": list(ci95(values)), "values": values}
        for f in ("epsilon", "delta", "accountant", "mechanism", "sampling_scheme", "neighbouring"):
            if f in first:
                row[f] = max((r[f] for r in runs.values()), key=lambda v: (v is not None, v)) if f == "epsilon" \
                    else first[f]
        out[arm] = row
    return out


def seed_table(aggregate: dict[str, dict]) -> str:
    """Markdown table of mean ± sample std over seeds, with the final accuracy's 95% t-interval."""
    private = any("epsilon" in a for a in aggregate.values())
    attacked = any("final_attack_success" in a for a in aggregate.values())
    stale = any("tail_accuracy_stale_classes" in a for a in aggregate.values())
    worst = any("client_accuracy_worst10" in a for a in aggregate.values())
    head = ("| arm | seeds | final accuracy | 95% interval | mean of last 5 evals | best accuracy | final loss | "
            "wall (s) |" + (" ε at δ (accountant; mechanism; sampling; neighbouring) |" if private else "")
            + (" attack success (final) | 95% interval |" if attacked else "")
            + (" slow clients' classes, mean of last 5 evals | 95% interval |" if stale else "")
            + (" worst 10% of clients (final) | 95% interval |" if worst else ""))
    lines = [head, "|" + "---|" * (8 + private + 2 * attacked + 2 * stale + 2 * worst)]
    for arm, a in aggregate.items():
        cells = [f"{a[f]['mean']:.4f} ± {a[f]['std']:.4f}" for f in SEED_FIELDS[:4]]
        lo, hi = a["final_accuracy"]["ci95"]
        cells.insert(1, f"[{lo:.4f}, {hi:.4f}]")
        name = f"{arm} ({len(a['failed_seeds'])} failed)" if a.get("failed_seeds") else arm
        line = f"| {name} | {len(a['seeds'])} | {' | '.join(cells)} | {a['wall_seconds']['mean']:.1f} |"
        line += _privacy_cell(a) if private else ""
        if attacked:
            line += _mean_ci_cells(a.get("final_attack_success"))
        if stale:
            line += _mean_ci_cells(a.get("tail_accuracy_stale_classes"))
        if worst:
            line += _mean_ci_cells(a.get("client_accuracy_worst10"))
        lines.append(line)
    lines += [f"\n{arm} seed {seed} failed: {why}" for arm, a in aggregate.items()
              for seed, why in a.get("failed_seeds", {}).items()]
    return "\n".join(lines)


def _mean_ci_cells(field: dict | None) -> str:
    if not field:
        return " — | — |"
    return f" {field['mean']:.4f} ± {field['std']:.4f} | [{field['ci95'][0]:.4f}, {field['ci95'][1]:.4f}] |"


def mean_rows(runs: list[list[dict]]) -> list[dict]:
    """Rows averaged over runs of one arm (same rounds), for plotting the mean curve; accuracy and
    loss also get their sample std (``accuracy_std``, ``loss_std``) for a shaded band."""
    out = []
    for rows in zip(*runs):
        row = dict(rows[0])
        for key in ("accuracy", "loss", "train_loss", "accuracy_stale_classes", "attack_success", "virtual_time", "bytes_up"):
            vals = [r.get(key) for r in rows]
            if all(v is not None for v in vals):
                row[key], std = mean_std(vals)
                if key in ("accuracy", "loss"):
                    row[f"{key}_std"] = std
        out.append(row)
    return out


def budget_table(runs: dict[str, list[dict]], budgets: list[float]) -> str:
    """Overall and slow-class accuracy of each run at fixed virtual-time budgets (the last evaluation
    within each budget), and the virtual time at which the slow-class accuracy first reached half
    of the best any run attained."""
    evals = {arm: [r for r in rows if r.get("accuracy") is not None] for arm, rows in runs.items()}
    best = max((r.get("accuracy_stale_classes") or 0.0) for rows in evals.values() for r in rows)
    target = round(best / 2, 2)
    head = "| arm | " + " | ".join(f"t ≤ {b:g}: overall / slow classes" for b in budgets) + \
        f" | time to slow-class accuracy {target:g} |"
    lines = [head, "|" + "---|" * (len(budgets) + 2)]
    for arm, rows in evals.items():
        cells = []
        for b in budgets:
            last = [r for r in rows if r["virtual_time"] <= b + 1e-9]
            cells.append("—" if not last else f"{last[-1]['accuracy']:.3f} / {last[-1].get('accuracy_stale_classes') or 0:.3f}")
        hit = [r["virtual_time"] for r in rows if (r.get("accuracy_stale_classes") or 0) >= target]
        reached = f"{hit[0]:.0f}" if hit else "not reached"
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {reached} |")
    return "\n".join(lines)
