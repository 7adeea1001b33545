"""The two no-framework arms of ``fedsim bench sim``: a plain sequential torch loop (the compute floor)
and a plain ``multiprocessing`` pool with one process per core. Run as a process of its own:

    python -m fedsim.bench.floor {floor,pool} --population N --clients-per-round K --rounds R --out DIR

Same workload as the fedsim and Flower arms: Fashion-MNIST through fedsim's loader, an IID split into
N clients (the same partition fedsim uses for the same seed), LeNet (``fedsim.models.zoo``), each of K
clients a round runs ``local_steps`` plain SGD steps (no momentum) of ``batch_size`` samples from the
global model, reshuffling its data each pass; the server averages the deltas (equal weights: the
clients hold equal shares). Nothing else: no messages, no serialization, no strategy objects.

The pool forks its workers once, after the data is loaded (they share it copy-on-write); each round
the global vector is sent to every worker with its share of the cohort (near-equal contiguous
chunks), and each worker returns the sum of its clients' deltas.

Writes ``timing.jsonl`` (``{"round", "wall_time", "steps"}`` at the end of each round, the same shape
``fedsim run`` writes) and ``floor.json`` (steps trained, client sizes, a checksum of the final model).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

_SHARED: dict = {}  # set before the pool forks; read by its workers


def client_seed(seed: int, server_round: int, client: int) -> int:
    return (seed * 1_000_003 + server_round * 10_007 + client) % (2**62)


def train_clients(global_vec, clients, server_round: int):
    """Sum of the deltas of ``clients`` trained from ``global_vec`` [D]; returns (sum [D], steps)."""
    import torch
    from torch.nn import functional as F
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    s = _SHARED
    model, x, y, parts, a = s["model"], s["x"], s["y"], s["parts"], s["args"]
    global_vec = torch.as_tensor(global_vec)
    total, steps = torch.zeros_like(global_vec), 0
    if "opt" not in s:
        s["opt"] = torch.optim.SGD(model.parameters(), lr=a.lr)
    opt = s["opt"]
    for c in clients:
        vector_to_parameters(global_vec.clone(), model.parameters())  # the parameters become views of the copy
        part = parts[int(c)]
        gen = torch.Generator().manual_seed(client_seed(a.seed, server_round, int(c)))
        perm, pos = torch.randperm(len(part), generator=gen), 0
        for _ in range(a.local_steps):
            if pos >= len(part):
                perm, pos = torch.randperm(len(part), generator=gen), 0
            idx = part[perm[pos:pos + a.batch_size]]
            pos += a.batch_size
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            steps += 1
        total += parameters_to_vector(model.parameters()).detach() - global_vec
    return total.numpy(), steps


def _pool_share(job):
    import torch

    torch.set_num_threads(1)
    return train_clients(*job)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedsim.bench.floor")
    p.add_argument("mode", choices=("floor", "pool"))
    p.add_argument("--population", type=int, required=True)
    p.add_argument("--clients-per-round", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--local-steps", type=int, default=19)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, default=0, help="pool size (0: one per core)")
    p.add_argument("--data-dir", default="", help="Fashion-MNIST idx directory (default: fedsim's)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    import os

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from torch.nn.utils import parameters_to_vector

    from ..data.datasets import load_dataset
    from ..data.partition import partition
    from ..models.zoo import build_model

    ds = load_dataset("fashion-mnist", a.data_dir or None)
    parts = [torch.as_tensor(q) for q in partition(ds.train.y.numpy(), a.population, "iid", seed=a.seed)]
    model = build_model("lenet", ds.input_shape, ds.num_classes, seed=a.seed)
    model.train()
    _SHARED.update(model=model, x=ds.train.x, y=ds.train.y, parts=parts, args=a)
    global_vec = parameters_to_vector(model.parameters()).detach().clone()
    rng = np.random.default_rng(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pool, total_steps = None, 0
    if a.mode == "pool":
        import multiprocessing as mp

        workers = a.processes or os.cpu_count() or 1
        pool = mp.get_context("fork").Pool(workers)
    try:
        with (out / "timing.jsonl").open("w") as timing:
            for r in range(1, a.rounds + 1):
                cohort = rng.choice(a.population, a.clients_per_round, replace=False)
                if pool is None:
                    delta_sum, steps = train_clients(global_vec, cohort, r)
                else:
                    shares = [c for c in np.array_split(cohort, workers) if len(c)]
                    answers = pool.map(_pool_share, [(global_vec.numpy(), c, r) for c in shares], chunksize=1)
                    delta_sum, steps = sum(d for d, _ in answers), sum(s for _, s in answers)
                global_vec = global_vec + torch.as_tensor(delta_sum) / len(cohort)
                total_steps += steps
                timing.write(json.dumps({"round": r, "wall_time": time.time(), "steps": steps}) + "\n")
                timing.flush()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    sizes = [len(q) for q in parts]
    (out / "floor.json").write_text(json.dumps({
        "mode": a.mode, "steps": total_steps, "rounds": a.rounds, "clients_per_round": a.clients_per_round,
        "local_steps": a.local_steps, "client_samples_min": min(sizes), "client_samples_max": max(sizes),
        "processes": workers if pool is not None else 1,
        "final_abs_sum": float(global_vec.abs().sum()), "final_sum": float(global_vec.sum())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
