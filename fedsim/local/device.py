"""Where clients train: ``client.device`` = ``cpu`` | ``cuda`` | ``auto`` (cuda when there is one).

On an accelerator the model stays resident there, each cohort's minibatches are moved to it as they
are drawn, and deltas come back to the CPU for the uplink stage and the server. ``client.trainer =
auto`` then vectorizes the cohort (``fedsim.local.vectorized``); on the CPU it loops.
"""

from __future__ import annotations

import torch

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(name: str, key: str = "client.device") -> torch.device:
    """The torch device for config key ``key``; asking for cuda without one is an error naming the key."""
    if name not in DEVICES:
        raise ValueError(f"{key} must be one of {', '.join(DEVICES)}; got '{name}'")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    if name == "cuda" and not available:
        raise ValueError(f"{key} is 'cuda' but torch sees no CUDA device "
                         f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use 'cpu' or 'auto'")
    return torch.device(name)
