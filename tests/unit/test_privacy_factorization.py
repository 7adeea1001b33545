"""Factorizations: orientation, closed forms and known oracle values."""

import math

import numpy as np
import pytest

from fedsim.privacy import (C_from_gram, Factorization, ParticipationSchema, plan_factorization,
                            prefix_sum, workload)
from fedsim.privacy.blt import blt_coefs, blt_sensitivity_squared
from fedsim.privacy.dense import fixed_point, optimize_gram, pattern_mask
from fedsim.privacy.toeplitz import sqrt_coefs
from fedsim.privacy.tree import tree_estimator, tree_matrix, tree_noise_map
from fedsim.privacy.workloads import lr_schedule, momentum_matrix

FE = ParticipationSchema


def single(n):
    return ParticipationSchema.single(n)


def test_flip_cholesky_is_lower_triangular_with_the_right_gram():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(9, 9))
    X = G @ G.T + 9 * np.eye(9)
    C = C_from_gram(X)
    assert np.allclose(np.triu(C, 1), 0) and np.allclose(C.T @ C, X, atol=1e-12)
    L = np.linalg.cholesky(X)  # the pfl-research mistake: X = L Lᵀ, not LᵀL
    assert not np.allclose(L.T @ L, X, atol=1e-3)
    i, j = np.indices(X.shape)
    Xb = np.where(np.abs(i - j) < 3, X, 0.0) + 20 * np.eye(9)  # banded Gram -> banded C
    assert np.all(C_from_gram(Xb)[i - j >= 3] == 0)


def test_optimal_single_participation_n16_oracle():
    n = 16
    M = prefix_sum(n).T @ prefix_sum(n)
    X, info = optimize_gram(M, *pattern_mask(n, "fixed-epoch", 1, n))
    assert info["converged"] and np.allclose(np.diag(X), 1, atol=1e-12)
    C = C_from_gram(X)
    assert np.all(np.triu(C, 1) == 0) and np.allclose(C.T @ C, X, atol=1e-12)
    f = plan_factorization("optimal", single(n))
    assert np.all(np.triu(f.C, 1) == 0)
    assert np.sqrt((f.C ** 2).sum(0)).max() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(f.C.T @ f.C, X / np.diag(X).max(), atol=1e-10)
    m = f.metrics()
    assert m.rmse == pytest.approx(1.689404, rel=1e-6)
    assert m.loss == pytest.approx(2.854085, rel=1e-6) and m.sensitivity_exact
    # the Denisov et al. fixed point (an independent algorithm) reaches the same optimum
    Xfp, _ = fixed_point(prefix_sum(n))
    assert np.allclose(Xfp, X, atol=1e-6)
    # at this optimum the plain Cholesky factor has column norms far from 1
    assert np.sqrt((np.linalg.cholesky(X) ** 2).sum(0)).max() == pytest.approx(1.74, abs=0.01)


@pytest.mark.parametrize("kind,n,k,b", [("fixed-epoch", 16, 1, 16), ("fixed-epoch", 24, 3, 8),
                                        ("min-separation", 20, 4, 5), ("min-separation", 15, 2, 7)])
def test_identity_loss_is_k_times_n_plus_one_over_two(kind, n, k, b):
    m = plan_factorization("identity", ParticipationSchema(kind, n, k, b)).metrics()
    assert m.loss == pytest.approx(k * (n + 1) / 2, rel=1e-12)
    assert m.rmse == pytest.approx(math.sqrt(k * (n + 1) / 2), rel=1e-12)


def test_sqrt_toeplitz_coefficients_and_closed_forms():
    assert np.allclose(sqrt_coefs(5), [1, 0.5, 0.375, 0.3125, 0.2734375], rtol=0, atol=1e-15)
    n = 16
    f = plan_factorization("sqrt-toeplitz", single(n))
    c = sqrt_coefs(n)
    assert np.allclose(f.C @ f.C, prefix_sum(n), atol=1e-12) and np.allclose(f.B(), f.C, atol=1e-12)
    err = (f.B() ** 2).sum(1)
    assert np.allclose(err, np.cumsum(c ** 2), atol=1e-12)
    m = f.metrics()
    assert m.sensitivity ** 2 == pytest.approx((c ** 2).sum(), rel=1e-12)
    assert m.sensitivity == pytest.approx(1.394231, abs=1e-6)
    assert m.rmse == pytest.approx(1.796814, abs=1e-6)
    assert m.max_error == pytest.approx(1.943879, abs=1e-6)
    assert m.max_error == pytest.approx(m.sensitivity ** 2, rel=1e-12)


def test_tree_sensitivity_and_estimator():
    for n in range(1, 21):
        C, Bt = tree_matrix(n), tree_estimator(n)
        assert np.array_equal(Bt @ C, prefix_sum(n))
        m = plan_factorization("tree", single(n)).metrics()
        assert m.sensitivity ** 2 == pytest.approx(math.ceil(math.log2(n + 1)))
        assert m.mean_error == pytest.approx(np.mean([bin(t + 1).count("1") for t in range(n)]))


@pytest.mark.parametrize("estimator", ["streaming", "honaker"])
@pytest.mark.parametrize("n,epoch", [(16, 4), (24, 8), (23, 10), (13, 13)])
def test_restarted_tree_estimates_every_prefix(n, epoch, estimator):
    C, B = tree_matrix(n, epoch), tree_estimator(n, epoch, estimator)
    assert np.allclose(B @ C, prefix_sum(n))  # unbiased: the noiseless estimate is the prefix sum
    W = tree_noise_map(n, epoch, estimator)
    assert np.allclose(np.cumsum(W, axis=0), B)
    # causal: step t's noise only uses nodes complete by t (a node's last step <= t)
    last = np.array([np.flatnonzero(row).max() for row in C])
    assert all(last[np.flatnonzero(W[t])].max() <= t for t in range(n))


def test_honaker_is_the_least_squares_estimate_of_each_prefix():
    """For each prefix, Honaker's weights give the variance of the BLUE from the complete nodes
    (ordinary least squares on i.i.d. node noise, computed independently with pinv)."""
    n = 13
    C, B = tree_matrix(n), tree_estimator(n, None, "honaker")
    for t in range(n):
        done = np.flatnonzero(np.all(C[:, t + 1:] == 0, axis=1) & np.any(C[:, :t + 1] != 0, axis=1))
        blue = np.ones(t + 1) @ np.linalg.pinv(C[np.ix_(done, np.arange(t + 1))])
        assert (B[t] ** 2).sum() == pytest.approx((blue ** 2).sum(), rel=1e-10)
    assert tree_estimator(3, None, "honaker")[1].tolist() == pytest.approx([1 / 3, 1 / 3, 0, 2 / 3])  # variance 2/3


def test_restarts_and_honaker_are_the_papers_baseline():
    """Kairouz et al. restart the tree every epoch: under (k, b) fixed-epoch order each tree sees a
    client once, so sens² = k·(floor(log2 b) + 1); at b = 2^j this beats one tree over n steps."""
    for k, b in [(4, 8), (8, 8), (4, 16)]:
        schema = FE("fixed-epoch", k * b, k, b)
        tree = plan_factorization("tree", schema)
        assert tree.structure == {"kind": "tree", "epoch": b, "estimator": "streaming"}
        m = tree.metrics()
        assert m.sensitivity ** 2 == pytest.approx(k * (math.floor(math.log2(b)) + 1)) and m.sensitivity_exact
        one_tree = Factorization("tree", tree_matrix(k * b), prefix_sum(k * b), schema, {"kind": "tree"})
        assert m.rmse < 0.8 * one_tree.metrics().rmse
        assert plan_factorization("tree-honaker", schema).metrics().rmse < m.rmse


def test_banded_limits_are_optimal_and_identity():
    n = 12
    full = plan_factorization("banded", single(n), bands=n).metrics()
    assert full.loss == pytest.approx(plan_factorization("optimal", single(n)).metrics().loss, rel=1e-9)
    one = plan_factorization("banded", FE("min-separation", n, 3, 4), bands=1)  # equal norms
    assert np.allclose(one.C, np.eye(n)) and one.metrics().loss == pytest.approx(3 * (n + 1) / 2)
    # fixed-epoch only fixes each class's diagonal sum: the best diagonal has X_ii ∝ sqrt(n − i)
    diag = plan_factorization("banded", FE("fixed-epoch", n, 3, 4), bands=1)
    r = np.sqrt(n - np.arange(n))
    expected = sum(r[j::4].sum() ** 2 for j in range(4)) / n
    assert np.allclose(np.triu(diag.C, 1) + np.tril(diag.C, -1), 0)
    assert diag.metrics().loss == pytest.approx(expected, rel=1e-9) and expected < 3 * (n + 1) / 2
    f = plan_factorization("banded", FE("min-separation", n, 3, 4), bands=3)
    i, j = np.indices(f.C.shape)
    assert np.all(f.C[i - j >= 3] == 0) and np.allclose(np.diag(f.gram()), 1)
    assert f.metrics().sensitivity == pytest.approx(math.sqrt(3)) and f.metrics().sensitivity_exact


def test_multi_epoch_optimum_is_not_worse_than_single_epoch_strategies():
    s = FE("fixed-epoch", 32, 4, 8)
    losses = {m: plan_factorization(m, s).metrics().loss for m in ("identity", "sqrt-toeplitz", "banded", "optimal")}
    assert losses["optimal"] <= min(losses.values()) + 1e-9
    f = plan_factorization("optimal", s)
    X = f.gram()
    i, j = np.indices(X.shape)
    assert np.abs(X[((i - j) % 8 == 0) & (i != j)]).max() < 1e-15  # orthogonal formulation
    assert np.sqrt(np.diag(X)).max() == pytest.approx(1.0)


def test_multi_epoch_orthogonal_optimum_matches_a_general_solver():
    """n = 6, (k, b) = (2, 3): SLSQP over all X >= 0 with u_jᵀXu_j <= 1 finds the same loss."""
    from scipy.optimize import minimize
    n, k, b = 6, 2, 3
    M = prefix_sum(n).T @ prefix_sum(n)
    il = np.tril_indices(n)

    def X_of(p):
        L = np.zeros((n, n))
        L[il] = p
        return L @ L.T

    cons = [{"type": "ineq", "fun": lambda p, j=j: 1 - X_of(p)[np.ix_(range(j, n, b), range(j, n, b))].sum()}
            for j in range(b)]
    cons.append({"type": "ineq", "fun": lambda p: X_of(p)[np.tril_indices(n, -1)]})
    res = minimize(lambda p: np.trace(M @ np.linalg.inv(X_of(p))), 0.6 * np.eye(n)[il], constraints=cons,
                   method="SLSQP", options={"maxiter": 1000, "ftol": 1e-14})
    ours = plan_factorization("optimal", FE("fixed-epoch", n, k, b)).metrics().loss
    assert ours == pytest.approx(res.fun / n, rel=1e-6)


def test_blt_closed_form_sensitivity_and_quality():
    theta, omega = np.array([0.9, 0.5, 0.1]), np.array([0.2, 0.15, 0.05])
    c = blt_coefs(theta, omega, 20)
    assert blt_sensitivity_squared(theta, omega, 20) == pytest.approx((c ** 2).sum(), rel=1e-12)
    n = 32
    f = plan_factorization("blt", single(n), buffers=3)
    assert np.all(np.diff(f.C[:, 0]) <= 0) and np.all(f.C[:, 0] >= 0)
    th, om = f.structure["theta"], f.structure["omega"]
    assert f.metrics().sensitivity ** 2 == pytest.approx(blt_sensitivity_squared(th, om, n), rel=1e-10)
    sqrt_loss = plan_factorization("sqrt-toeplitz", single(n)).metrics().loss
    opt_loss = plan_factorization("optimal", single(n)).metrics().loss
    assert opt_loss < f.metrics().loss < sqrt_loss


def test_workload_with_momentum_and_lr_decay():
    A = workload(3, momentum=0.5, lr=np.array([1.0, 0.5, 0.25]))
    expected = np.tril(np.ones((3, 3))) @ np.diag([1, 0.5, 0.25]) @ np.array([[1, 0, 0], [0.5, 1, 0], [0.25, 0.5, 1]])
    assert np.allclose(A, expected)
    assert np.allclose(momentum_matrix(3, 0.0), np.eye(3))
    assert lr_schedule(5, "linear", final=0.2)[[0, -1]] == pytest.approx([1.0, 0.2])
    A = workload(12, momentum=0.9, lr=lr_schedule(12, "cooldown"))
    f = plan_factorization("optimal", FE("fixed-epoch", 12, 2, 6), A=A)
    assert np.allclose(f.B() @ f.C, A, atol=1e-9)
    assert f.metrics().loss < plan_factorization("identity", FE("fixed-epoch", 12, 2, 6), A=A).metrics().loss


@pytest.mark.parametrize("mechanism", ["optimal", "blt", "tree", "banded"])
def test_save_and_load_round_trip(tmp_path, mechanism):
    f = plan_factorization(mechanism, FE("fixed-epoch", 12, 2, 6))
    path = tmp_path / "f.npz"
    f.save(path)
    g = Factorization.load(path)
    assert g.fingerprint() == f.fingerprint() and g.mechanism == mechanism and g.schema == f.schema
    assert g.structure["kind"] == f.structure["kind"] and g.solver == f.solver
    assert g.metrics() == f.metrics()
    if mechanism == "blt":
        assert np.array_equal(g.structure["theta"], f.structure["theta"])
