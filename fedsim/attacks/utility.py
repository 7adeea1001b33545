"""Utility under a defense: test accuracy of a model trained by FedAvg with the defense in place.

The privacy side of a row says what an attacker recovers; this says what the defense costs (the
"utility" column). The run goes through fedsim's own federation machinery: the in-process grid and
round loop (``fedsim.runtime``), the client handler and its trainer (``fedsim.local``) and the FedAvg
strategy with uniform weights and server rate 1 (McMahan et al. 2017, arXiv 1602.05629, Alg. 1).
Each of ``clients`` clients owns a fixed IID shard and trains every round (full participation);
the defense is a client stage (``DefendedClients``): every update a client sends passes through the
same per-client stage the attacks saw (EF21 keeps each client's state across rounds; Soteria scores
its features on the first 8 images of the client's shard at the model it received: the paper scores
the batch it defends; 8 keeps the per-feature Jacobians affordable on a CPU -- ours). Under secure
aggregation the server's sum divided by the group size is the same mean.
"""

from __future__ import annotations

import copy

import torch
from flwr.app import ArrayRecord

from ..core.params import ParamSpec
from ..data import load_dataset
from ..local.handler import ClientHandler
from ..participation import build_participation
from ..runtime import protocol as P
from ..runtime.inprocess import InProcessGrid
from ..runtime.loop import run_rounds
from ..strategies import FedAvgStrategy
from .defenses import DefenseConfig, apply_defense, soteria_stage
from .models import build_attack_model

__all__ = ["DefendedClients", "train_federation"]


class DefendedClients:
    """A client handler whose every TRAIN answer passes through a defense's per-client stage."""

    def __init__(self, handler, defense: DefenseConfig, spec: ParamSpec, seed: int, *, model=None, data=None,
                 shards=None, score_samples: int = 8):
        self.handler, self.defense, self.spec = handler, defense, spec
        # Soteria's: the architecture, each client's data and how many of its images score the features
        self.model, self.data, self.shards, self.score_samples = model, data, shards, score_samples
        self.gen = torch.Generator().manual_seed(seed + 1)  # the defenses' noise, drawn client by client
        self.ef_state: dict[int, torch.Tensor | None] = {}

    def __getattr__(self, name):  # query, num_examples, state_dict, close: the wrapped handler's
        return getattr(self.handler, name)

    def train(self, messages, contexts):
        replies = self.handler.train(messages, contexts)
        for msg, reply in zip(messages, replies):
            if reply.has_error():
                continue
            cid = int(reply.content[P.METRICS]["partition-id"])
            update = P.read_flat(reply.content[P.UPDATE])
            if self.defense.name == "soteria":
                params = self.spec.flatten(msg.content[P.ARRAYS].to_torch_state_dict())
                x = self.data.x[torch.as_tensor(self.shards[cid][:self.score_samples])]
                sent, _ = soteria_stage(update, self.model, params, x, self.defense)
            else:
                sent, _, self.ef_state[cid] = apply_defense(update, self.defense, self.spec, self.gen,
                                                            self.ef_state.get(cid))
            reply.content[P.UPDATE] = P.flat_record(sent)
        return replies


def train_federation(dataset: str, data_dir: str | None, model_name: str, defense: DefenseConfig, *,
                     rounds: int, clients: int, samples_per_client: int, local_steps: int, batch_size: int,
                     lr: float, eval_samples: int, seed: int, keep_round: int = 0
                     ) -> tuple[float | None, torch.Tensor | None]:
    """Train ``rounds`` rounds of FedAvg with the defense; ``(test accuracy or None for a dataset
    without a test split, the global model [D] after round ``keep_round`` or None)``."""
    ds = load_dataset(dataset, data_dir)
    model = build_attack_model(model_name, ds.input_shape, ds.num_classes, seed=seed)
    spec = ParamSpec.of(model)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds.train), generator=gen)
    samples_per_client = min(samples_per_client, len(ds.train) // clients)
    shards = [perm[k * samples_per_client:(k + 1) * samples_per_client].numpy() for k in range(clients)]
    steps = local_steps * (defense.local_steps if defense.name == "local-steps" else 1)
    handler = DefendedClients(ClientHandler(copy.deepcopy(model), ds.train, shards, trainer="sequential"),
                              defense, spec, seed, model=copy.deepcopy(model), data=ds.train, shards=shards,
                              score_samples=min(batch_size, 8))
    participation = build_participation("full", clients, seed=seed, local_steps=steps)
    # dp-sgd is private training, not a message stage: the clients train with DP-SGD (the handler's Opacus path)
    private = {"example_dp": {"noise_multiplier": defense.noise_multiplier, "clip_norm": defense.clip,
                              "delta": defense.delta}} if defense.name == "dp-sgd" else {}
    strategy = FedAvgStrategy(participation, local_lr=lr, batch_size=batch_size, seed=seed, weighting="uniform",
                              **private)
    grid = InProcessGrid(handler, clients, seed=seed)
    kept = {}

    def keep(res, arrays):
        if res.round == keep_round:
            kept["params"] = strategy.params.clone()

    try:
        run_rounds(strategy, grid, ArrayRecord(torch_state_dict=model.state_dict()), first_round=1, last_round=rounds,
                   on_round=keep)
    finally:
        grid.close()
    if ds.test is None or not len(ds.test):
        return None, kept.get("params")
    model.load_state_dict(spec.unflatten(strategy.params))
    model.eval()
    n = min(eval_samples, len(ds.test))
    with torch.no_grad():
        pred = model(ds.test.x[:n]).argmax(-1)
    return float((pred == ds.test.y[:n]).float().mean()), kept.get("params")

