"""DP-FTRL binary-tree aggregation as a factorization (Kairouz, McMahan, Song, Thakkar,
Thakurta, Xu, ICML 2021, arXiv 2103.00039, §3 / Alg. 1; Honaker's variance reduction not used).

C [m, n] has one row per dyadic interval [i·2^l, (i+1)·2^l) inside [0, n) (leaves first, then
level by level). The streaming estimator of the prefix sum up to step t adds the noise of the
popcount(t+1) nodes of t+1's binary decomposition, so B_tree (0/1, [n, m]) satisfies
``B_tree·C = tri(n)``; in gradient space the noise at step t is prefix noise t minus prefix
noise t−1, i.e. ``W = tri(n)⁻¹·B_tree``. A leaf lies in ⌈log2(n+1)⌉ nodes: that is sens²
under single participation.
"""

from __future__ import annotations

import numpy as np


def tree_nodes(n: int) -> list[tuple[int, int]]:
    """(level, start) of every node, in row order."""
    nodes, level = [], 0
    while (1 << level) <= n:
        size = 1 << level
        nodes += [(level, s) for s in range(0, n - size + 1, size)]
        level += 1
    return nodes


def _offsets(n: int) -> list[int]:
    """Row index of the first node of each level."""
    out, total, level = [], 0, 0
    while (1 << level) <= n:
        out.append(total)
        total += n >> level
        level += 1
    return out


def prefix_nodes(t: int, n: int) -> list[int]:
    """Rows of the nodes whose union is [0, t] (binary decomposition of t + 1, high bits first)."""
    offsets, rows, start = _offsets(n), [], 0
    for level in range(len(offsets) - 1, -1, -1):
        if (t + 1) >> level & 1:
            rows.append(offsets[level] + (start >> level))
            start += 1 << level
    return rows


def tree_matrix(n: int) -> np.ndarray:
    """C [m, n]: C[r, j] = 1 if step j lies in node r."""
    nodes = tree_nodes(n)
    C = np.zeros((len(nodes), n))
    for r, (level, start) in enumerate(nodes):
        C[r, start:start + (1 << level)] = 1.0
    return C


def tree_estimator(n: int) -> np.ndarray:
    """B_tree [n, m]: row t sums the nodes covering [0, t]."""
    B = np.zeros((n, len(tree_nodes(n))))
    for t in range(n):
        B[t, prefix_nodes(t, n)] = 1.0
    return B


def tree_noise_map(n: int) -> np.ndarray:
    """W = tri(n)⁻¹·B_tree [n, m]: the gradient-space noise of step t is row t of W·Z."""
    B = tree_estimator(n)
    return np.diff(B, axis=0, prepend=0.0)
