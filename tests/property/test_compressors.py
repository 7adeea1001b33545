"""Compressor properties (arXiv 2106.05203, Def. 1) on float64 vectors.

Hypothesis checks the deterministic properties; the unbiasedness checks are fixed-seed statistical
tests whose tolerance (5 standard errors of the mean, from the known variance) is stated inline.
"""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedsim.core.compression import make_compressor, natural_round, theta_beta, xi
from fedsim.core.error_feedback import compress_rows

vectors = st.integers(1, 24).flatmap(lambda d: st.lists(
    st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False), min_size=d, max_size=d))
untied_vectors = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=24, unique=True).flatmap(
    lambda mags: st.lists(st.sampled_from([-1.0, 1.0]), min_size=len(mags), max_size=len(mags)).map(
        lambda signs: [s * m for s, m in zip(signs, mags)]))
tied_vectors = st.lists(st.integers(-3, 3), min_size=1, max_size=16)  # many ties by construction


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _k(d, data):
    return data.draw(st.integers(1, d), label="k")


@settings(max_examples=100, deadline=None)
@given(vectors, st.data())
def test_top_k_sends_at_most_k_entries_and_contracts(v, data):
    v = _t(v)
    d = len(v)
    k = _k(d, data)
    out = make_compressor("top-k", d, k=k)(v)
    nz = torch.nonzero(out).flatten()
    assert len(nz) <= k
    assert torch.equal(out[nz], v[nz])  # values are sent as they are (no rescaling)
    err, norm = float((out - v).square().sum()), float(v.square().sum())
    assert err <= (1 - k / d) * norm * (1 + 1e-12) + 1e-300
    if len(nz):  # what is kept is at least as large as anything dropped
        assert out[nz].abs().min() >= (v - out).abs().max()


@settings(max_examples=50, deadline=None)
@given(untied_vectors, st.data(), st.floats(1e-3, 1e3))
def test_top_k_is_positively_homogeneous(v, data, scale):
    v = _t(v)
    assume(len(torch.unique((scale * v).abs())) == len(v))  # still untied after rounding
    comp = make_compressor("top-k", len(v), k=_k(len(v), data))
    torch.testing.assert_close(comp(scale * v), scale * comp(v), rtol=1e-15, atol=0)


@settings(max_examples=100, deadline=None)
@given(tied_vectors, st.data())
def test_top_k_breaks_ties_by_lower_index(v, data):
    d = len(v)
    k = _k(d, data)
    expected = sorted(range(d), key=lambda i: (-abs(v[i]), i))[:k]
    out = make_compressor("top-k", d, k=k)(_t(v))
    assert sorted(torch.nonzero(out).flatten().tolist()) == sorted(i for i in expected if v[i] != 0)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 5), tied_vectors, st.data())
def test_batched_rows_equal_the_per_vector_compressor(rows, v, data):
    d = len(v)
    mat = torch.stack([_t(v).roll(r) * (r + 1) for r in range(rows)])
    for name in ("top-k", "rand-k", "natural", "identity"):
        comp = make_compressor(name, d, k=_k(d, data) if name in ("top-k", "rand-k") else None)
        gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        loop = torch.stack([comp(row, gen_a) for row in mat])
        assert torch.equal(compress_rows(comp, mat, gen_b), loop)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False), min_size=1, max_size=16),
       st.integers(0, 2 ** 31))
def test_natural_rounds_to_neighbouring_powers_of_two(v, seed):
    v = _t(v)
    out = make_compressor("natural", len(v), unbiased=True)(v, torch.Generator().manual_seed(seed))
    for x, c in zip(v.tolist(), out.tolist()):
        if x == 0:
            assert c == 0
            continue
        low = 2.0 ** math.floor(math.log2(abs(x)))
        assert math.copysign(1, c) == math.copysign(1, x) and abs(c) in (low, 2 * low)
    contractive = make_compressor("natural", len(v))(v, torch.Generator().manual_seed(seed))
    assert torch.equal(contractive, out * (8 / 9))


@settings(max_examples=100, deadline=None)
@given(st.floats(1e-6, 1.0))
def test_xi_bound_and_theta_beta(alpha):
    assume(alpha < 1)
    theta, beta = theta_beta(alpha)
    assert 0 < theta <= 1 and beta >= 0
    assert xi(alpha) == pytest.approx(math.sqrt(beta / theta), rel=1e-9)
    assert xi(alpha) <= 2 / alpha - 1 + 1e-9


def test_compressor_constants():
    assert make_compressor("natural", 10).alpha == pytest.approx(8 / 9)
    assert make_compressor("natural", 10, unbiased=True).omega == pytest.approx(1 / 8)
    assert make_compressor("top-k", 68, k=1).alpha == pytest.approx(1 / 68)
    assert make_compressor("rand-k", 10, k=3, unbiased=True).omega == pytest.approx(10 / 3 - 1)
    assert xi(make_compressor("natural", 10).alpha) == pytest.approx(0.5)


# -- fixed-seed statistical checks -------------------------------------------------------------------------

DRAWS = 5_000


def _draws(comp, v, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return compress_rows(comp, v.expand(DRAWS, -1).clone(), gen)


def _natural_draws(v, seed=0, draws=100_000):
    """The unbiased natural rounding drawn many times at once (``natural_round`` is elementwise)."""
    return natural_round(v.expand(draws, -1).clone(), torch.Generator().manual_seed(seed))


def test_rand_k_scaled_is_unbiased_and_unscaled_contracts_in_expectation():
    d, k = 10, 3
    v = torch.linspace(-2.0, 3.0, d, dtype=torch.float64)
    out = _draws(make_compressor("rand-k", d, k=k, unbiased=True), v)
    # per coordinate, Var C_j = v_j^2 (d/k - 1): tolerance 5 standard errors of the mean
    tol = 5 * v.abs() * math.sqrt((d / k - 1) / DRAWS)
    assert torch.all((out.mean(0) - v).abs() <= tol + 1e-15)
    # unscaled rand-k: E||C(v) - v||^2 = (1 - k/d)||v||^2; each draw's error lies in [0, ||v||^2]
    err = (_draws(make_compressor("rand-k", d, k=k), v, seed=1) - v).square().sum(1)
    assert abs(float(err.mean()) - (1 - k / d) * float(v.square().sum())) <= \
        5 * float(v.square().sum()) * 0.5 / math.sqrt(DRAWS)


def test_natural_compression_is_unbiased_with_alpha_8_9():
    v = torch.tensor([0.3, -1.7, 5.0, 1e-3, -250.0, 4 / 3, 7.9, -0.01], dtype=torch.float64)
    out = _natural_draws(v)
    # Var C_j <= v_j^2 / 8 (omega = 1/8): tolerance 5 standard errors of the mean
    assert torch.all((out.mean(0) - v).abs() <= 5 * v.abs() * math.sqrt(1 / 8 / len(out)))
    # contractive form (8/9) C: E||C(v) - v||^2 <= (1/9)||v||^2 entrywise. Each draw's squared error
    # lies in [0, v_j^2], so its std is <= v_j^2 / 2: tolerance 5 standard errors, 5 v_j^2 / (2 sqrt(DRAWS))
    err = ((8 / 9) * out - v).square().mean(0)
    assert torch.all(err <= v.square() * (1 / 9 + 2.5 / math.sqrt(len(out))))
    # equality, in every draw, at |v| = (4/3) 2^e where omega = 1/8 is attained
    worst = torch.tensor([4 / 3, -8 / 3, 4 / 3 * 2 ** -10], dtype=torch.float64)
    err_worst = ((8 / 9) * _natural_draws(worst, draws=1000) - worst).square()
    torch.testing.assert_close(err_worst, (worst.square() / 9).expand_as(err_worst), rtol=1e-12, atol=0)
