"""fedsim's Flower strategies; ``registry.STRATEGIES`` maps config names to them."""

from .afa import AFACDStrategy, AFACSStrategy
from .asynchronous import AsyncStrategy, DirectStrategy, FedAsyncStrategy, FedBuffStrategy, WeightedStrategy
from .base import Cohort, FedsimStrategy
from .error_feedback import EF14Strategy, EF21Strategy
from .fedau import FedAUStrategy
from .fedavg import FedAvgStrategy
from .registry import STRATEGIES, StrategyRow
from .repair import RepairStrategy
from .robust import RobustStrategy

__all__ = ["STRATEGIES", "StrategyRow", "AFACDStrategy", "AFACSStrategy", "AsyncStrategy", "DirectStrategy",
           "FedAsyncStrategy", "FedBuffStrategy", "RepairStrategy", "RobustStrategy", "WeightedStrategy", "Cohort", "EF14Strategy",
           "EF21Strategy", "FedAUStrategy", "FedAvgStrategy", "FedsimStrategy"]
