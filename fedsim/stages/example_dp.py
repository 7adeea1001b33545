"""Example-level DP as a client stage: what the server asks clients to run (DP-SGD through Opacus,
``fedsim.local.example_dp``) and the ledger of the DP-SGD steps it asked each client for.

Epsilon grows with the step count, so per data size only the busiest client is accounted: the
reported ``dp/example_epsilon`` is the worst client's, from Opacus' RDP or PRV accountant over its
steps at q = batch / n_i. With ``poisson`` minibatches (the default) that is the sampling that
happened; with ``shuffle`` (fixed-size minibatches) it is an approximation, named in every output.
"""

from __future__ import annotations

import torch

from ..local.example_dp import example_epsilon
from ..runtime import protocol as P


SCHEMES = {
    "poisson": "poisson minibatches, q = batch / n_i per local step",
    "shuffle": ("shuffled fixed-size minibatches accounted as Poisson sampling at q = batch / n_i "
                "(an approximation that can under-report epsilon)"),
}


class ExampleDPLedger:
    def __init__(self, num_clients: int, *, noise_multiplier: float, clip_norm: float, delta: float, batch_size: int,
                 sampling: str = "poisson", accountant: str = "rdp"):
        self.noise_multiplier, self.clip_norm, self.delta = float(noise_multiplier), float(clip_norm), float(delta)
        self.batch_size, self.sampling, self.accountant = int(batch_size), sampling, accountant
        self.steps = torch.zeros(num_clients, dtype=torch.int64)  # DP-SGD steps each client was asked for

    def client_config(self) -> dict:
        return {P.EXAMPLE_DP_NOISE: self.noise_multiplier, P.EXAMPLE_DP_CLIP: self.clip_norm,
                P.EXAMPLE_DP_SAMPLING: self.sampling}

    def record(self, cid: int, steps: int) -> None:
        self.steps[cid] += int(steps)  # spent once the client trains, answer or not

    def epsilon(self, num_examples) -> float:
        """Worst client's example-level epsilon so far; ``num_examples`` maps client -> n_i."""
        most_steps: dict[int, int] = {}  # n_i -> most steps of any client holding n_i examples
        for c in torch.nonzero(self.steps).flatten().tolist():
            n = max(num_examples.get(c, 1), 1)
            most_steps[n] = max(most_steps.get(n, 0), int(self.steps[c]))
        return max((example_epsilon(self.noise_multiplier, self.batch_size / n, steps, self.delta, self.accountant)
                    for n, steps in most_steps.items()), default=0.0)

    def fields(self, epsilon: float) -> dict:
        """What every output carrying the example-level epsilon names with it."""
        return {"example_epsilon": epsilon, "example_accountant": f"{self.accountant} (opacus)",
                "example_sampling_scheme": SCHEMES[self.sampling]}

    def state_dict(self) -> dict:
        return {"steps": self.steps.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"].clone()
