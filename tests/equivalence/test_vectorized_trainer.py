"""The vectorized cohort trainer (torch.func) matches the per-client reference loop."""

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from fedsim.core.params import ParamSpec
from fedsim.local.optimizer import ClientOptimizer
from fedsim.local.reference import Job, minibatches, train_cohort
from fedsim.local.vectorized import train, train_cohort_vectorized
from fedsim.models import build_model

from conftest import tiny_config
from helpers import train as train_run


class Images:
    """A tiny image split with the ``take(idx) -> (x, y)`` interface."""

    def __init__(self, n=400, shape=(1, 28, 28), classes=10, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, *shape, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def take(self, idx):
        return self.x[idx], self.y[idx]


# Unequal data sizes (a 7-sample client gets partial batches), unequal steps and learning rates.
JOBS = [Job(0, torch.arange(0, 7), 4, 0.05, 8, 11), Job(1, torch.arange(10, 90), 2, 0.1, 8, 12),
        Job(2, torch.arange(100, 133), 6, 0.05, 8, 13)]


@pytest.mark.parametrize("name", ["logreg", "mlp", "lenet", "cnn"])
def test_vectorized_matches_reference_loop(name):
    torch.manual_seed(0)
    data = Images()
    model = build_model(name, (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    start = spec.flatten(model.state_dict())
    ref, ref_loss = train_cohort(model, spec, start, JOBS, data)
    vec, vec_loss = train_cohort_vectorized(model, spec, start, JOBS, data)
    # Batched kernels sum in another order; differences stay at float32 round-off.
    assert torch.allclose(vec, ref, atol=1e-5, rtol=0)
    assert torch.allclose(vec_loss, ref_loss, atol=1e-5)
    assert (ref.abs().max() > 1e-3)  # the clients actually moved


def test_dispatch_and_forcing():
    data = Images(n=200)
    model = build_model("mlp", (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    start = spec.flatten(model.state_dict())
    seq = train(model, spec, start, JOBS[:2], data, "sequential")[0]
    auto = train(model, spec, start, JOBS[:2], data, "auto")[0]  # CPU: the loop
    assert torch.equal(seq, auto)
    with pytest.raises(ValueError, match="client.trainer"):
        train(model, spec, start, JOBS, data, "turbo")


def test_federated_run_with_the_vectorized_trainer_matches_the_loop():
    raw = dict(participation={"name": "anarchic", "p": 0.7, "max_steps": 5}, **{"strategy.name": "afa-cs"})
    seq, _, _ = train_run(tiny_config(**raw, **{"client.trainer": "sequential"}))
    vec, _, _ = train_run(tiny_config(**raw, **{"client.trainer": "vectorized"}))
    assert torch.allclose(vec, seq, atol=1e-5)


OPTIMIZERS = {
    "momentum": ClientOptimizer(momentum=0.9),
    "nesterov": ClientOptimizer(momentum=0.9, nesterov=True),
    "weight-decay": ClientOptimizer(weight_decay=0.01),
    "prox": ClientOptimizer(prox_mu=0.5),
    "all": ClientOptimizer(momentum=0.5, nesterov=True, weight_decay=0.001, prox_mu=0.1),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["logreg", "lenet"])
def test_vectorized_matches_the_loop_with_momentum_weight_decay_and_prox(name, opt):
    data = Images()
    model = build_model(name, (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    start = spec.flatten(model.state_dict())
    jobs = [dataclasses.replace(j, opt=OPTIMIZERS[opt]) for j in JOBS]
    ref, _ = train_cohort(model, spec, start, jobs, data)
    vec, _ = train_cohort_vectorized(model, spec, start, jobs, data)
    assert torch.allclose(vec, ref, atol=1e-5, rtol=0)
    plain, _ = train_cohort(model, spec, start, JOBS, data)
    assert not torch.allclose(ref, plain, atol=1e-4)  # the optimizer did something


def test_the_loop_is_torch_sgd():
    """The reference direction equals torch.optim.SGD's (momentum, Nesterov, weight decay); FedProx's
    term is the gradient of mu/2 ||w - w0||^2 added to the loss."""
    data = Images()
    model = build_model("mlp", (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    start = spec.flatten(model.state_dict())
    opt = ClientOptimizer(momentum=0.8, nesterov=True, weight_decay=0.01, prox_mu=0.3)
    job = dataclasses.replace(JOBS[2], opt=opt)
    ours, _ = train_cohort(model, spec, start, [job], data)
    ref = build_model("mlp", (1, 28, 28), 10, seed=0)
    w0 = [p.detach().clone() for p in ref.parameters()]
    sgd = torch.optim.SGD(ref.parameters(), lr=job.lr, momentum=0.8, nesterov=True, weight_decay=0.01)
    for idx in minibatches(job.indices, job.local_steps, job.batch_size, torch.Generator().manual_seed(job.seed)):
        sgd.zero_grad()
        x, y = data.take(idx)
        prox = sum(((p - a) ** 2).sum() for p, a in zip(ref.parameters(), w0))
        (F.cross_entropy(ref(x), y) + 0.3 / 2 * prox).backward()
        sgd.step()
    assert torch.allclose(ours[0], spec.flatten(ref.state_dict()) - start, atol=1e-6)
