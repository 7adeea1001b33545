"""``fedsim bench sim --device cuda``: clients per second of the vectorized cohort trainer
(``fedsim.local.vectorized.train_cohort_vectorized``) against the sequential reference loop
(``fedsim.local.reference.train_cohort``) on the same device, for each cohort size K.

Workload: LeNet, Fashion-MNIST (through fedsim's loader), every client ``ceil(samples / batch)`` plain
SGD steps on its own ``samples`` rows (client i takes rows ``[i * samples, (i + 1) * samples)`` of a
fixed permutation of the training set, wrapping around when K * samples exceeds it, so K = 1000 works
with 600 rows each). Each trainer is warmed up once on a 2-client cohort; every timing is bracketed by
``torch.cuda.synchronize()`` on CUDA. The largest absolute difference between the two trainers' deltas
is reported as a correctness check.

Data placement follows each trainer's own contract: the reference loop indexes the split it is given
and feeds the model directly, so it gets the split on the device; the vectorized trainer gathers each
step's batches from the split and moves them to the parameters' device itself, so it gets the CPU split
(what fedsim's client handler holds).

``--device cpu --trainer-compare`` runs the same comparison on CPU (small K) so the path stays tested
without a GPU; ``--device cuda`` on a machine without CUDA is an error.
"""

from __future__ import annotations

import math
import os
import time


def compare_trainers(*, device: str = "cuda", cohorts=(10, 100, 1000), samples_per_client: int = 600,
                     batch_size: int = 32, lr: float = 0.05, seed: int = 0, data_dir: str = "", log=print) -> dict:
    import torch

    from ..config import ConfigError
    from ..core.params import ParamSpec
    from ..data.datasets import Split, load_dataset
    from ..local.reference import Job, train_cohort
    from ..local.vectorized import train_cohort_vectorized
    from ..models.zoo import build_model

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("fedsim bench sim --device cuda: no CUDA device (torch.cuda.is_available() is False, "
                          f"torch {torch.__version__}); use --device cpu --trainer-compare to run the trainer "
                          "comparison on CPU")
    if device == "cpu":
        torch.set_num_threads(1)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    ds = load_dataset("fashion-mnist", data_dir or None)
    cpu_split = ds.train
    dev_split = Split(cpu_split.x.to(dev), cpu_split.y.to(dev))
    model = build_model("lenet", ds.input_shape, ds.num_classes, seed=seed).to(dev)
    spec = ParamSpec.of(model)
    global_params = spec.flatten(model.state_dict()).to(dev)
    steps = math.ceil(samples_per_client / batch_size)
    order = torch.randperm(len(cpu_split), generator=torch.Generator().manual_seed(seed))

    def jobs(k: int) -> list:
        rows = lambda i: order[torch.arange(i * samples_per_client, (i + 1) * samples_per_client) % len(order)]  # noqa: E731
        return [Job(i, rows(i), steps, lr, batch_size, seed * 100_003 + i) for i in range(k)]

    def timed(fn, k):
        sync()
        t = time.perf_counter()
        deltas, _ = fn(jobs(k))
        sync()
        return time.perf_counter() - t, deltas

    sequential = lambda js: train_cohort(model, spec, global_params, js, dev_split)  # noqa: E731
    vectorized = lambda js: train_cohort_vectorized(model, spec, global_params, js, cpu_split)  # noqa: E731
    timed(sequential, 2), timed(vectorized, 2)  # warm-up (kernels, allocator)
    rows = []
    for k in cohorts:
        log(f"bench sim: trainers on {device}, K={k} ...")
        t_seq, d_seq = timed(sequential, k)
        t_vec, d_vec = timed(vectorized, k)
        diff = float((d_seq.to(dev) - d_vec.to(dev)).abs().max())
        rows.append({"clients": k, "sequential_s": round(t_seq, 4), "vectorized_s": round(t_vec, 4),
                     "sequential_clients_per_s": round(k / t_seq, 2), "vectorized_clients_per_s": round(k / t_vec, 2),
                     "speedup": round(t_seq / t_vec, 3), "max_abs_delta_diff": diff})
        log(f"bench sim: K={k}: sequential {k / t_seq:.1f} clients/s, vectorized {k / t_vec:.1f} clients/s "
            f"({t_seq / t_vec:.2f}x), max |delta difference| {diff:.2e}")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores, 1 torch thread)"
    return {"mode": "trainer-compare", "device": device, "device_name": name, "model": "lenet",
            "dataset": "fashion-mnist", "samples_per_client": samples_per_client, "batch_size": batch_size,
            "local_steps": steps, "torch": torch.__version__, "cohorts": rows,
            "target": "vectorized >= 20x the sequential clients/s at K=100 on the same GPU"}


def format_trainers(result: dict) -> str:
    lines = [f"trainer comparison on {result['device_name']}: LeNet, {result['local_steps']} local steps of batch "
             f"{result['batch_size']} per client", "",
             "| K | sequential (clients/s) | vectorized (clients/s) | vectorized / sequential | max abs delta diff |",
             "|---|---|---|---|---|"]
    for r in result["cohorts"]:
        lines.append(f"| {r['clients']} | {r['sequential_clients_per_s']:.1f} | {r['vectorized_clients_per_s']:.1f} | "
                     f"{r['speedup']:.2f} | {r['max_abs_delta_diff']:.2e} |")
    lines.append(f"target: {result['target']}")
    return "\n".join(lines)
