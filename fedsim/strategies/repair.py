"""Staleness repair by gradient inversion as a Flower strategy (Wang & Gao, arXiv 2309.13536).

Aggregates like ``direct`` (``x + eta * mean_i delta_i``), but each answer at least
``repair.min_staleness`` rounds stale is first replaced by its repaired estimate
(``fedsim.repair``: invert the update at the model it was computed on, replay the
estimated data from the current model). The server needs the architecture (a model instance; its
weights are unused), the input shape and the box of valid inputs, and keeps the models of the
versions still in flight (bounded ``ModelVersions``). An answer whose version the store has lost
is aggregated as it is and counted in ``staleness/history_misses``.

Algorithm state (returned by ``server_update``, saved with the strategy): whether the server has
switched back to plain aggregation, the run of declines, and the repair counters. The inversion is seeded per
(run seed, round, client), so a resumed run repeats it exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import RepairConfig
from ..core import staleness as S
from ..core.params import ParamSpec
from ..local.reference import job_seed
from ..local.device import resolve_device
from ..repair import Problem, repair_batch
from .asynchronous import AsyncStrategy
from .base import Cohort

_REPAIR_TAG = 0x5E9A12


class RepairStrategy(AsyncStrategy):
    name = "repair"
    uses_versions = True

    def __init__(self, participation, *, model: nn.Module, input_shape: tuple, box: tuple[float, float] | None = None,
                 repair: dict | RepairConfig | None = None, **kw):
        super().__init__(participation, **kw)
        self.settings = repair if isinstance(repair, RepairConfig) else RepairConfig(**(repair or {}))
        self.model, self.input_shape, self.box = model, tuple(input_shape), box
        self._device = None  # repair.device, resolved (and the model moved there) at the first repair

    def init_state(self, dim: int) -> dict:
        if ParamSpec.of(self.model) != self.spec:
            raise ValueError("repair: the model given to the strategy does not match the global model's layout")
        # switched_at: round in which the server went back to plain aggregation (0 = not yet);
        # declines: "estimated" policy, repaired updates declined in a row
        return {"switched_at": 0, "declines": 0, "repairs": 0, "used": 0, "seconds": 0.0}

    def server_update(self, server_round: int, params: torch.Tensor, cohort: Cohort, state: dict, noise=None):
        cfg, state = self.settings, dict(state)
        if cfg.switch == "round" and not state["switched_at"] and server_round > cfg.switch_round:
            state["switched_at"] = server_round
        tau = self.staleness(server_round, cohort)
        rows, todo, missed = list(cohort.updates), [], 0
        for i in range(len(rows)):
            if int(tau[i]) < cfg.min_staleness or state["switched_at"]:
                continue
            if self.versions.get(int(cohort.model_round[i])) is None:
                missed += 1  # aggregated as it is
                continue
            todo.append(i)
        stats = self._repair(server_round, params, cohort, todo, state)
        for i, rep in zip(todo, stats):
            rows[i] = rep.update
            state = self._count(server_round, rep, state)
        if cfg.warm_start and stats:  # each repaired client's set: where its next inversion starts
            state["synthetic"] = {**state.get("synthetic", {}),
                                  **{int(cohort.clients[i]): rep.synthetic for i, rep in zip(todo, stats)}}
        new = S.direct(params, torch.stack(rows) if rows else cohort.updates, self.server_lr)
        metrics = {"repair/switched": int(bool(state["switched_at"])), "staleness/history_misses": missed,
                   "repair/count": len(stats), "repair/used": sum(r.used for r in stats)}
        if stats:
            metrics.update({"time/repair_seconds": sum(r.seconds for r in stats),
                            "repair/residual": sum(r.residual for r in stats) / len(stats),
                            "repair/drift": sum(r.drift for r in stats) / len(stats),
                            "repair/steps": sum(r.steps for r in stats) / len(stats)})
        return new, state, metrics

    def _repair(self, server_round: int, params, cohort: Cohort, todo: list[int], state: dict) -> list:
        """Repair the answers ``todo``: those with the same local steps and replay batch are inverted together."""
        cfg, out = self.settings, {}
        if self._device is None:
            self._device = resolve_device(cfg.device, "repair.device")
            self.model.to(self._device)
        groups: dict[tuple[int, int], list[int]] = {}
        for i in todo:
            # a full-batch client (batch >= its data) is replayed full-batch on the synthetic set
            batch = cfg.samples if self.batch_size >= float(cohort.num_examples[i]) else self.batch_size
            groups.setdefault((int(cohort.local_steps[i]), batch), []).append(i)
        warm = state.get("synthetic", {}) if cfg.warm_start else {}
        for (steps, batch), members in groups.items():
            problems = [Problem(self.versions.get(int(cohort.model_round[i])), cohort.updates[i],
                                torch.Generator().manual_seed(job_seed(self.seed ^ _REPAIR_TAG, server_round,
                                                                       int(cohort.clients[i]))),
                                warm.get(int(cohort.clients[i]))) for i in members]
            done = repair_batch(self.model, self.spec, problems, params, local_steps=steps, lr=self.local_lr,
                                batch_size=batch, settings=cfg, input_shape=self.input_shape, box=self.box,
                                margin=cfg.margin if cfg.switch == "estimated" else None)
            out.update(zip(members, done))
        return [out[i] for i in todo]

    def _count(self, server_round: int, rep, state: dict) -> dict:
        state = {**state, "repairs": state["repairs"] + 1, "used": state["used"] + int(rep.used),
                 "seconds": state["seconds"] + rep.seconds}
        if self.settings.switch == "estimated":
            state["declines"] = 0 if rep.used else state["declines"] + 1
            if state["declines"] >= self.settings.patience:
                state["switched_at"] = server_round
        return state

    @property
    def repairs(self) -> int:
        return self.state["repairs"]

    def summary_fields(self, rounds_done: int) -> dict:
        st = self.state
        return {**super().summary_fields(rounds_done), "repairs": st["repairs"], "repairs_used": st["used"],
                "repair_seconds_mean": st["seconds"] / st["repairs"] if st["repairs"] else 0.0,
                "repair_switched_round": st["switched_at"]}
