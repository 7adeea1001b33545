"""client.device: the device code path (model resident on the device, batches moved to it, deltas
back on the CPU) gives the reference result; cuda without a GPU is a config error naming the key."""

import numpy as np
import pytest
import torch

from fedsim.config import ConfigError
from fedsim.experiments.setup import load as load_config
from fedsim.experiments.setup import load_client_data, make_handler
from fedsim.local.device import resolve_device
from fedsim.local.handler import ClientHandler
from fedsim.local.reference import Job, train_cohort
from fedsim.core.params import ParamSpec
from fedsim.models import build_model

from conftest import tiny_config
from helpers import train as train_run

CUDA = torch.cuda.is_available()


def _random_split(seed: int, n: int = 300):
    """A split class of ``n`` random 28x28 images with random labels (``take(idx) -> (x, y)``)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)

    class Split:
        def take(self, idx):
            return x[idx], y[idx]

    return Split


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if CUDA else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="client.device is 'cuda' but torch sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="client.device must be one of cpu, cuda, auto"):
        resolve_device("tpu")


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(tiny_config(**{"client.device": "cuda"}))  # a CPU-only server may load it
    with pytest.raises(ConfigError, match="client.device is 'cuda'"):
        make_handler(cfg, load_client_data(cfg))


@pytest.mark.parametrize("over, key", [({"client.device": "tpu"}, "client.device"),
                                       ({"client.workers": -1}, "client.workers"),
                                       ({"client.workers": 2, "client.device": "cuda"}, "client.workers"),
                                       ({"client.workers": 0, "client.device": "cuda"}, "client.workers")])
def test_bad_device_or_workers_fail_at_load(over, key):
    with pytest.raises(ConfigError, match=key):
        load_config(tiny_config(**over))


def test_workers_apply_to_cpu_training_only(monkeypatch):
    cfg = load_config(tiny_config(**{"client.workers": 2, "client.device": "auto"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto would pick the GPU ...
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # ... (not moved here)
    handler = make_handler(cfg, load_client_data(cfg))
    assert handler.device.type == "cuda" and handler.workers == 1  # ... and train there, in process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert make_handler(cfg, load_client_data(cfg)).workers == 2


def test_device_path_on_cpu_matches_the_reference():
    """The handler's device path (device='cpu', vectorized trainer) against the plain reference loop."""
    Split = _random_split(0)
    parts = [np.arange(0, 7), np.arange(10, 90), np.arange(100, 133)]
    model = build_model("lenet", (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    start = spec.flatten(model.state_dict())
    jobs = [Job(c, torch.as_tensor(p), s, 0.05, 8, 20 + c) for c, (p, s) in enumerate(zip(parts, [4, 2, 6]))]
    ref, ref_loss = train_cohort(build_model("lenet", (1, 28, 28), 10, seed=0), spec, start, jobs, Split())
    handler = ClientHandler(model, Split(), parts, trainer="vectorized", device="cpu")
    got, loss = handler._train(start, jobs)
    assert got.device.type == "cpu" and got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5, rtol=0) and torch.allclose(loss, ref_loss, atol=1e-5)
    assert ref.abs().max() > 1e-3


def test_federated_run_with_device_auto_equals_cpu_here():
    raw = dict(participation={"name": "anarchic", "p": 0.7, "max_steps": 5}, **{"strategy.name": "afa-cs"})
    cpu, _, _ = train_run(tiny_config(**raw, **{"client.device": "cpu", "client.trainer": "sequential"}))
    auto, _, _ = train_run(tiny_config(**raw, **{"client.device": "auto"}))  # auto trainer: CPU loop / GPU vmap
    if CUDA:
        assert torch.allclose(auto, cpu, atol=1e-4)
    else:
        assert torch.equal(auto, cpu)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (the GPU path is checked on CPU above)")
@pytest.mark.parametrize("trainer", ["sequential", "vectorized"])
def test_cuda_training_matches_the_cpu_reference(trainer):
    Split = _random_split(1)
    parts = [np.arange(0, 50), np.arange(50, 120), np.arange(120, 300)]
    spec = ParamSpec.of(build_model("cnn", (1, 28, 28), 10, seed=0))
    start = spec.flatten(build_model("cnn", (1, 28, 28), 10, seed=0).state_dict())
    jobs = [Job(c, torch.as_tensor(p), 3 + c, 0.05, 16, 40 + c) for c, p in enumerate(parts)]
    ref, _ = train_cohort(build_model("cnn", (1, 28, 28), 10, seed=0), spec, start, jobs, Split())
    handler = ClientHandler(build_model("cnn", (1, 28, 28), 10, seed=0), Split(), parts, trainer=trainer,
                            device="cuda")
    got, _ = handler._train(start, jobs)
    assert got.device.type == "cpu"
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (batched = one by one is checked on CPU in test_staleness)")
def test_cuda_batched_repair_matches_the_cpu():
    """repair.device = cuda: a round's stale answers inverted together on the GPU give what the CPU
    gives (the same seeded starts; signed steps make long runs sensitive to round-off, so a short one)."""
    from fedsim.config import RepairConfig
    from fedsim.inversion.functional import local_update
    from fedsim.repair import Problem, repair_batch

    model = build_model("lenet", (1, 28, 28), 10, seed=0)
    spec = ParamSpec.of(model)
    w_s = spec.flatten(model.state_dict())
    g = torch.Generator().manual_seed(0)
    w_t = w_s + 0.01 * torch.randn(spec.dim, generator=g)
    x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
    replay = dict(local_steps=2, lr=0.05, batch_size=8)
    update = local_update(model, spec, w_s, x, y, steps=2, lr=0.05, batch_size=8).detach()
    settings = RepairConfig(samples=8, iterations=3, mode="correct")
    results = {}
    for dev in ("cpu", "cuda"):
        problems = [Problem(w_s, update * (1 + 0.1 * i), torch.Generator().manual_seed(i)) for i in range(3)]
        results[dev] = repair_batch(model.to(dev), spec, problems, w_t, settings=settings, input_shape=(1, 28, 28),
                                    box=(0.0, 1.0), **replay)
    for cpu, gpu in zip(results["cpu"], results["cuda"]):
        assert gpu.update.device.type == "cpu"
        assert abs(cpu.residual - gpu.residual) < 1e-3 and torch.allclose(cpu.update, gpu.update, atol=1e-4, rtol=1e-3)
