"""Split a training set among simulated clients.

:func:`partition` returns one sorted int64 index array per client (indices into the train split).
Every scheme is a pure function of its arguments and ``seed`` (a fresh ``numpy`` Generator), so a
partition is reproducible and can be logged. Parts are disjoint and, except ``"natural"`` with
fewer clients than groups, cover every index.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SCHEMES", "label_histogram", "partition"]

SCHEMES = ("iid", "dirichlet", "client-dirichlet", "shards", "contiguous", "natural")


def partition(labels: np.ndarray, num_clients: int, scheme: str, *, seed: int,
              alpha: float = 0.5, shards_per_client: int = 2,
              groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Partition ``len(labels)`` samples into ``num_clients`` index arrays.

    Schemes:
      * ``"iid"`` -- a random permutation cut into near-equal parts (sizes differ by <= 1).
      * ``"dirichlet"`` -- per class c, p ~ Dir(alpha * 1_N) and class c's shuffled indices are cut
        at the cumulative proportions. Small alpha is skewed (0.1 strongly), large alpha near IID.
        Afterwards every empty client receives one random sample taken from the currently
        largest client, so no client is empty (this slightly perturbs the Dirichlet draw).
      * ``"client-dirichlet"`` -- FedAU's generator (arXiv 2306.03401, App. D; IBM/fedau): every
        client gets ``n // N`` samples whose label mix is q_n ~ Dir(alpha * 1_C); a class that runs
        out is replaced by the client's other classes in proportion to q_n (then by any class left).
      * ``"shards"`` -- indices sorted by label (random order within a label) are cut into
        ``num_clients * shards_per_client`` near-equal shards; each client gets
        ``shards_per_client`` random shards (McMahan et al.'s pathological non-IID).
      * ``"contiguous"`` -- indices in file order cut into N chunks of ``n // N``, the remainder
        going to the last client (EF21's recipe); ``seed`` is unused.
      * ``"natural"`` -- one client per distinct value of ``groups`` (sorted), keeping the first
        ``num_clients`` groups; ``num_clients`` may not exceed the number of groups.

    Raises ``ValueError`` naming the offending argument.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) \
            or num_clients < 1:
        raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
    num_clients = int(num_clients)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; known: {', '.join(SCHEMES)}")
    if scheme != "natural" and num_clients > n:
        raise ValueError(f"num_clients={num_clients} exceeds the number of samples {n}")
    rng = np.random.default_rng(seed)

    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "dirichlet":
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        parts = _dirichlet(labels, num_clients, float(alpha), rng)
    elif scheme == "client-dirichlet":
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        parts = _client_dirichlet(labels, num_clients, float(alpha), rng)
    elif scheme == "shards":
        if isinstance(shards_per_client, bool) or not isinstance(shards_per_client, (int, np.integer)) \
                or shards_per_client < 1:
            raise ValueError(f"shards_per_client must be a positive int, got {shards_per_client!r}")
        num_shards = num_clients * int(shards_per_client)
        if num_shards > n:
            raise ValueError(f"shards_per_client={shards_per_client} gives {num_shards} shards "
                             f"for only {n} samples")
        order = rng.permutation(n)
        order = order[np.argsort(labels[order], kind="stable")]
        shards = np.array_split(order, num_shards)
        owner = rng.permutation(num_shards).reshape(num_clients, int(shards_per_client))
        parts = [np.concatenate([shards[s] for s in row]) for row in owner]
    elif scheme == "contiguous":
        size = n // num_clients
        bounds = [i * size for i in range(num_clients)] + [n]
        parts = [np.arange(bounds[i], bounds[i + 1]) for i in range(num_clients)]
    else:
        parts = _natural(n, num_clients, groups)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for k, chunk in enumerate(np.split(idx, cuts)):
            buckets[k].append(chunk)
    parts = [np.concatenate(b) if b else np.empty(0, np.int64) for b in buckets]
    for k in range(num_clients):  # no empty client: borrow from the largest one
        if len(parts[k]) == 0:
            big = int(np.argmax([len(p) for p in parts]))
            j = int(rng.integers(len(parts[big])))
            parts[k] = parts[big][j:j + 1]
            parts[big] = np.delete(parts[big], j)
    return parts


def _client_dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
                      rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
    size = len(labels) // num_clients
    parts = []
    for _ in range(num_clients):
        q = rng.dirichlet(np.full(len(classes), alpha))
        want = rng.multinomial(size, q)
        taken: list[int] = []
        for c, k in enumerate(want):
            taken += [pools[c].pop() for _ in range(min(k, len(pools[c])))]
        while len(taken) < size:  # refill from classes with samples left, preferring the client's mix
            left = np.array([len(p) for p in pools], dtype=float)
            w = q * (left > 0)
            w = w / w.sum() if w.sum() > 0 else left / left.sum()
            c = int(rng.choice(len(classes), p=w))
            taken.append(pools[c].pop())
        parts.append(np.array(taken, dtype=np.int64))
    return parts


def _natural(n: int, num_clients: int, groups: np.ndarray | None) -> list[np.ndarray]:
    if groups is None:
        raise ValueError("groups is required for scheme 'natural'")
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
    ids, inverse = np.unique(groups, return_inverse=True)
    if num_clients > len(ids):
        raise ValueError(f"num_clients={num_clients} exceeds the {len(ids)} natural groups")
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(num_clients + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(num_clients)]


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client label fractions, shape [N, C]; each row sums to 1 (an empty part gives zeros)."""
    labels = np.asarray(labels)
    sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    flat = labels[np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1) for p in parts])] if len(parts) else labels[:0]
    if flat.size and flat.max() >= num_classes:
        raise ValueError(f"labels exceed num_classes={num_classes}")
    owner = np.repeat(np.arange(len(parts), dtype=np.int64), sizes)  # one pass for all N clients
    counts = np.bincount(owner * num_classes + flat, minlength=len(parts) * num_classes)
    return counts.reshape(len(parts), num_classes) / np.maximum(sizes, 1)[:, None]
