"""Gradient modulation for multi-objective alignment (MOLMA Algorithm 1, GAPO, P-GAPO, ...).

Each objective k has a loss ``L_k`` and gradient ``g_k``; every method is a *weighting* mapping the
K x K Gramian ``M = G^T G`` (and the task importance ``w``) to coefficients ``alpha``, and the update
is ``sum_k alpha_k g_k``. :class:`MultiObjectiveBackward` turns K losses from one forward pass into
that update in ``.grad``; under ``torch.distributed`` it takes a layout from :mod:`molma.distributed`.
See ``docs/gradients.md``.
"""

from molma.gradients.backward import MODES, MultiObjectiveBackward
from molma.gradients.linalg import (
    balance_transformation,
    combine,
    condition_number,
    cosines,
    gramian,
    normalize_importance,
)
from molma.gradients.solvers import NNLSDualConeProjector, cagrad_weights, min_norm_point
from molma.gradients.weightings import (
    GAPO,
    IMTLG,
    MGDA,
    NASH_INSTALL_HINT,
    PGAPO,
    WEIGHTING_NAMES,
    AlignedMTL,
    CAGrad,
    LinearScalarization,
    NashMTL,
    PCGrad,
    TorchJDWeighting,
    UPGrad,
    Weighting,
    aggregate,
    get_weighting,
    resolve_weighting,
)

__all__ = [
    "GAPO", "IMTLG", "MGDA", "MODES", "NASH_INSTALL_HINT", "PGAPO", "WEIGHTING_NAMES",
    "AlignedMTL", "CAGrad", "LinearScalarization", "MultiObjectiveBackward", "NNLSDualConeProjector",
    "NashMTL", "PCGrad", "TorchJDWeighting", "UPGrad", "Weighting", "aggregate",
    "balance_transformation", "cagrad_weights", "combine", "condition_number", "cosines",
    "get_weighting", "gramian", "min_norm_point", "normalize_importance",
    "resolve_weighting",
]
