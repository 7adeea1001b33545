"""Server stages that wrap any strategy's aggregation (``base.ServerPipeline``).

``SERVER_OPTIMIZERS``: one row per ``server_optimizer.name``: the stage class (None = the plain step
the strategy applies with ``strategy.server_lr``) and the ``server_optimizer.*`` keys it reads.
"""

from .base import ServerPipeline, ServerStage
from .norm_bound import NormBound
from .server_adaptive import KEYS as ADAPTIVE_KEYS, FedAdagrad, FedAdam, FedYogi
from .server_momentum import ServerMomentum
from .user_dp import UserLevelDP

SERVER_OPTIMIZERS: dict[str, tuple[type[ServerStage] | None, tuple[str, ...]]] = {
    "sgd": (None, ()),
    "momentum": (ServerMomentum, ("momentum",)),  # FedAvgM, arXiv 1909.06335
    "adagrad": (FedAdagrad, ADAPTIVE_KEYS),        # FedOpt, arXiv 2003.00295, Alg. 2
    "yogi": (FedYogi, ADAPTIVE_KEYS),
    "adam": (FedAdam, ADAPTIVE_KEYS),
}

__all__ = ["SERVER_OPTIMIZERS", "FedAdagrad", "FedAdam", "FedYogi", "NormBound", "ServerMomentum", "ServerPipeline", "ServerStage", "UserLevelDP"]
