"""Which training rows each virtual client owns, stored compactly for large populations.

``ClientRows`` keeps the N clients' index lists as one int64 array of all rows plus ``[N + 1]``
offsets (CSR), so a population costs 8 bytes per training row plus 8 per client instead of one
tensor object per client (~100 bytes each before any data). ``rows[cid]`` is a view, not a copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class ClientRows:
    def __init__(self, parts: Sequence[np.ndarray | torch.Tensor]):
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))  # [N + 1]
        flat = [np.asarray(p, dtype=np.int64).reshape(-1) for p in parts]
        self.rows = torch.from_numpy(np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64))  # [sum n_i]

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, cid: int) -> torch.Tensor:
        """Rows of client ``cid`` (int64 [n_i], a view)."""
        if not 0 <= cid < len(self):
            raise IndexError(f"client {cid} not in 0..{len(self) - 1}")
        return self.rows[int(self.offsets[cid]):int(self.offsets[cid + 1])]

    def size(self, cid: int) -> int:
        return int(self.offsets[cid + 1] - self.offsets[cid])

    def sizes(self) -> np.ndarray:
        """n_i of every client, int64 [N]."""
        return (self.offsets[1:] - self.offsets[:-1]).numpy()

    def nbytes(self) -> int:
        return 8 * (self.rows.numel() + self.offsets.numel())
