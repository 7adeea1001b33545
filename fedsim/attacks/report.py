"""Outputs of an attack evaluation: ``results.json``, ``results.md`` (the table) and ``grid.png``
(plus ``examples.pt``, the figure's images, so it can be re-plotted).

The table has one row per attack x defense x batch size, with the floor
of the same images beside every PSNR. The figure puts the originals above the reconstructions,
one column per image, each reconstruction captioned with its PSNR (and recovered label).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["markdown_table", "plot_grid", "write_outputs", "write_results_json"]

_COLUMNS = ("attack | threat | model | defense | B | N | images | labels | label acc | PSNR mean ± std "
            "| 95% interval (trials) | median / max | SSIM | MS-SSIM | ≥ floor+6 dB | recovered (≥ 20 dB) | floor | ε (δ) "
            "| utility acc | time (s) | steps run")


def _states(rows: list[dict]) -> str:
    states = sorted({r.get("state", "init") for r in rows if not r.get("error")}) or ["init"]
    return ", ".join("at initialisation" if s == "init" else f"after {s[6:]} FedAvg rounds" if s.startswith("round-")
                     else s for s in states)


def _attack_name(r: dict) -> str:
    """CPA's variant is named: fedsim's bias-gradient scaling is an extension of the paper's attack."""
    variant = r.get("variant")
    if r["attack"] != "cpa" or not variant:
        return r["attack"]
    return "cpa (extension: bias scale/sign)" if variant.startswith("fedsim") else "cpa (paper: min-max)"


def _interval(r: dict) -> str:
    lo, hi = r.get("psnr_ci95") or (None, None)
    return "–" if lo is None or lo != lo else f"[{lo:.2f}, {hi:.2f}]"


def _f(v, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if v is None else fmt.format(v)


def markdown_table(rows: list[dict], meta: dict) -> str:
    """The results table in Markdown, with a header stating the dataset floor and assumptions."""
    lines = [f"Dataset `{meta.get('dataset')}`: no-information floor (best constant image) "
             f"{meta.get('floor_psnr_dataset', float('nan')):.2f} dB over the {meta.get('pool')}-image "
             "pool; each row's `floor` is the same constant scored on that row's images. "
             f"An attack within 1-2 dB of its floor failed. Model state: {_states(rows)}; PSNR/SSIM in "
             "[0, 1] pixel space after Hungarian matching; MS-SSIM at 3 scales (see fedsim.attacks.metrics); "
             "LPIPS n/a (needs downloaded weights).", "",
             "| " + _COLUMNS + " |", "|" + "---|" * len(_COLUMNS.split("|"))]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['attack']} | | {r.get('model', '')} | {r['defense']} | {r['batch_size']} | "
                         f"{r['clients']} | {r['num_images']} | error: {r['error']} |" + " |" * 13)
            continue
        eps = "–" if r.get("epsilon") is None else f"{r['epsilon']:.3g} ({r['delta']:g})"
        lines.append(
            f"| {_attack_name(r)} | {r['threat']} | {r['model']} | {r['defense']} | {r['batch_size']} | "
            f"{r['clients']} | {r['num_images']} × {r['trials']} | {r['labels']} | "
            f"{r['label_accuracy']:.2f} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | {_interval(r)} | "
            f"{r['psnr_median']:.1f} / {r['psnr_max']:.1f} | {_f(r['ssim_mean'], '{:.3f}')} | "
            f"{_f(r.get('ms_ssim_mean'), '{:.3f}')} | "
            f"{r['frac_above_floor6']:.2f} | {_f(r.get('frac_recovered'))} | {r['floor_psnr']:.2f} | {eps} | "
            f"{_f(r.get('utility_accuracy'), '{:.3f}')} | {r['runtime']:.1f} | {_f(r.get('steps_run'), '{:.0f}')} |")
    return "\n".join(lines) + "\n"


def _show(ax, img: np.ndarray) -> None:
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_grid(examples: list, path: Path, title: str = "") -> None:
    """Rows: the originals, then one row per example (cell); columns: images; captions: PSNR.

    All examples are expected to share their originals (same batch size and trials); each
    example's reconstructions are placed under the original they were matched to."""
    examples = [e for e in examples if e.truth]
    if not examples:
        return
    cols = max(len(e.truth) for e in examples)
    ref = max(examples, key=lambda e: len(e.truth)).truth
    if cols == 1:  # one image per cell (B = 1): tiles in rows, not one tall column
        _plot_tiles(examples, ref[0], path, title)
        return
    height = 1.35 * (len(examples) + 1) + 0.6
    fig, axes = plt.subplots(len(examples) + 1, cols, figsize=(1.25 * cols + 1.6, height), squeeze=False)
    for j in range(cols):
        _show(axes[0, j], ref[j].numpy())
        axes[0, j].set_title("original", fontsize=7)
    axes[0, 0].set_ylabel("truth", fontsize=7)
    for i, e in enumerate(examples, start=1):
        for j in range(cols):
            ax = axes[i, j]
            if j < len(e.recon):
                _show(ax, e.recon[j].numpy())
                lab = "" if e.label[j] is None else f" y={e.label[j]}"
                ax.set_title(f"{e.psnr[j]:.1f} dB{lab}", fontsize=7)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(e.title.replace(" / B=", "\nB="), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # keep the title clear of the first row
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_tiles(examples: list, original, path: Path, title: str, per_row: int = 6) -> None:
    """B = 1: the original, then each cell's reconstruction with its cell name and PSNR, ``per_row`` a row."""
    import math
    import textwrap

    n = len(examples) + 1
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    width = max(1.9 * cols, 6.0)
    height = 2.6 * rows + 0.7
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    _show(axes[0, 0], original.numpy())
    axes[0, 0].axis("on")
    axes[0, 0].set_title("original", fontsize=7)
    for k, e in enumerate(examples, start=1):
        ax = axes[k // cols, k % cols]
        if e.recon:
            _show(ax, e.recon[0].numpy())
            ax.axis("on")
            lab = "" if e.label[0] is None else f" y={e.label[0]}"
            ax.set_title("\n".join(textwrap.wrap(e.title.replace(" / B=1", ""), 28)) + f"\n{e.psnr[0]:.1f} dB{lab}",
                         fontsize=6)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, int(width * 14))), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height), h_pad=1.2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results_json(rows: list[dict], meta: dict, config: dict, path: Path) -> None:
    Path(path).write_text(json.dumps({"meta": meta, "config": config, "rows": rows}, indent=1))


def write_outputs(out: Path, rows: list[dict], examples: list, meta: dict, config: dict,
                  grid_batch_size: int) -> None:
    """results.json, results.md and grid.png (one more ``grid_b{B}.png`` per other batch size)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(rows, meta, config, out / "results.json")
    (out / "results.md").write_text(markdown_table(rows, meta))
    torch.save([{"title": e.title, "truth": e.truth, "recon": e.recon, "psnr": e.psnr, "label": e.label}
                for e in examples], out / "examples.pt")  # the figure's images, to re-plot
    sizes = sorted({r["batch_size"] for r in rows})
    for b in sizes:
        chosen = [e for r, e in zip(rows, examples) if r["batch_size"] == b]
        name = "grid.png" if b == grid_batch_size else f"grid_b{b}.png"
        plot_grid(chosen, out / name, f"{meta.get('dataset')}: originals (top) and reconstructions, "
                                      f"B = {b} per client (first images of the trials)")
