"""One row per strategy: its class, the config keys it reads, whether it is asynchronous.

This table is the only place that maps a ``strategy.name`` to code. The composition root
(``fedsim.experiments.setup``) builds a strategy from its row alone: each constructor keyword in
``reads`` is filled from the named config key, ``needs`` names objects of the experiment the
strategy gets (the model, the input shape, ...), ``fixed`` holds keywords the row pins, and
``implies`` holds config values an alias turns on (``dp-fedavg`` is FedAvg with a fixed denominator
and the user-level DP stage). A ``strategy.*`` or ``repair.*`` key set away from its default for a
strategy whose row does not read it is a config error, so a typo'd arm cannot silently run
something else. Adding a strategy is one class plus one row here; the conformance tests
(``tests/conformance``) then run it automatically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .afa import AFACDStrategy, AFACSStrategy
from .asynchronous import DirectStrategy, FedAsyncStrategy, FedBuffStrategy, WeightedStrategy
from .base import FedsimStrategy
from .error_feedback import EF14Strategy, EF21Strategy
from .fedau import FedAUStrategy
from .fedavg import FedAvgStrategy
from .repair import RepairStrategy
from .robust import RobustStrategy
from .scaffold import ScaffoldStrategy


@dataclass(frozen=True)
class StrategyRow:
    cls: type[FedsimStrategy]
    reads: dict[str, str] = field(default_factory=dict)  # constructor keyword -> dotted config key
    needs: tuple[str, ...] = ()      # experiment objects: model, input_shape, box, rounds
    fixed: dict = field(default_factory=dict)    # constructor keywords the row pins
    implies: dict = field(default_factory=dict)  # dotted config key -> value an alias sets
    description: str = ""
    plain_client_sgd: bool = False  # the server rule assumes plain local SGD at client.lr (AFA, EF21, repair)

    @property
    def asynchronous(self) -> bool:
        return self.cls.asynchronous

    @property
    def user_level_dp(self) -> bool:
        """Whether the user-level DP stage can wrap this strategy (it has a noisy sum to add to)."""
        return self.cls.noisy_sum

    def keys(self) -> set[str]:
        return set(self.reads.values())


_ROUNDS = {"m": "strategy.m", "round_time": "strategy.round_time"}
_STALENESS = {"staleness_fn": "strategy.staleness_fn", "staleness_a": "strategy.staleness_a",
              "staleness_b": "strategy.staleness_b"}

STRATEGIES: dict[str, StrategyRow] = {
    "fedavg": StrategyRow(FedAvgStrategy, {"weighting": "strategy.weighting"},
                          description="FedAvg with a server rate (arXiv 1602.05629, 2003.00295)"),
    "fedau": StrategyRow(FedAUStrategy, {"cutoff": "strategy.cutoff"},
                         description="FedAU participation-interval weights (arXiv 2306.03401)"),
    "fedprox": StrategyRow(FedAvgStrategy, {"weighting": "strategy.weighting", "prox_mu": "strategy.mu"},
                           description="FedProx: FedAvg with the proximal term mu/2 ||w - w_t||^2 in each "
                                       "client's objective (Li et al., MLSys 2020, arXiv 1812.06127, Alg. 2)"),
    "scaffold": StrategyRow(ScaffoldStrategy, description="SCAFFOLD, option II control variates kept by the "
                                                           "clients (Karimireddy et al., ICML 2020, arXiv 1910.06378)"),
    "fedmedian": StrategyRow(RobustStrategy, fixed={"rule": "median"},
                             description="coordinate-wise median of the updates (arXiv 1803.01498; Flower's rule)"),
    "fedtrimmedavg": StrategyRow(RobustStrategy, {"trim": "strategy.trim"}, fixed={"rule": "trimmed-mean"},
                                 description="coordinate-wise trimmed mean (arXiv 1803.01498; Flower's rule)"),
    "krum": StrategyRow(RobustStrategy, {"byzantine": "strategy.byzantine", "keep": "strategy.keep"},
                        fixed={"rule": "krum"}, description="Krum / Multi-Krum (Blanchard et al., NeurIPS 2017; "
                                                            "Flower's rule)"),
    "afa-cd": StrategyRow(AFACDStrategy, dict(_ROUNDS), plain_client_sgd=True,
                          description="anarchic FedAvg, current answers (arXiv 2108.09875, Alg. 1)"),
    "afa-cs": StrategyRow(AFACSStrategy, dict(_ROUNDS), plain_client_sgd=True,
                          description="anarchic FedAvg, every worker's latest answer (arXiv 2108.09875, Alg. 2)"),
    "ef21": StrategyRow(EF21Strategy, {"ef_init": "strategy.ef_init", "ef_momentum": "strategy.ef_momentum",
                                       "local_steps": "client.local_steps"},
                        plain_client_sgd=True, description="EF21 error feedback (arXiv 2106.05203)"),
    "ef14": StrategyRow(EF14Strategy, {"weighting": "strategy.weighting"},
                        description="classic error feedback (arXiv 1809.07599)"),
    "direct": StrategyRow(DirectStrategy, dict(_ROUNDS), description="stale answers as if fresh"),
    "weighted": StrategyRow(WeightedStrategy, {**_ROUNDS, **_STALENESS},
                            description="stale answers discounted by s(tau)"),
    "fedasync": StrategyRow(FedAsyncStrategy, {**_ROUNDS, **_STALENESS, "mixing": "strategy.mixing",
                                               "history": "strategy.history",
                                               "staleness_unit": "strategy.staleness_unit"},
                            description="FedAsync (arXiv 1903.03934)"),
    "fedbuff": StrategyRow(FedBuffStrategy, {**_ROUNDS, **_STALENESS, "buffer_size": "strategy.buffer_size",
                                             "max_staleness": "strategy.max_staleness"},
                           description="FedBuff (arXiv 2106.06639)"),
    "repair": StrategyRow(RepairStrategy, {**_ROUNDS, "history": "strategy.history", "repair": "repair"},
                          needs=("model", "input_shape", "box"), plain_client_sgd=True,
                          description="staleness repair by gradient inversion (arXiv 2309.13536)"),
    # aliases: FedAvg with a fixed denominator plus the user-level DP stage
    "dp-fedavg": StrategyRow(FedAvgStrategy, fixed={"weighting": "fixed"},
                             implies={"privacy.user_level": True, "privacy.mechanism": "identity"},
                             description="DP-FedAvg (arXiv 1710.06963): fedavg + privacy.user_level, i.i.d. noise"),
    "dp-mf": StrategyRow(FedAvgStrategy, fixed={"weighting": "fixed"}, implies={"privacy.user_level": True},
                         description="DP-FedAvg with correlated noise (DP-MF, arXiv 2211.06530): "
                                     "fedavg + privacy.user_level + privacy.mechanism"),
}

#: Keys owned by strategies: set away from the default for a strategy that does not read them, an error.
OWNED_SECTIONS = ("strategy", "repair")
#: Keys every strategy reads (the base class) or the composition root handles.
COMMON_KEYS = {"strategy.name", "strategy.server_lr", "strategy.args"}
