"""DP-FTRL binary-tree aggregation as a factorization, restarted every epoch (Kairouz, McMahan,
Song, Thakkar, Thakurta, Xu, ICML 2021, arXiv 2103.00039, Alg. 1 and §4 "restarts").

One tree covers an epoch of ``epoch`` steps; with k epochs, C [m, n] is block-diagonal with one
tree per epoch (the last one shorter when ``epoch`` does not divide n). A tree's rows are the
dyadic intervals [i·2^l, (i+1)·2^l) inside [0, epoch) (leaves first, then level by level).

Two estimators of the prefix sum up to step t, both using only nodes complete by t:

- ``streaming`` (Alg. 1): the sum of the popcount(t+1) nodes of t+1's binary decomposition;
- ``honaker`` (Honaker, "Efficient use of differentially private binary trees", 2015, used online
  in arXiv 2103.00039 App. D): each decomposition node's total is estimated from its whole complete
  subtree by inverse-variance weighting bottom-up (a node of height h mixes its own value, weight
  α_h, with its children's estimates, weight 1 − α_h; α_0 = 1, α_h = 2V/(2V + 1) with V = α_{h−1}
  the child's variance per unit noise). For a complete subtree with i.i.d. node noise this upward
  pass is the minimum-variance linear unbiased estimate of its total (Hay et al., VLDB 2010, §4).

B_tree [n, m] holds the estimator's node weights (``B_tree·C = tri(n)``); a completed epoch's
total stays in every later prefix, so in gradient space (``W = tri(n)⁻¹·B_tree``) the noise map is
block-diagonal too. A leaf lies in ``floor(log2(epoch)) + 1`` nodes: sens² under single
participation; under one participation per epoch the k blocks are orthogonal (sens² adds up).
"""

from __future__ import annotations

import numpy as np

ESTIMATORS = ("streaming", "honaker")


def tree_nodes(n: int) -> list[tuple[int, int]]:
    """(level, start) of every node of one tree over n leaves, in row order."""
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


def _honaker_alphas(height: int) -> np.ndarray:
    """α_0..α_height: the weight of a node's own value in its subtree's upward estimate."""
    alpha, v = np.ones(height + 1), 1.0
    for h in range(1, height + 1):
        alpha[h] = 2 * v / (2 * v + 1)
        v = alpha[h]
    return alpha


def _subtree_weights(level: int, start: int, n: int, alpha: np.ndarray) -> dict[int, float]:
    """Honaker weights of every node under (level, start) for that node's total."""
    offsets, out = _offsets(n), {}
    stack = [(level, start, 1.0)]
    while stack:
        lv, s, carried = stack.pop()
        out[offsets[lv] + (s >> lv)] = carried * alpha[lv]
        if lv:
            rest = carried * (1.0 - alpha[lv])
            stack += [(lv - 1, s, rest), (lv - 1, s + (1 << (lv - 1)), rest)]
    return out


def _block_estimator(n: int, estimator: str) -> np.ndarray:
    """B_tree [n, m] of one tree over n steps."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"tree estimator must be one of {ESTIMATORS}, got {estimator!r}")
    nodes = tree_nodes(n)
    B = np.zeros((n, len(nodes)))
    alpha = _honaker_alphas(len(_offsets(n)))
    for t in range(n):
        for r in prefix_nodes(t, n):
            if estimator == "streaming":
                B[t, r] = 1.0
            else:
                for node, w in _subtree_weights(*nodes[r], n, alpha).items():
                    B[t, node] = w
    return B


def _epochs(n: int, epoch: int | None) -> list[int]:
    """Lengths of the restarted trees covering n steps."""
    epoch = n if epoch is None else int(epoch)
    if not 1 <= epoch <= n:
        raise ValueError(f"tree epoch must be in [1, {n}], got {epoch}")
    return [epoch] * (n // epoch) + ([n % epoch] if n % epoch else [])


def _block_diag(blocks: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)))
    i = j = 0
    for b in blocks:
        out[i:i + b.shape[0], j:j + b.shape[1]] = b
        i, j = i + b.shape[0], j + b.shape[1]
    return out


def _one_tree(n: int) -> np.ndarray:
    nodes = tree_nodes(n)
    C = np.zeros((len(nodes), n))
    for r, (level, start) in enumerate(nodes):
        C[r, start:start + (1 << level)] = 1.0
    return C


def tree_matrix(n: int, epoch: int | None = None) -> np.ndarray:
    """C [m, n]: C[r, j] = 1 if step j lies in node r (one tree per epoch)."""
    return _block_diag([_one_tree(e) for e in _epochs(n, epoch)])


def tree_estimator(n: int, epoch: int | None = None, estimator: str = "streaming") -> np.ndarray:
    """B_tree [n, m]: row t weighs the nodes that estimate the prefix sum up to t (``B_tree·C = tri(n)``)."""
    lengths = _epochs(n, epoch)
    blocks = [_block_estimator(e, estimator) for e in lengths]
    B = _block_diag(blocks)
    # a completed epoch's total (its last row) stays in every later prefix
    row, col = 0, 0
    for block in blocks[:-1]:
        row, col = row + block.shape[0], col + block.shape[1]
        B[row:, col - block.shape[1]:col] = block[-1]
    return B


def epoch_noise_maps(n: int, epoch: int | None = None, estimator: str = "streaming") -> list[np.ndarray]:
    """The gradient-space noise map's diagonal blocks, one per epoch ([e, m_e] each)."""
    return [np.diff(_block_estimator(e, estimator), axis=0, prepend=0.0) for e in _epochs(n, epoch)]


def tree_noise_map(n: int, epoch: int | None = None, estimator: str = "streaming") -> np.ndarray:
    """W = tri(n)⁻¹·B_tree [n, m]: block-diagonal, so a restart forgets the earlier trees' noise."""
    return _block_diag(epoch_noise_maps(n, epoch, estimator))
