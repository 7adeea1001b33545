"""Defenses as per-client pipeline stages applied to the message a client sends.

Each stage is a pure function of the flat update ``[D]`` (plus explicit state and generator):

* ``dp`` -- local DP in the DP-FedAvg style (McMahan et al., ICLR 2018, arXiv 1710.06963, Alg. 1,
  applied on the client): clip the update to L2 norm ``clip`` = C, add N(0, (z C)^2) per coordinate
  with ``noise_multiplier`` = z. One release is (epsilon, delta)-DP for adding or removing the whole
  client (sensitivity C) -- client-level, not example-level, DP. ``clip`` alone is ``clip``.
* ``dp-sgd`` -- example-level DP: the client trains with DP-SGD (Abadi et al., CCS 2016, arXiv
  1607.00133, Alg. 1; Opacus, ``fedsim.local.example_dp``): every local step clips each example's
  gradient to ``clip`` and adds N(0, (z clip)^2) to their sum, Poisson minibatches of the victim's
  batch size (q = 1 for full batch). epsilon is example-level over its local steps (Opacus' RDP
  accountant), for one release. No stage after training: the update is already private.
* ``top-k`` -- keep the ``density`` fraction of largest-magnitude coordinates (the project's
  compressor, :func:`fedsim.core.compression.make_compressor`).
* ``ef21`` -- the EF21 message ``C(target - g_i)`` (Richtarik et al., arXiv 2106.05203, Alg. 1)
  with Top-k; with the initial state g_i = 0 the first message equals Top-k of the update.
* ``prune`` -- DLG's gradient pruning (Zhu et al. 2019, Sec. 5): per parameter tensor, zero the
  ``prune_ratio`` fraction of smallest magnitudes (the ``prune`` compressor, also a client stage
  of any run: ``compression.name = "prune"``).
* ``soteria`` -- Soteria (Sun, Li, Wang, Chen, Li, CVPR 2021, arXiv 2012.06043, Sec. 4; reference
  ``jeremy313/Soteria``): the client scores each feature f of the representation (the input of the
  model's last linear layer) by ``sum_b ||d r_bf / d x_b|| / (r_bf + 0.1)`` on its own batch and
  zeroes that layer's weight-gradient columns of the ``prune_ratio`` fraction with the lowest scores
  (the features whose perturbation moves the reconstruction most per unit of change). The score,
  the 0.1 and the percentile threshold follow the reference code. Ours: on a multi-step update the
  mask is computed once at the model the client received and applied to the whole update; the
  utility run computes it on 8 images of the client's shard (``fedsim.attacks.utility``). Known
  break (Balunovic et al., ICLR 2022): an attacker that knows the defended layer matches without
  it -- ``adaptive = true`` gives the attacker that knowledge (its matching mask drops the layer's
  weight).
* ``secagg`` -- no per-client stage; the server sees only the sum over ``clients`` clients
  (applied by :func:`fedsim.attacks.observations.observe`; any defense may set ``clients`` > 1).
* ``local-steps`` -- no stage; the client runs ``local_steps`` SGD steps before sending.
* ``dp-mf`` -- central DP with correlated (matrix-factorisation) noise, seen by a third party
  (threat T4): each client's update is clipped to C, the server adds row ``round`` of the
  ``mechanism``'s noise stream (``fedsim.privacy.NoiseStream``, std z C sens(C), single
  participation over ``rounds`` rounds) to the *sum*; the released model difference is what the
  third party inverts. The honest-but-curious server sees the pre-noise updates (no protection) -- use ``clip`` for that view. Needs ``fedsim.privacy``.

A stage returns the message and the support the attacker learns (which coordinates were sent;
``None`` when dense), which adaptive attacks use to match only on the sent coordinates
(the adaptive attacker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.clipping import clip_vector
from ..core.compression import make_compressor
from ..core.error_feedback import ef21_step
from ..core.params import ParamSpec
from ..inversion.layers import last_linear

__all__ = ["DEFENSES", "DefenseConfig", "apply_defense", "central_noise", "clip_update", "dp_epsilon",
           "gaussian_noise", "prune_layers", "soteria_mask", "soteria_stage", "top_k"]

DEFENSES = ("none", "dp", "dp-sgd", "clip", "top-k", "ef21", "prune", "soteria", "secagg", "local-steps", "dp-mf")


@dataclass(frozen=True)
class DefenseConfig:
    """One defense setting. ``label`` names it in tables (default: derived from the fields)."""

    name: str = "none"
    label: str = ""
    clip: float = 1.0               # dp, clip: L2 bound C on each client's update
    noise_multiplier: float = 0.0   # dp: noise std = z * C per coordinate of the update
    density: float = 0.01           # top-k, ef21: fraction of coordinates sent
    prune_ratio: float = 0.9        # prune: fraction of each tensor zeroed; soteria: fraction of features pruned
    adaptive: bool = False          # soteria: the attacker knows the defended layer and matches without it
    clients: int = 1                # secure-aggregation group size (1 = no aggregation)
    local_steps: int = 1            # local-steps: SGD steps the client runs before sending
    delta: float = 1e-5             # dp: delta of the reported epsilon
    mechanism: str = "tree"         # dp-mf: fedsim.privacy mechanism name
    rounds: int = 16                # dp-mf: rounds the factorisation plans for
    round: int = 0                  # dp-mf: which round's release the third party attacks

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return {"none": "none", "dp": f"dp(C={self.clip:g},z={self.noise_multiplier:g})",
                "dp-sgd": f"dp-sgd(C={self.clip:g},z={self.noise_multiplier:g})",
                "clip": f"clip(C={self.clip:g})", "top-k": f"top-k({self.density:g})",
                "ef21": f"ef21({self.density:g})", "prune": f"prune({self.prune_ratio:g})",
                "soteria": f"soteria({self.prune_ratio:g}{', adaptive attacker' if self.adaptive else ''})",
                "secagg": f"secagg({self.clients})", "local-steps": f"local-steps({self.local_steps})",
                "dp-mf": f"dp-mf({self.mechanism},z={self.noise_multiplier:g})"}[self.name]

    def params(self) -> dict:
        """The parameters that matter for this defense (for result rows)."""
        keys = {"dp": ("clip", "noise_multiplier"), "dp-sgd": ("clip", "noise_multiplier"), "clip": ("clip",),
                "top-k": ("density",),
                "dp-mf": ("clip", "noise_multiplier", "mechanism", "rounds", "round"),
                "ef21": ("density",), "prune": ("prune_ratio",), "soteria": ("prune_ratio", "adaptive"),
                "local-steps": ("local_steps",)}
        out = {k: getattr(self, k) for k in keys.get(self.name, ())}
        if self.clients > 1 or self.name == "secagg":
            out["clients"] = self.clients
        if self.name == "dp":
            out["noise_std"] = self.noise_multiplier * self.clip
        return out


def clip_update(u: torch.Tensor, clip: float) -> torch.Tensor:
    """``u * min(1, clip / ||u||)``: the user-level DP stage's clip (``fedsim.core.clipping``) on one
    vector; differentiable, so adaptive attackers use it too."""
    return clip_vector(u, clip)


def gaussian_noise(u: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    if std == 0:
        return u.clone()
    return u + std * torch.randn(u.shape, generator=gen, dtype=u.dtype)


def top_k(u: torch.Tensor, density: float) -> torch.Tensor:
    return make_compressor("top-k", u.numel(), density=density)(u)


def prune_layers(u: torch.Tensor, spec: ParamSpec, ratio: float) -> torch.Tensor:
    """Zero the ``ratio`` fraction of smallest |u| within each parameter tensor: the ``prune``
    compressor (``fedsim.core.compression``) keeping ``1 - ratio`` of each tensor."""
    return make_compressor("prune", u.numel(), density=1.0 - ratio, sizes=spec.sizes)(u)


def dp_epsilon(noise_multiplier: float, delta: float) -> float:
    """Epsilon of one Gaussian release with noise multiplier z (RDP accountant, dp-accounting)."""
    if noise_multiplier <= 0:
        return math.inf
    from dp_accounting import GaussianDpEvent
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant()
    acc.compose(GaussianDpEvent(noise_multiplier))
    return float(acc.get_epsilon(delta))


def central_noise(defense: DefenseConfig, dim: int, seed: int) -> torch.Tensor:
    """dp-mf's server-side noise on round ``defense.round``'s sum of clipped updates ``[dim]``."""
    try:
        from ..privacy import NoiseStream, ParticipationSchema, noise_std, plan_factorization
    except ImportError as exc:
        raise NotImplementedError("dp-mf defense needs fedsim.privacy (NoiseStream, "
                                  f"plan_factorization), which cannot be imported: {exc}") from exc
    if not 0 <= defense.round < defense.rounds:
        raise ValueError(f"dp-mf round must be in [0, {defense.rounds}), got {defense.round}")
    f = plan_factorization(defense.mechanism, ParticipationSchema.single(defense.rounds))
    std = noise_std(defense.noise_multiplier, defense.clip, f.sensitivity().value)
    stream = NoiseStream(f, dim=dim, seed=seed, std=std)
    for _ in range(defense.round):
        stream.next()
    return stream.next()


def apply_defense(u: torch.Tensor, defense: DefenseConfig, spec: ParamSpec, gen: torch.Generator,
                  ef_state: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One client's message: ``(sent [D], support mask [D] bool or None, new EF21 state)``."""
    name = defense.name
    # dp-sgd is private training, not a message stage; soteria needs the client's data (soteria_stage)
    if name in ("none", "secagg", "local-steps", "dp-sgd", "soteria"):
        return u.clone(), None, ef_state
    if name == "clip":
        return clip_update(u, defense.clip), None, ef_state
    if name == "dp":
        clipped = clip_update(u, defense.clip)
        return gaussian_noise(clipped, defense.noise_multiplier * defense.clip, gen), None, ef_state
    if name == "top-k":
        sent = top_k(u, defense.density)
        return sent, sent != 0, ef_state
    if name == "ef21":
        g_i = torch.zeros_like(u) if ef_state is None else ef_state
        compressor = make_compressor("top-k", u.numel(), density=defense.density)
        sent, g_new = ef21_step(g_i, u, compressor)
        return sent, sent != 0, g_new
    if name == "prune":
        sent = prune_layers(u, spec, defense.prune_ratio)
        return sent, sent != 0, ef_state
    if name == "dp-mf":  # the per-client half; the server adds central_noise() to the sum
        return clip_update(u, defense.clip), None, ef_state
    raise ValueError(f"unknown defense {name!r}; known: {', '.join(DEFENSES)}")


def soteria_mask(model: torch.nn.Module, params: torch.Tensor, x: torch.Tensor, prune_ratio: float,
                 chunk: int = 32) -> torch.Tensor:
    """Soteria's mask ``[D]`` (1 = sent) for a client holding inputs ``x`` (model-input space) at ``params``:
    0 on the last linear layer's weight columns of the pruned representation features."""
    from torch.func import functional_call, jacrev, vmap

    if any(True for _ in model.buffers()):
        raise NotImplementedError("soteria scores features per sample: a model with BatchNorm (batch statistics) "
                                  "is not supported")
    spec = ParamSpec.of(model)
    weight_name, _ = last_linear(model)
    layer = dict(model.named_modules())[weight_name.rsplit(".", 1)[0]]
    named = {k: v.detach() for k, v in spec.unflatten(params).items()}
    seen = []
    hook = layer.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))

    def features(xi: torch.Tensor) -> torch.Tensor:  # r(x) of one sample: the defended layer's input
        seen.clear()
        functional_call(model, named, (xi[None],))
        return seen[-1][0]

    try:
        score = None
        for part in x.detach().split(chunk):
            jac = vmap(jacrev(features))(part)                  # [b, F, *input]
            r = vmap(features)(part)                            # [b, F]
            s = (jac.flatten(2).norm(dim=2) / (r + 0.1)).sum(0)
            score = s if score is None else score + s
    finally:
        hook.remove()
    score = score.abs()
    pruned = score < torch.quantile(score, prune_ratio)
    mask = torch.ones(spec.dim)
    views = spec.unflatten(mask)
    views[weight_name][:, pruned] = 0.0  # views share mask's storage
    return mask


def soteria_stage(update: torch.Tensor, model: torch.nn.Module, params: torch.Tensor, x: torch.Tensor,
                  defense: DefenseConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One client's Soteria message and the attacker's matching mask (``None``: the attacker does not
    adapt; with ``defense.adaptive`` every coordinate but the defended layer's weight)."""
    sent = update * soteria_mask(model, params, x, defense.prune_ratio)
    if not defense.adaptive:
        return sent, None
    return sent, ParamSpec.of(model).mask_excluding([last_linear(model)[0]])
