"""Server stages that wrap any strategy's aggregation (``base.ServerPipeline``).

``SERVER_OPTIMIZERS``: one row per ``server_optimizer.name``: the stage class (None = the plain step
the strategy applies with ``strategy.server_lr``) and the ``server_optimizer.*`` keys it reads.
"""

from .base import ServerPipeline, ServerStage
from .server_momentum import ServerMomentum
from .user_dp import UserLevelDP

SERVER_OPTIMIZERS: dict[str, tuple[type[ServerStage] | None, tuple[str, ...]]] = {
    "sgd": (None, ()),
    "momentum": (ServerMomentum, ("momentum",)),  # FedAvgM, arXiv 1909.06335
}

__all__ = ["SERVER_OPTIMIZERS", "ServerMomentum", "ServerPipeline", "ServerStage", "UserLevelDP"]
