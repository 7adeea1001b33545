"""fedsim's Flower strategies, by config name."""

from .afa import AFACDStrategy, AFACSStrategy
from .asynchronous import AsyncStrategy, DirectStrategy, FedAsyncStrategy, FedBuffStrategy, WeightedStrategy
from .base import Cohort, FedsimStrategy
from .dp import DPFedAvgStrategy, DPStrategy
from .error_feedback import EF14Strategy, EF21Strategy
from .fedau import FedAUStrategy
from .fedavg import FedAvgStrategy
from .repair import RepairStrategy

STRATEGIES: dict[str, type[FedsimStrategy]] = {
    "fedavg": FedAvgStrategy,
    "fedau": FedAUStrategy,
    "afa-cd": AFACDStrategy,
    "afa-cs": AFACSStrategy,
    "ef21": EF21Strategy,
    "ef14": EF14Strategy,
    "dp-fedavg": DPFedAvgStrategy,
    "dp-mf": DPStrategy,
    "direct": DirectStrategy,
    "weighted": WeightedStrategy,
    "fedasync": FedAsyncStrategy,
    "fedbuff": FedBuffStrategy,
    "repair": RepairStrategy,
}

__all__ = ["STRATEGIES", "AFACDStrategy", "AFACSStrategy", "AsyncStrategy", "DirectStrategy", "FedAsyncStrategy",
           "FedBuffStrategy", "RepairStrategy", "WeightedStrategy", "Cohort", "DPFedAvgStrategy", "DPStrategy", "EF14Strategy", "EF21Strategy", "FedAUStrategy",
           "FedAvgStrategy", "FedsimStrategy"]
