"""Sensitivity formulas against brute force over participation patterns (n <= 12)."""

import itertools

import numpy as np
import pytest

from fedsim.privacy import (ParticipationSchema, ParticipationViolation, brute_force_squared,
                            plan_factorization, sensitivity_squared)
from fedsim.privacy.sensitivity import (fixed_epoch_squared, max_separated_sum, min_separation_squared,
                                        toeplitz_min_separation_squared)
from fedsim.privacy.toeplitz import sqrt_coefs, toeplitz_matrix

S = ParticipationSchema


def test_pattern_enumeration_and_enforcement():
    fe = S("fixed-epoch", 6, 2, 3)
    assert list(fe.patterns()) == [(0, 3), (1, 4), (2, 5)]
    ms = S("min-separation", 5, 3, 2)
    pats = set(ms.patterns())
    assert (0, 2, 4) in pats and (1, 3) in pats and (0, 1) not in pats and len(pats) == 5 + 6 + 1
    assert ms.allows([0], 2) and not ms.allows([0], 1) and not ms.allows([0, 2, 4], 4)
    assert fe.allows([1], 4) and not fe.allows([1], 3) and not fe.allows([], 6)
    fe.check([2, 5])
    with pytest.raises(ParticipationViolation, match="step 4"):
        fe.check([0, 4])
    with pytest.raises(ParticipationViolation):
        S("min-separation", 10, 2, 3).check([1, 3])
    with pytest.raises(ValueError, match="fixed-epoch needs"):
        S("fixed-epoch", 10, 3, 3)
    with pytest.raises(ValueError, match="cannot be reached"):
        S("min-separation", 10, 5, 3)


def test_separated_sum_dynamic_program_matches_brute_force():
    rng = np.random.default_rng(1)
    for n, k, b in [(9, 3, 2), (10, 2, 4), (8, 4, 1), (11, 3, 3)]:
        x = rng.random((4, n))
        brute = [max(sum(row[list(c)]) for size in range(1, k + 1) for c in itertools.combinations(range(n), size)
                     if all(q - p >= b for p, q in zip(c, c[1:]))) for row in x]
        assert np.allclose(max_separated_sum(x, k, b), brute)


CASES = [("fixed-epoch", 12, 3, 4), ("fixed-epoch", 12, 2, 6), ("min-separation", 12, 3, 4),
         ("min-separation", 11, 2, 5), ("min-separation", 10, 4, 3)]


@pytest.mark.parametrize("mechanism", ["identity", "tree", "tree-honaker", "sqrt-toeplitz", "optimal", "banded", "blt"])
@pytest.mark.parametrize("case", CASES)
def test_sensitivity_matches_brute_force(mechanism, case):
    schema = S(*case)
    f = plan_factorization(mechanism, schema, max_iter=400)
    brute = brute_force_squared(f.gram(), schema)
    ours = f.sensitivity()
    assert brute.exact  # these factors have X >= 0 or orthogonal participations
    assert ours.squared >= brute.squared * (1 - 1e-12)  # always a valid bound
    if ours.exact:
        assert ours.squared == pytest.approx(brute.squared, rel=1e-10)
    if mechanism != "optimal" or schema.kind == "fixed-epoch":  # exact for every one of these
        assert ours.exact


def test_toeplitz_formula_equals_generic_bound_equals_brute_force():
    n = 12
    C = toeplitz_matrix(sqrt_coefs(n))
    X = C.T @ C
    for k, b in [(3, 4), (2, 5), (4, 3), (2, 11)]:
        formula = toeplitz_min_separation_squared(sqrt_coefs(n), n, k, b)
        generic = min_separation_squared(X, k, b)
        brute = brute_force_squared(X, S("min-separation", n, k, b))
        assert formula == pytest.approx(generic.squared, rel=1e-12) and generic.exact
        assert formula == pytest.approx(brute.squared, rel=1e-12)
        if n % b == 0 and n // b == k:
            assert formula == pytest.approx(fixed_epoch_squared(X, k, b).squared, rel=1e-12)


def test_fixed_epoch_factor_is_under_noised_under_min_separation():
    """A known pitfall: the ME-MF factor's min-sep sensitivity is strictly larger."""
    fe = plan_factorization("optimal", S("fixed-epoch", 12, 3, 4))
    s_fe = fe.sensitivity().squared
    ms = S("min-separation", 12, 3, 4)
    s_ms = fe.sensitivity(ms).squared
    brute = brute_force_squared(fe.gram(), ms).squared
    assert s_fe < brute <= s_ms * (1 + 1e-12)
    assert s_fe == pytest.approx(max(np.diag(fe.gram())[j::4].sum() for j in range(4)))


def test_single_participation_is_max_column_norm():
    f = plan_factorization("sqrt-toeplitz", S("fixed-epoch", 9, 1, 9))
    assert sensitivity_squared(f.gram(), f.schema).squared == pytest.approx((f.C[:, 0] ** 2).sum())


def test_mixed_sign_gram_is_an_upper_bound_not_exact():
    X = np.array([[1.0, -0.5, 0.0], [-0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
    s = fixed_epoch_squared(X, 2, 1)  # one class holding all 3 steps, first 2 of them
    assert not s.exact and s.squared == pytest.approx(3.0)
