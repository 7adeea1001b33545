"""Outputs of an attack evaluation: ``results.json``, ``results.md`` (the table) and ``grid.png``
(plus ``examples.pt``, the figure's images, so it can be re-plotted).

The table has one row per attack x defense x batch size, with the floor
of the same images beside every PSNR. The figure puts the originals first and then one block per cell, wrapped into rows,
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


def plot_grid(examples: list, path: Path, title: str = "", images_per_row: int = 16) -> None:
    """Blocks wrapped into rows: first the originals, then one block per example (cell), each block one
    column per image with its reconstructions placed under the original they were matched to, the cell
    named above its block and every image captioned with its PSNR (and recovered label).

    At most ``images_per_row`` images (and at most 6 blocks) share a row, so the figure stays wide and
    legible at any batch size and number of trials; the title is wrapped to the figure's width and
    given its own space."""
    import math
    import textwrap

    examples = [e for e in examples if e.truth]
    if not examples:
        return
    cols = max(len(e.truth) for e in examples)
    ref = max(examples, key=lambda e: len(e.truth)).truth
    blocks = [("originals", list(ref), [None] * len(ref))]
    for e in examples:
        captions = [f"{e.psnr[j]:.1f} dB" + ("" if e.label[j] is None else f" y={e.label[j]}")
                    for j in range(len(e.recon))]
        blocks.append((e.title, list(e.recon), captions))
    per_row = max(1, min(6, images_per_row // cols))
    rows = math.ceil(len(blocks) / per_row)
    cell_in, row_in = 1.05, 1.75  # inches per image; per block row (image, name above, caption below)
    width = max(per_row * cols * cell_in + 0.4, 6.0)
    wrapped = "\n".join(textwrap.wrap(title, max(30, int(width * 13)))) if title else ""
    title_in = 0.25 + 0.17 * (wrapped.count("\n") + 1) if title else 0.1
    height = rows * row_in + title_in
    fig, axes = plt.subplots(rows, per_row * cols, figsize=(width, height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (name, images, captions) in enumerate(blocks):
        r, c0 = divmod(k, per_row)
        for j in range(cols):
            ax = axes[r, c0 * cols + j]
            if j >= len(images):
                continue
            _show(ax, images[j].numpy())
            ax.axis("on")
            ax.set_xlabel("original" if captions[j] is None else captions[j], fontsize=6, labelpad=2)
        axes[r, c0 * cols].set_title("\n".join(textwrap.wrap(name.replace(" / B=", ", B="), max(14, int(cols * cell_in * 14)))),
                                     fontsize=6, loc="left")
    if wrapped:
        fig.suptitle(wrapped, fontsize=8, y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=0.2 / width, right=1 - 0.2 / width, bottom=0.3 / height, top=1 - title_in / height,
                        wspace=0.08, hspace=0.75)
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
        plot_grid(chosen, out / name, f"{meta.get('dataset')}: originals (first block) and reconstructions, "
                                      f"B = {b} per client (first images of the trials)")
