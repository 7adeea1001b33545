"""Gradient-inversion attacks, the observations they run on, defenses and metrics.

The inversion engine itself is ``fedsim.inversion`` (shared with staleness repair). Public entry points:

* :func:`invert_update` -- estimate a client's data and labels from one weight update;
* :func:`observe` and friends (:mod:`fedsim.attacks.observations`) -- what an attacker sees;
* the attacks :func:`dlg`, :func:`ig`, :func:`sme`, :func:`cpa`, :func:`analytic_fc`;
* :mod:`fedsim.attacks.metrics` -- PSNR, SSIM, label accuracy, no-information floors;
* :func:`fedsim.attacks.evaluate.evaluate` (``fedsim attack``) -- attack x defense x batch-size grids.
"""

from .analytic import analytic_fc
from .cpa import cpa
from .defenses import DEFENSES, DefenseConfig, apply_defense
from .dlg import dlg
from .inverting import ig, invert_update, sme, unrolled
from ..inversion.labels import count_labels, idlg_label, recover_labels
from ..inversion.observation import Observation
from .observations import fedavg_update, fedsgd_gradient, observe, secure_sum

__all__ = ["DEFENSES", "DefenseConfig", "Observation", "analytic_fc", "apply_defense", "count_labels",
           "cpa", "dlg", "fedavg_update", "fedsgd_gradient", "idlg_label", "ig", "invert_update",
           "observe", "recover_labels", "secure_sum", "sme", "unrolled"]

