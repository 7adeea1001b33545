"""Reproduction of the EF21 logistic-regression experiments (Richtarik, Sokolov, Fatkhullin, NeurIPS
2021, arXiv 2106.05203, Sec. 5 and the authors' public recipe).

Methods, all on the same data, partition, x0 and (for the EF family) compressor:

=========  =====================================================================  ======================
method     algorithm                                                              step (x multiplier)
=========  =====================================================================  ======================
ef21       EF21, Richtarik, Sokolov, Fatkhullin, arXiv 2106.05203, Algorithm 1    1 / (L + L_QM xi(a))
ef21-w     EF21-W, Richtarik, Gasanov, Burlachenko, arXiv 2402.10774, Alg. 1      1 / (L + L_AM xi(a))
ef21-pp    EF21-PP, Fatkhullin et al., arXiv 2110.03294, Algorithm 4: each        as ef21 (the official
           client takes part independently with probability p; absent clients    scripts reuse it)
           keep g_i; the server averages over all n (the paper, not FL_PyTorch)
ef21-sgd   EF21-SGD, arXiv 2110.03294 (official ef21_sgd.py): tau_i = floor(f N_i)  as ef21
           rows without replacement per round; g_i^0 = the full local gradient
ef14       classic error feedback (Seide et al. 2014; Stich et al. 1809.07599)   as ef21
gd         distributed gradient descent, uncompressed                            1 / L
=========  =====================================================================  ======================

EF21-PP and EF21-SGD are EF21 with ``EF21Options``; all EF21 variants run through ``ef21_update``.
State is explicit (``EFState``: x, the per-client memories, the server aggregate, the iteration and
the generator) and round-trips through ``state_dict`` / ``EFState.from_state_dict``.

Bits per client, two conventions: fedsim's counts each message's exact wire size
(``Compressor.bits``: Top-k values *and* index bits) plus, for the EF21 family, the uncompressed
initial round 32 d; the official plots' (``bits_per_client_paper``) count iterations * k * 32.
Under partial participation both count the messages actually sent, averaged over the n clients.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from fedsim.core.compression import Compressor, make_compressor, xi
from fedsim.core.error_feedback import compress_rows, ef14_step, ef21_server, ef21_step
from fedsim.core.logreg import LAMBDA, LogregProblem
from fedsim.data.libsvm import contiguous_offsets, load_libsvm

METHODS = ("ef21", "ef21-w", "ef14", "gd", "ef21-pp", "ef21-sgd")
COMPRESSORS = ("top-k", "rand-k", "natural", "identity")
TOLERANCES = ("1e-2", "1e-3", "1e-4", "1e-5")
RECORD_EVERY = 100
BITS_CONVENTION = ("bits_per_client: exact wire bits per message (Compressor.bits, Top-k index bits included) "
                   "summed over the messages sent, per client, plus 32*d for the EF21 family's uncompressed "
                   "initial round; bits_per_client_paper: iterations*k*32 as in the official plots "
                   "(k = d for gd and natural)")
X0_SEED = 0


@dataclass(frozen=True)
class EF21Options:
    """EF21 variants: ``weights`` [n] (EF21-W's w_i = L_i / sum L_j), participation probability p
    (EF21-PP), minibatch fraction (EF21-SGD; None = full local gradients)."""

    weights: torch.Tensor | None = None
    participation: float = 1.0
    batch_fraction: float | None = None


@dataclass
class EFState:
    """``x`` [d]; ``memory`` [n, d] (EF21: g_i, EF14: e_i, GD: unused zeros); ``g`` [d] the server's
    aggregate (EF21: sum_i w_i g_i with w_i = 1/n unless EF21-W); ``t`` iterations done; ``gen`` all
    randomness (compressors, participation, minibatches). ``grads`` [n, d] caches the exact local
    gradients at x for EF14 and GD; it is derived from x, so it is not saved."""

    x: torch.Tensor
    memory: torch.Tensor
    g: torch.Tensor
    t: int
    gen: torch.Generator
    grads: torch.Tensor | None = field(default=None, repr=False)

    def state_dict(self) -> dict:
        return {"x": self.x.clone(), "memory": self.memory.clone(), "g": self.g.clone(), "t": self.t,
                "gen": self.gen.get_state()}

    @classmethod
    def from_state_dict(cls, sd: dict) -> EFState:
        gen = torch.Generator()
        gen.set_state(sd["gen"])
        return cls(sd["x"].clone(), sd["memory"].clone(), sd["g"].clone(), int(sd["t"]), gen)


@dataclass(frozen=True)
class Record:
    grad_norm_sq: float  # ||grad f(x)||^2 at the new iterate, from the exact local gradients
    senders: torch.Tensor  # [n] bool: the clients that sent a message this iteration


def exact_grads(problem: LogregProblem, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(problem.client_grads(x.numpy()))


def _full_norm_sq(grads: torch.Tensor) -> float:
    return float(grads.mean(0).square().sum())


def _client_scale(options: EF21Options, n: int) -> torch.Tensor | None:
    """n w_i [n, 1] for EF21-W (targets are grad_i / (n w_i), messages count n w_i c_i / n)."""
    return None if options.weights is None else (n * options.weights)[:, None]


def ef21_init(problem: LogregProblem, x0: torch.Tensor, options: EF21Options = EF21Options(),
              gen: torch.Generator | None = None) -> EFState:
    """g_i^0 = grad f_i(x^0) (sent uncompressed; EF21-W: / (n w_i)), g^0 = sum_i w_i g_i^0."""
    scale = _client_scale(options, problem.n)
    g_i = exact_grads(problem, x0)
    if scale is not None:
        g_i = g_i / scale
    g = g_i.mean(0) if scale is None else (scale * g_i).sum(0) / problem.n
    return EFState(x0.clone(), g_i, g, 0, gen if gen is not None else torch.Generator())


def ef21_update(state: EFState, problem: LogregProblem, compressor: Compressor, gamma: float,
                options: EF21Options = EF21Options()) -> tuple[EFState, Record]:
    """One EF21 round: x <- x - gamma g; at the new x each participant sends c_i = C(target_i - g_i)
    and sets g_i <- g_i + c_i; the server adds (1/n) sum n w_i c_i (w_i = 1/n unless EF21-W)."""
    n, gen = problem.n, state.gen
    x = state.x - gamma * state.g
    scores = problem.scores(x.numpy())
    exact = torch.from_numpy(problem.client_grads(x.numpy(), scores=scores))
    est = exact
    if options.batch_fraction is not None:
        weights = minibatch_weights(problem, options.batch_fraction, gen)
        est = torch.from_numpy(problem.client_grads(x.numpy(), row_weights=weights, scores=scores))
    scale = _client_scale(options, n)
    target = est if scale is None else est / scale
    compress = lambda v: compress_rows(compressor, v, gen)  # noqa: E731
    if options.participation >= 1.0:
        mask = torch.ones(n, dtype=torch.bool)
        c, memory = ef21_step(state.memory, target, compress)
        sent = c if scale is None else c * scale
    else:
        mask = torch.rand(n, generator=gen, dtype=torch.float64) < options.participation
        c, g_new = ef21_step(state.memory[mask], target[mask], compress)
        memory = state.memory.clone()
        memory[mask] = g_new  # absent clients keep g_i
        sent = c if scale is None else c * scale[mask]
    g = ef21_server(state.g, sent, n)
    new = EFState(x, memory, g, state.t + 1, gen)
    return new, Record(_full_norm_sq(exact), mask)


def minibatch_weights(problem: LogregProblem, fraction: float, gen: torch.Generator) -> np.ndarray:
    """Row weights [N]: 1/tau_i on tau_i = max(1, floor(fraction N_i)) rows of client i drawn
    uniformly without replacement (the official ``ef21_sgd.py`` tau-nice sampling), 0 elsewhere."""
    weights = np.zeros(problem.a.shape[0])
    for lo, size in zip(problem.offsets[:-1], problem.sizes):
        tau = max(1, math.floor(fraction * size))
        rows = torch.randperm(int(size), generator=gen)[:tau].numpy() + lo
        weights[rows] = 1.0 / tau
    return weights


def ef14_init(problem: LogregProblem, x0: torch.Tensor, gen: torch.Generator | None = None) -> EFState:
    zeros = torch.zeros(problem.n, problem.d, dtype=torch.float64)
    return EFState(x0.clone(), zeros, torch.zeros(problem.d, dtype=torch.float64), 0,
                   gen if gen is not None else torch.Generator(), exact_grads(problem, x0))


def ef14_update(state: EFState, problem: LogregProblem, compressor: Compressor,
                gamma: float) -> tuple[EFState, Record]:
    """m_i = C(e_i + gamma grad f_i(x)), e_i <- e_i + gamma grad f_i(x) - m_i, x <- x - mean m_i."""
    grads = state.grads if state.grads is not None else exact_grads(problem, state.x)
    m, e = ef14_step(state.memory, gamma * grads, lambda v: compress_rows(compressor, v, state.gen))
    x = state.x - m.mean(0)
    new_grads = exact_grads(problem, x)
    return EFState(x, e, state.g, state.t + 1, state.gen, new_grads), _everyone(new_grads)


def gd_update(state: EFState, problem: LogregProblem, gamma: float) -> tuple[EFState, Record]:
    grads = state.grads if state.grads is not None else exact_grads(problem, state.x)
    x = state.x - gamma * grads.mean(0)
    new_grads = exact_grads(problem, x)
    return EFState(x, state.memory, state.g, state.t + 1, state.gen, new_grads), _everyone(new_grads)


def _everyone(grads: torch.Tensor) -> Record:
    return Record(_full_norm_sq(grads), torch.ones(len(grads), dtype=torch.bool))


# -- the experiment ---------------------------------------------------------------------------------

def build_problem(dataset: str, data_dir: str | None = None, n_clients: int = 20,
                  lam: float = LAMBDA) -> LogregProblem:
    """The recipe's problem: LIBSVM file, labels ±1, n contiguous clients, lam = 0.1."""
    a, y = load_libsvm(dataset, data_dir)
    return LogregProblem(a, y, contiguous_offsets(len(y), n_clients), lam)


def initial_point(d: int) -> torch.Tensor:
    """x^0 = numpy.random.default_rng(0).standard_normal(d) )."""
    return torch.from_numpy(np.random.default_rng(X0_SEED).standard_normal(d))


@dataclass
class Run:
    summary: dict            # the JSON object (see ``run_method``)
    grad_norm_sq: np.ndarray  # [T + 1] every iteration
    bits: np.ndarray          # [T + 1] cumulative bits per client, fedsim convention
    bits_paper: np.ndarray    # [T + 1] cumulative bits per client, the official plots' convention


def run_method(problem: LogregProblem, method: str, *, dataset: str = "", compressor: str = "top-k",
               k: int = 1, step_multiplier: float = 1.0, iterations: int = 5000, tol: float | None = None,
               participation: float = 0.5, batch_fraction: float = 0.5, seed: int = 0) -> Run:
    """Run one method of the recipe for ``iterations`` rounds (or until ||grad f||^2 < tol)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")
    d, n = problem.d, problem.n
    comp = make_compressor("identity", d) if method == "gd" else \
        make_compressor(compressor, d, k=k if compressor in ("top-k", "rand-k") else None)
    smooth = problem.smoothness()
    l_tilde = smooth.L_AM if method == "ef21-w" else smooth.L_QM
    theory = 1.0 / smooth.L if method == "gd" else 1.0 / (smooth.L + l_tilde * xi(comp.alpha))
    gamma = step_multiplier * theory
    gen = torch.Generator().manual_seed(seed)
    x0 = initial_point(d)
    if method in ("ef14", "gd"):
        state = ef14_init(problem, x0, gen)
        step = (lambda s: gd_update(s, problem, gamma)) if method == "gd" else \
            (lambda s: ef14_update(s, problem, comp, gamma))
    else:
        options = EF21Options(
            weights=torch.tensor(smooth.L_i, dtype=torch.float64) / sum(smooth.L_i) if method == "ef21-w" else None,
            participation=participation if method == "ef21-pp" else 1.0,
            batch_fraction=batch_fraction if method == "ef21-sgd" else None)
        state = ef21_init(problem, x0, options, gen)
        step = lambda s: ef21_update(s, problem, comp, gamma, options)  # noqa: E731
    norms, messages = [_full_norm_sq(exact_grads(problem, x0))], [0]  # messages: summed over clients
    began = time.perf_counter()
    while state.t < iterations and not (tol is not None and norms[-1] < tol) and math.isfinite(norms[-1]):
        state, rec = step(state)
        norms.append(rec.grad_norm_sq)
        messages.append(messages[-1] + int(rec.senders.sum()))
    seconds = time.perf_counter() - began
    norms_arr, sent = np.asarray(norms), np.asarray(messages, dtype=np.int64)
    start_bits = 0 if method in ("ef14", "gd") else 32 * d  # the EF21 family's uncompressed g_i^0
    paper_k = d if comp.name in ("identity", "natural") else comp.k
    bits, bits_paper = start_bits + comp.bits * sent / n, 32 * paper_k * sent / n  # per client
    summary = {
        "dataset": dataset, "method": method, "compressor": comp.name, "k": comp.k, "n_clients": n, "d": d,
        "lambda": problem.lam, "L": smooth.L, "L_i": list(smooth.L_i), "L_QM": smooth.L_QM, "L_AM": smooth.L_AM,
        "alpha": comp.alpha, "theory_step": theory, "step": gamma, "step_multiplier": step_multiplier,
        "iterations": state.t, "max_iterations": iterations, "tol": tol,
        "grad_norm_sq": [_finite(v) for v in norms_arr[::RECORD_EVERY]], "grad_norm_sq_every": RECORD_EVERY,
        "final_grad_norm_sq": _finite(norms_arr[-1]), "first_below": first_below(norms_arr),
        "bits_per_client": _number(bits[-1]), "bits_per_client_paper": _number(bits_paper[-1]),
        "bits_convention": BITS_CONVENTION, "x0": "numpy.random.default_rng(0).standard_normal(d)", "seed": seed,
        "diverged": not math.isfinite(norms_arr[-1]), "seconds": seconds,
    }
    if method == "ef21-pp":
        summary["participation"] = participation
    if method == "ef21-sgd":
        summary["batch_fraction"] = batch_fraction
    return Run(summary, norms_arr, bits, bits_paper)


def first_below(norms: np.ndarray) -> dict[str, int | None]:
    """First iteration whose ||grad f||^2 is below each tolerance of ``TOLERANCES`` (None when never)."""
    out = {}
    for key in TOLERANCES:
        hits = np.flatnonzero(norms < float(key))
        out[key] = int(hits[0]) if len(hits) else None
    return out


def _number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _finite(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def plot_runs(runs: dict[str, Run], path, title: str = "") -> None:
    """||grad f(x^t)||^2 (log scale) against bits per client, both conventions side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, run in runs.items():
        for ax, bits in zip(axes, (run.bits, run.bits_paper)):
            ax.semilogy(bits, run.grad_norm_sq, label=label)
    axes[0].set_xlabel("bits per client (exact wire size + initial round)")
    axes[1].set_xlabel("bits per client (iterations x k x 32, official plots)")
    for ax in axes:
        ax.set_ylabel(r"$\|\nabla f(x^t)\|^2$")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
