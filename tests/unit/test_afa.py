"""AFA-CD / AFA-CS pure rules (arXiv 2108.09875) on toy problems with known answers."""

import pytest
import torch

from fedsim.core import afa


def test_mean_gradient_inverts_plain_sgd():
    # K = 4 SGD steps with a constant gradient g at lr 0.1 move the model by -0.4 g.
    g = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    steps = torch.tensor([4, 1])
    delta = -0.1 * steps.reshape(-1, 1) * g
    torch.testing.assert_close(afa.mean_gradient(delta, steps, 0.1), g)
    with pytest.raises(ValueError, match="local_steps"):
        afa.mean_gradient(delta, torch.tensor([0, 1]), 0.1)


def test_k_normalisation_keeps_a_many_step_worker_from_dominating():
    """Two workers with the same gradient but K = 1 and K = 10 contribute equally."""
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    deltas = torch.stack([-0.1 * 1 * g, -0.1 * 10 * g])
    grads = afa.mean_gradient(deltas, torch.tensor([1, 10]), 0.1)
    torch.testing.assert_close(grads[0], grads[1])
    # without normalisation the K = 10 worker's delta is ten times larger
    assert float(deltas[1].norm() / deltas[0].norm()) == pytest.approx(10.0)


def test_cs_memory_overwrites_and_averages_over_all_workers():
    mem = afa.cs_init(3, 2, torch.float64)
    g, mem = afa.cs_aggregate(mem, torch.tensor([0, 2]), torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(g, torch.tensor([1.0, 1.0], dtype=torch.float64))
    g, mem = afa.cs_aggregate(mem, torch.tensor([2]), torch.tensor([[0.0, 6.0]], dtype=torch.float64))
    torch.testing.assert_close(g, torch.tensor([1.0, 2.0], dtype=torch.float64))  # worker 0's old slot reused


def _simulate(cross_silo: bool, rounds: int = 400) -> float:
    """f_i(x) = (x - c_i)^2 / 2 with c = (0, 1); worker 0 answers every round, worker 1 every 5th."""
    c = torch.tensor([0.0, 1.0], dtype=torch.float64)
    x = torch.zeros(1, dtype=torch.float64)
    mem = afa.cs_init(2, 1, torch.float64)
    for t in range(rounds):
        clients = torch.tensor([0, 1]) if t % 5 == 0 else torch.tensor([0])
        grads = (x - c[clients]).reshape(-1, 1)  # exact local gradients, K = 1, no delay
        if cross_silo:
            g, mem = afa.cs_aggregate(mem, clients, grads)
        else:
            g = afa.cd_aggregate(grads)
        x = afa.server_step(x, g, server_lr=1.0, local_lr=0.2)
    return float(x)


def test_cs_is_unbiased_under_correlated_arrivals_and_cd_is_not():
    """The objective's minimiser is 0.5; AFA-CD drifts to the frequent worker, AFA-CS does not."""
    assert abs(_simulate(cross_silo=True) - 0.5) < 0.06
    assert _simulate(cross_silo=False) < 0.2



def test_the_compact_cs_memory_equals_the_dense_one():
    """cs_update (running sum + answered workers only) gives cs_aggregate's mean on every round."""
    gen = torch.Generator().manual_seed(0)
    n, d = 7, 5
    dense = afa.cs_init(n, d)
    total, last = torch.zeros(d, dtype=torch.float64), {}
    for _ in range(30):
        k = int(torch.randint(0, 4, (1,), generator=gen))
        clients = torch.randint(0, n, (k,), generator=gen)
        grads = torch.randn(k, d, generator=gen)
        g_dense, dense = afa.cs_aggregate(dense, clients, grads)
        g_compact, total, last = afa.cs_update(total, last, n, clients, grads)
        assert torch.allclose(g_compact, g_dense, atol=1e-6)
    assert set(last) == set(torch.nonzero(dense.abs().sum(1) > 0).flatten().tolist())
