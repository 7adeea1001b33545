"""Staleness repair: turn a stale update into an estimate of the fresh one (``repair.py``).

The staleness weights and the asynchronous server rules are pure functions in
``fedsim.core.staleness``; the strategies that use them are in ``fedsim.strategies.asynchronous``.
"""

from .repair import MODES, SWITCHES, Repaired, invert, repair_update

__all__ = ["MODES", "SWITCHES", "Repaired", "invert", "repair_update"]
