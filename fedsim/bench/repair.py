"""``fedsim bench repair``: how far gradient inversion gets with its step budget, for one delayed
client of the ``staleness-paper`` scenario, cold and warm-started, and what inverting a round's
stale answers together saves over one by one.

The global model follows the scenario (unstale FedAvg rounds of 10 clients, each 5 full-batch GD
steps at the preset's rate; the server's replay of a client is exact for full-batch GD). A class-5
client's update computed on the model of round s is stale by D rounds at round t = s + D. Inverting
it, the bench records at chosen step counts the relative L1 residual (what the synthetic set fails
to explain) and the repair error ``||LocalUpdate(x_t, D_rec) - d_true||_1 / ||d_true||_1`` against
the client's true update on the current model, beside the direct error ``||d_stale - d_true||_1 /
||d_true||_1`` (aggregating the stale update as it is). Warm: the same client's next update (10
rounds later, when round-robin selects it again), inverted from the set found for the first one,
against a cold start of the same problem, with the warm start's image step at each ``--warm-step``
fraction of the full one (``repair.warm_step``). Batched: B stale answers inverted together (``vmap``)
and one by one for the same steps, side by side.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import fraction_list, int_list, progress_log

CHECKPOINTS = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000)


def add_parser(bsub) -> None:
    s = bsub.add_parser("repair", help="staleness repair: residual and repair error vs inversion steps, "
                                       "cold vs warm start, batched vs one by one")
    s.add_argument("--model", default="mlp", help="model of the scenario (mlp: CPU-sized; lenet: the paper's)")
    s.add_argument("--steps", type=int, default=1000, help="inversion step cap (the paper: 10,000-40,000)")
    s.add_argument("--delay", type=int, default=40, help="staleness D in rounds (the preset's 40)")
    s.add_argument("--warmup", type=int, default=100, help="rounds of training before the stale update is computed")
    s.add_argument("--batch", default="4", help="stale answers inverted together, for the batched timing (list)")
    s.add_argument("--batch-steps", type=int, default=50, help="steps of the batched vs one-by-one timing")
    s.add_argument("--samples", type=int, default=32, help="synthetic samples (repair.samples)")
    s.add_argument("--warm-step", default="1,0.1,0.01",
                   help="image steps of the warm start, as fractions of repair.image_lr (list; repair.warm_step)")
    s.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    s.add_argument("--out", default=os.path.join("runs", "bench-repair"), help="output directory")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=_cli)


def _cli(args) -> int:
    from ..config import ConfigError

    if args.steps < 1 or args.warmup < 0 or args.delay < 1 or args.batch_steps < 1:
        raise ConfigError("--steps, --delay and --batch-steps must be >= 1 and --warmup >= 0")
    warm_steps = fraction_list(args.warm_step, "--warm-step")
    log = progress_log(args)
    result = bench_repair(args.model, args.steps, args.delay, args.warmup, int_list(args.batch, "--batch"),
                          args.batch_steps, args.samples, args.device, Path(args.out), log, warm_steps)
    print(json.dumps(result, indent=2) if args.json else format_tables(result))
    return 0


def bench_repair(model_name: str, steps: int, delay: int, warmup: int, batches: list[int], batch_steps: int,
                 samples: int, device: str, out: Path, log=print, warm_steps: list[float] = (1.0,)) -> dict:
    import numpy as np
    import torch

    from ..core.params import ParamSpec
    from ..experiments.setup import delayed_clients, load, load_client_data, make_model
    from ..inversion.functional import local_update
    from ..local.device import resolve_device
    from ..repair import Problem, invert_batch

    dev = resolve_device(device, "--device")
    cfg = load("staleness-paper", [f"model.name={model_name}"])
    data = load_client_data(cfg)
    model = make_model(cfg, data.dataset).to(dev)
    model.train()
    spec = ParamSpec.of(model)
    train = data.dataset.train
    xs, ys = train.x.to(dev), train.y.to(dev)
    c = cfg.client
    replay = dict(steps=c.local_steps, lr=c.lr, batch_size=c.batch_size)

    def client_update(cid: int, w: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(data.parts[cid], device=dev)
        return local_update(model, spec, w, xs[idx], ys[idx], **replay).detach()

    # the global model, round by round (unstale FedAvg: 10 random clients, full-batch GD)
    rng = np.random.default_rng(cfg.seed)
    w = spec.flatten(model.state_dict()).to(dev)
    history = [w]
    total = warmup + 2 * delay + 10 + 1
    t0 = time.perf_counter()
    for r in range(total):
        chosen = rng.choice(cfg.data.num_clients, 10, replace=False)
        w = w + torch.stack([client_update(int(i), w) for i in chosen]).mean(0)
        history.append(w)
    log(f"bench repair: {total} rounds of the scenario's global model in {time.perf_counter() - t0:.1f} s")
    stale_ids = np.flatnonzero(delayed_clients(cfg, data)).tolist()
    box = (float(train.x.min()), float(train.x.max()))
    settings = dict(local_steps=c.local_steps, lr=c.lr, batch_size=samples, samples=samples,
                    input_shape=data.dataset.input_shape, image_lr=cfg.repair.image_lr,
                    label_lr=cfg.repair.label_lr, tv=cfg.repair.tv, box=box)

    def case(cid: int, s: int) -> dict:
        return {"x_s": history[s], "x_t": history[s + delay], "stale": client_update(cid, history[s]),
                "true": client_update(cid, history[s + delay])}

    def rel(a, b) -> float:
        return float((a - b).abs().sum() / b.abs().sum())

    def curve(k: dict, start, seed: int, warm_step: float = 1.0) -> dict:
        points, marks = [], {m for m in CHECKPOINTS if m <= steps} | {steps}

        def trace(step, r, best, best_x, best_logits):
            if step in marks:
                now = local_update(model, spec, k["x_t"], best_x[0], torch.softmax(best_logits[0], -1),
                                   steps=c.local_steps, lr=c.lr, batch_size=samples).detach()
                points.append({"step": step, "residual": float(best[0]), "repair_error": rel(now, k["true"]),
                               "seconds": time.perf_counter() - t_start})

        t_start = time.perf_counter()
        inv = invert_batch(model, spec, [Problem(k["x_s"], k["stale"], torch.Generator().manual_seed(seed), start)],
                           iterations=steps, trace=trace, warm_step=warm_step, **settings)[0]
        return {"points": points, "direct_error": rel(k["stale"], k["true"]), "found": (inv.x, inv.logits)}

    cid = stale_ids[0]
    curves, batched = {}, []
    result = {"model": model_name, "device": str(dev), "delay": delay, "warmup": warmup, "samples": samples,
              "client": cid, "dim": spec.dim, "warm_steps": list(warm_steps), "curves": curves, "batched": batched}
    out.mkdir(parents=True, exist_ok=True)

    def save():  # after every curve and timing: a run stopped part-way keeps what it measured
        (out / "repair.json").write_text(json.dumps(result, indent=2))

    first, second = case(cid, warmup), case(cid, warmup + 10)  # round-robin: selected again 10 rounds later
    log(f"bench repair: client {cid}, D = {delay}, cold inversion of its update at round {warmup + delay}")
    cold = curve(first, None, 0)
    curves["cold"] = _strip(cold)
    save()
    log("bench repair: its next update, warm-started and cold")
    for ws in warm_steps:  # the same problem and start, with the warm start's image step scaled
        curves["next update, warm" + ("" if ws == 1 else f", step x{ws:g}")] = _strip(curve(second, cold["found"], 1, ws))
        save()
    curves["next update, cold"] = _strip(curve(second, None, 1))
    save()
    for b in batches:
        ks = [case(stale_ids[i % len(stale_ids)], warmup + i) for i in range(b)]
        probs = [Problem(k["x_s"], k["stale"], torch.Generator().manual_seed(i)) for i, k in enumerate(ks)]
        t = time.perf_counter()
        invert_batch(model, spec, probs, iterations=batch_steps, **settings)
        together = time.perf_counter() - t
        t = time.perf_counter()
        for p in probs:
            invert_batch(model, spec, [p], iterations=batch_steps, **settings)
        alone = time.perf_counter() - t
        batched.append({"answers": b, "steps": batch_steps, "together_s": together, "one_by_one_s": alone,
                        "speedup": alone / together})
        save()
        log(f"bench repair: {b} answers x {batch_steps} steps: together {together:.2f} s, one by one {alone:.2f} s")
    (out / "repair.md").write_text(format_tables(result) + "\n")
    _plot(result, out / "repair.png")
    return result


def _strip(curve: dict) -> dict:
    return {"points": curve["points"], "direct_error": curve["direct_error"]}


def format_tables(result: dict) -> str:
    lines = [f"{result['model']} (D = {result['dim']}), staleness {result['delay']} rounds, client {result['client']}, "
             f"{result['samples']} synthetic samples, {result['device']}", "",
             "| start | steps | residual | repair error | direct error | seconds |", "|---|---|---|---|---|---|"]
    for name, curve in result["curves"].items():
        for p in curve["points"]:
            lines.append(f"| {name} | {p['step']} | {p['residual']:.4f} | {p['repair_error']:.4f} | "
                         f"{curve['direct_error']:.4f} | {p['seconds']:.1f} |")
    lines += ["", "| stale answers | steps | together (s) | one by one (s) | speed-up |", "|---|---|---|---|---|"]
    for b in result["batched"]:
        lines.append(f"| {b['answers']} | {b['steps']} | {b['together_s']:.2f} | {b['one_by_one_s']:.2f} | "
                     f"{b['speedup']:.2f}x |")
    return "\n".join(lines)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, curve in result["curves"].items():
        xs = [p["step"] for p in curve["points"]]
        axes[0].plot(xs, [p["residual"] for p in curve["points"]], marker="o", label=name)
        line, = axes[1].plot(xs, [p["repair_error"] for p in curve["points"]], marker="o", label=name)
        axes[1].axhline(curve["direct_error"], color=line.get_color(), ls=":", lw=1)
    for ax, label in ((axes[0], "residual (relative L1)"), (axes[1], "repair error vs true update (relative L1)")):
        ax.set_xscale("log")
        ax.set_xlabel("inversion steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(title="dotted: direct (stale) error", fontsize=8)
    fig.suptitle(f"fedsim bench repair: {result['model']}, staleness {result['delay']} rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
