"""Summaries over independent repetitions (seeds, attack trials): mean, sample std, 95% interval."""

from __future__ import annotations


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0


def ci95(values: list[float]) -> tuple[float, float]:
    """Two-sided 95% Student-t interval of the mean (the repetitions as i.i.d. draws); (nan, nan) for one value."""
    from scipy.stats import t

    n = len(values)
    mean, std = mean_std(values)
    if n < 2:
        return float("nan"), float("nan")
    half = float(t.ppf(0.975, n - 1)) * std / n ** 0.5
    return mean - half, mean + half
