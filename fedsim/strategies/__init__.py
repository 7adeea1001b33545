"""fedsim's Flower strategies, by config name."""

from .afa import AFACDStrategy, AFACSStrategy
from .base import Cohort, FedsimStrategy
from .dp import DPFedAvgStrategy, DPStrategy
from .error_feedback import EF14Strategy, EF21Strategy
from .fedau import FedAUStrategy
from .fedavg import FedAvgStrategy

STRATEGIES: dict[str, type[FedsimStrategy]] = {
    "fedavg": FedAvgStrategy,
    "fedau": FedAUStrategy,
    "afa-cd": AFACDStrategy,
    "afa-cs": AFACSStrategy,
    "ef21": EF21Strategy,
    "ef14": EF14Strategy,
    "dp-fedavg": DPFedAvgStrategy,
    "dp-mf": DPStrategy,
}

__all__ = ["STRATEGIES", "AFACDStrategy", "AFACSStrategy", "Cohort", "DPFedAvgStrategy", "DPStrategy", "EF14Strategy", "EF21Strategy", "FedAUStrategy",
           "FedAvgStrategy", "FedsimStrategy"]
