"""Utility under a defense: test accuracy of a model trained by FedAvg with the defense in place.

The privacy side of a row says what an attacker recovers; this says what the defense costs
(the "utility" column). A small FedAvg run (McMahan et al. 2017, arXiv 1602.05629,
Alg. 1): each round ``clients`` clients, each owning a fixed IID shard, run the reference trainer
from the global model; every update passes through the same per-client defense stage the attacks
saw (EF21 keeps each client's state across rounds); the server adds the mean message (the sum
under secure aggregation, divided by the group size, is the same vector).
"""

from __future__ import annotations

import torch

from ..core.params import ParamSpec
from ..data import load_dataset
from ..local.reference import Job, job_seed, train_cohort
from .defenses import DefenseConfig, apply_defense
from .models import build_attack_model

__all__ = ["utility_accuracy"]


def utility_accuracy(dataset: str, data_dir: str | None, model_name: str, defense: DefenseConfig, *,
                     rounds: int, clients: int, samples_per_client: int, local_steps: int,
                     batch_size: int, lr: float, eval_samples: int, seed: int) -> float | None:
    """Test accuracy after ``rounds`` rounds, or ``None`` for a dataset without a test split."""
    if dataset == "photos" or rounds == 0:
        return None
    ds = load_dataset(dataset, data_dir)
    model = build_attack_model(model_name, ds.input_shape, ds.num_classes, seed=seed)
    spec = ParamSpec.of(model)
    params = spec.flatten(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds.train), generator=gen)
    samples_per_client = min(samples_per_client, len(ds.train) // clients)
    shards = [perm[k * samples_per_client:(k + 1) * samples_per_client] for k in range(clients)]
    steps = local_steps * (defense.local_steps if defense.name == "local-steps" else 1)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    ef_state: list[torch.Tensor | None] = [None] * clients
    for rnd in range(1, rounds + 1):
        jobs = [Job(k, shards[k], steps, lr, batch_size, job_seed(seed, rnd, k)) for k in range(clients)]
        deltas, _ = train_cohort(model, spec, params, jobs, ds.train)
        sent = []
        for k in range(clients):
            message, _, ef_state[k] = apply_defense(deltas[k], defense, spec, noise_gen, ef_state[k])
            sent.append(message)
        params = params + torch.stack(sent).mean(0)
    model.load_state_dict(spec.unflatten(params))
    model.eval()
    n = min(eval_samples, len(ds.test))
    with torch.no_grad():
        pred = model(ds.test.x[:n]).argmax(-1)
    return float((pred == ds.test.y[:n]).float().mean())
