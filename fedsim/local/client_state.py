"""Per-client vectors kept across rounds on the client side (EF21's g_i, EF14's residual e_i).

``ClientStateStore`` holds one ``[D]`` float32 row per client that has state, in a single growable
``[R, D]`` buffer plus an ``int64 [N]`` row index (-1 = no state yet), so a population of N virtual
clients costs 8 N bytes plus 4 D bytes per client that has actually trained. The store is saved and
restored with the simulator's checkpoint (``state_dict``) and, under Flower's runtimes, mirrored into
each node's ``Context.state`` (``to_record``/``from_record``) because that is what persists there.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


class ClientStateStore:
    def __init__(self, num_clients: int, dim: int):
        self.num_clients, self.dim = num_clients, dim
        self.row = torch.full((num_clients,), -1, dtype=torch.int64)
        self.rows = torch.zeros(0, dim)
        self.used = 0

    def get(self, cid: int) -> torch.Tensor | None:
        r = int(self.row[cid])
        return None if r < 0 else self.rows[r].clone()

    def set(self, cid: int, value: torch.Tensor) -> None:
        if value.shape != (self.dim,):
            raise ValueError(f"client state must have shape ({self.dim},), got {tuple(value.shape)}")
        r = int(self.row[cid])
        if r < 0:
            if self.used == self.rows.shape[0]:  # grow geometrically
                grown = torch.zeros(max(8, 2 * self.used), self.dim)
                grown[: self.used] = self.rows[: self.used]
                self.rows = grown
            r, self.used = self.used, self.used + 1
            self.row[cid] = r
        self.rows[r] = value.float()

    def __len__(self) -> int:
        return self.used

    def nbytes(self) -> int:
        return self.row.numel() * 8 + self.used * self.dim * 4

    # --- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"dim": self.dim, "row": self.row.clone(), "rows": self.rows[: self.used].clone()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["dim"]) != self.dim or state["row"].shape != (self.num_clients,):
            raise ValueError(f"client state was saved for {state['row'].numel()} clients of dimension "
                             f"{state['dim']}, this federation has {self.num_clients} of dimension {self.dim}")
        self.row = state["row"].clone()
        self.rows = state["rows"].clone()
        self.used = self.rows.shape[0]

    def to_record(self, cid: int) -> ArrayRecord | None:
        value = self.get(cid)
        return None if value is None else ArrayRecord(array_dict={"state": Array(value.numpy())})

    def from_record(self, cid: int, record: ArrayRecord) -> None:
        self.set(cid, torch.from_numpy(np.array(record["state"].numpy(), dtype=np.float32)))

    def put(self, cid: int, value: torch.Tensor | None) -> None:
        """Set a client's row, or (None) mark it as never set; a dropped row is not reused."""
        if value is None:
            self.row[cid] = -1
        else:
            self.set(cid, value)


class StateVersions:
    """Earlier versions of hosted clients' state that the server may still ask for.

    A node keeps, per client, the version before each update it made (keyed by the update count,
    the protocol's state-count) from the server's last checkpoint on: a server that resumes its
    checkpoint, or that never received an answer, asks for an older count, and the node steps back
    to exactly that version instead of refusing the client. Versions older than the server's
    state-keep (the client's count in its last checkpoint) are forgotten when the client is next
    contacted, so a node holds at most one extra version per client plus those made since the last
    checkpoint.
    """

    def __init__(self) -> None:
        self.versions: dict[int, dict[int, tuple]] = {}  # client -> count -> (one tensor or None per store)

    def record(self, cid: int, count: int, values: tuple) -> None:
        self.versions.setdefault(cid, {})[count] = tuple(None if v is None else v.clone() for v in values)

    def forget_before(self, cid: int, count: int) -> None:
        kept = {c: v for c, v in self.versions.get(cid, {}).items() if c >= count}
        if kept:
            self.versions[cid] = kept
        else:
            self.versions.pop(cid, None)

    def take(self, cid: int, count: int) -> tuple | None:
        """The client's state at ``count`` (None if not kept); versions from ``count`` on are dropped."""
        mine = self.versions.get(cid, {})
        values = mine.get(count)
        if values is not None:
            self.versions[cid] = {c: v for c, v in mine.items() if c < count}
        return values

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for mine in self.versions.values() for values in mine.values()
                   for t in values if t is not None)

    def state_dict(self) -> dict:
        return {"versions": [[cid, count, list(values)] for cid, mine in self.versions.items()
                             for count, values in mine.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.versions = {}
        for cid, count, values in state["versions"]:
            self.record(int(cid), int(count), tuple(values))
