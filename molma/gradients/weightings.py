"""Gramian weightings: every gradient-modulation method as a map ``(M, w) -> alpha``.

``M = G^T G`` is the K x K task-space Gram matrix of the objective gradients (MOLMA, Algorithm 1,
line 9), ``w`` the task importance (omega), and the update is ``d = G alpha = sum_k alpha_k g_k``.
Methods that torchjd implements as Gramian weightings use torchjd; the rest are written here (each
class says why). Pick one by name with :func:`get_weighting`.

Importance convention: ``w`` is normalised to sum to one (default ``1/K``, "all objectives deemed
equal importance"). This is torchjd's ``pref_vector`` convention and is what reproduces the
documented Aligned-MTL value ``[0.2133, 0.9673, 0.9673]`` for ``J = [[-4, 1, 1], [6, 1, 1]]``.
"""

from __future__ import annotations

import importlib.util
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor
from torchjd.aggregation import IMTLGWeighting, MGDAWeighting, PCGradWeighting, UPGradWeighting
from torchjd.aggregation import Weighting as TorchJDBaseWeighting

from molma.gradients.linalg import (
    as_gramian,
    balance_transformation,
    normalize_importance,
    norms,
    sqrt_factor,
)
from molma.gradients.solvers import NNLSDualConeProjector, cagrad_weights, min_norm_point

ImportanceLike = Tensor | Sequence[float] | None

log = logging.getLogger(__name__)

NASH_INSTALL_HINT = "pip install molma[nash]"
_find_spec = importlib.util.find_spec  # indirection so tests can simulate a missing extra


def _trace_normalised(M: Tensor) -> Tensor:
    """``M / trace(M)`` for scale-invariant weightings (conditioning only; zero stays zero)."""
    trace = float(torch.diagonal(M).sum())
    return M / trace if trace > 0 else M


class Weighting(ABC):
    """A gradient-modulation method: ``alpha = weighting(M, w)``, update ``G alpha``.

    Subclasses implement :meth:`weights` on a validated float64 Gramian and normalised importance.
    :meth:`alignment` returns the K x K matrix ``T`` such that ``G T`` is the method's "aligned"
    gradient matrix, used only for the condition-number diagnostic.
    """

    name: str = "weighting"
    uses_importance: bool = False
    #: What the weights ``w`` are called in error messages (P-GAPO's are the user's preference).
    importance_label: str = "importance"

    def __init__(self, importance: ImportanceLike = None) -> None:
        self.importance = importance

    def __call__(self, gramian: Tensor, importance: ImportanceLike = None) -> Tensor:
        """``alpha`` (float64, length K) for the Gramian ``M``; ``importance`` overrides the default.

        Raises ``ValueError`` for a bad Gramian/importance and ``FloatingPointError`` if the method
        produced a non-finite weight (never returns NaN/inf).
        """
        M = as_gramian(gramian)
        K = M.shape[0]
        w = normalize_importance(self.importance if importance is None else importance, K,
                                 self.importance_label)
        with torch.no_grad():
            alpha = torch.as_tensor(self.weights(M, w)).detach().to("cpu", torch.float64).reshape(-1)
        if alpha.numel() != K:
            raise ValueError(f"{self.name}: expected {K} weights, got {alpha.numel()}")
        if not bool(torch.isfinite(alpha).all()):
            raise FloatingPointError(f"{self.name} produced non-finite weights {alpha.tolist()}")
        return alpha

    @abstractmethod
    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        """Coefficients ``alpha`` from the validated Gramian ``M`` and importance ``w`` (sum 1)."""

    def alignment(self, M: Tensor, alpha: Tensor) -> Tensor:
        """``T`` with aligned matrix ``G T``; by default the weighted gradients ``G diag(alpha)``."""
        return torch.diag(alpha.to(torch.float64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearScalarization(Weighting):
    """Weighted sum: ``alpha = w``, update ``sum_k w_k g_k`` (the SO-weighted baseline, eq. 4.1)."""

    name = "linear"
    uses_importance = True

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        return w


class AlignedMTL(Weighting):
    """Aligned-MTL / MOLMA (Algorithm 1): ``alpha = B w`` with ``B = sqrt(lambda_min) V Sigma^{-1} V^T``.

    Written here rather than using torchjd's ``AlignedMTLWeighting`` because torchjd sets the rank
    tolerance from the dtype of the matrix it is given (float64 eps here), while our Gramian sums
    float32 products: the numerical rank is decided on the normalised Gramian with ``rtol`` (default
    ``K * eps_float32``, see :func:`~molma.gradients.linalg.null_space`), so a dominated objective
    (orthogonal gradients of very different norms) keeps its share, and ``lambda_min`` is the smallest
    positive eigenvalue. A rank below K is logged (a warning when it first drops or changes) and kept
    in ``last_rank``. The composition with torchjd's ``AlignedMTL`` aggregator is checked in the tests.
    """

    name = "aligned-mtl"
    uses_importance = True

    def __init__(self, importance: ImportanceLike = None, rtol: float | None = None,
                 scale_mode: Literal["min", "median", "rmse"] = "min") -> None:
        super().__init__(importance)
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
        self.rtol = rtol
        self.scale_mode = scale_mode
        self.last_rank: int | None = None
        self._last: tuple[int, int] | None = None

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        B, r = balance_transformation(M, self.rtol, self.scale_mode)
        K = M.shape[0]
        if r < K:  # a warning when the rank first drops (or changes), then debug messages
            level = logging.WARNING if (r, K) != self._last else logging.DEBUG
            log.log(level, "aligned-mtl: the %d objective gradients have rank %d (norms %s): the update is "
                    "balanced over their span only", K, r, [f"{x:.3g}" for x in norms(M).tolist()])
        self.last_rank, self._last = r, (r, K)
        return B @ w

    def alignment(self, M: Tensor, alpha: Tensor) -> Tensor:
        return balance_transformation(M, self.rtol, self.scale_mode)[0]


class MGDA(Weighting):
    """MGDA: ``alpha = argmin_{alpha in simplex} ||G alpha||^2``, the min-norm point of the hull.

    ``solver="exact"`` (default) runs Wolfe's algorithm (:func:`min_norm_point`); ``"frank-wolfe"``
    is torchjd's ``MGDAWeighting`` (Sener & Koltun Alg. 2, approximate, ``epsilon`` / ``max_iters``).
    The zero Gramian gives ``1/K`` (and a zero update).
    """

    name = "mgda"

    def __init__(self, solver: Literal["exact", "frank-wolfe"] = "exact", epsilon: float = 0.001,
                 max_iters: int = 100) -> None:
        super().__init__()
        if solver not in ("exact", "frank-wolfe"):
            raise ValueError(f"solver must be 'exact' or 'frank-wolfe', got {solver!r}")
        self.solver = solver
        self._fw = MGDAWeighting(epsilon=epsilon, max_iters=max_iters)

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        Mn = _trace_normalised(M)
        return min_norm_point(Mn) if self.solver == "exact" else self._fw(Mn)


def _inverse_norm_powers(M: Tensor, p: float) -> Tensor:
    """``||g_k||^{-p}`` and 0 for a zero (or underflowing) gradient, whose rescaling is undefined."""
    n = norms(M)
    inv = torch.zeros_like(n)
    ok = n > 0
    inv[ok] = n[ok] ** (-p)
    return torch.where(torch.isfinite(inv), inv, torch.zeros_like(inv))


class GAPO(Weighting):
    """GAPO (Li et al. 2025): MGDA on the rescaled gradients ``g_i^N = g_i / ||g_i||^p`` (eq. 6).

    With ``D = diag(||g_i||^{-p})`` the rescaled Gramian is ``D M D``; ``alpha^N`` is its min-norm
    point (eq. 5/7) and the step ``sum_i alpha_i^N g_i^N`` is ``G alpha`` with ``alpha = D alpha^N``.
    Written here: torchjd has no GAPO. An objective with a zero gradient cannot be rescaled; it is
    left out of the hull (``alpha_i = 0``; its first-order change is zero along any direction).
    """

    name = "gapo"

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        if p not in (1, 2):
            raise ValueError(f"GAPO's p must be 1 or 2 (eq. 6), got {p}")
        self.p = float(p)

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        D = _inverse_norm_powers(M, self.p)
        active = D > 0
        alpha = torch.zeros_like(D)
        if bool(active.any()):
            MN = (M * torch.outer(D, D))[active][:, active]
            alpha[active] = min_norm_point(MN) * D[active]
        return alpha

    def alignment(self, M: Tensor, alpha: Tensor) -> Tensor:
        return torch.diag(_inverse_norm_powers(M, self.p))

    def __repr__(self) -> str:
        return f"GAPO(p={self.p:g})"


class PGAPO(Weighting):
    """P-GAPO (eq. 8): update ``sum_i lambda_i g_i / ||g_i||``, i.e. ``alpha_i = lambda_i / ||g_i||``.

    ``preference`` is the user's lambda (non-negative, normalised to sum to one); a per-step
    ``importance`` overrides it. No min-norm solve. Zero gradients get ``alpha_i = 0``.
    Written here: torchjd has no P-GAPO.
    """

    name = "pgapo"
    uses_importance = True
    importance_label = "preference"

    def __init__(self, preference: ImportanceLike = None) -> None:
        super().__init__(preference)

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        return w * _inverse_norm_powers(M, 1.0)

    def alignment(self, M: Tensor, alpha: Tensor) -> Tensor:
        return torch.diag(_inverse_norm_powers(M, 1.0))


class PCGrad(Weighting):
    """PCGrad (Yu et al. 2020) through torchjd's ``PCGradWeighting``.

    PCGrad projects each ``g_i`` in turn onto the normal plane of every ``g_j`` it conflicts with,
    in a random order; the sum of the projected gradients is ``G alpha``, so it is a weighting of
    ``M``. For reproducibility (and identical weights on every rank) the permutations are drawn
    from a private generator state seeded with ``seed + step`` (``seed=None``: global RNG, as in the
    original).
    """

    name = "pcgrad"

    def __init__(self, seed: int | None = 0) -> None:
        super().__init__()
        self.seed = seed
        self.step = 0
        self._inner = PCGradWeighting()

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        Mn = _trace_normalised(M)
        if self.seed is None:
            return self._inner(Mn)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.step)
            alpha = self._inner(Mn)
        self.step += 1
        return alpha


class IMTLG(Weighting):
    """IMTL-G (Liu et al. 2021), torchjd's ``IMTLGWeighting``: ``alpha ∝ M^+ diag(M)^{1/2}``, sum 1."""

    name = "imtl-g"

    def __init__(self) -> None:
        super().__init__()
        self._inner = IMTLGWeighting()

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        return self._inner(_trace_normalised(M))


class UPGrad(Weighting):
    """UPGrad (Quinton & Rey 2024): torchjd's ``UPGradWeighting`` with importance as ``pref_vector``.

    torchjd's default projector needs ``quadprog``, which molma does not depend on; the projection
    QP is solved exactly by :class:`~molma.gradients.solvers.NNLSDualConeProjector` (scipy) instead.
    """

    name = "upgrad"
    uses_importance = True

    def __init__(self, importance: ImportanceLike = None, norm_eps: float = 0.0001,
                 reg_eps: float = 0.0001) -> None:
        super().__init__(importance)
        self._inner = UPGradWeighting(projector=NNLSDualConeProjector(norm_eps=norm_eps, reg_eps=reg_eps))

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        self._inner.pref_vector = w
        return self._inner(M)


class CAGrad(Weighting):
    """CAGrad (Liu et al. 2021) with radius ``c``: see :func:`~molma.gradients.solvers.cagrad_weights`.

    torchjd's ``CAGradWeighting`` needs ``cvxpy``/``clarabel`` (not molma dependencies); the same
    convex problem is solved with scipy here, same output convention (no ``1/(1+c)`` rescaling).
    """

    name = "cagrad"

    def __init__(self, c: float = 0.4, norm_eps: float = 0.0001) -> None:
        super().__init__()
        if c < 0:
            raise ValueError(f"CAGrad's c must be non-negative, got {c}")
        self.c = c
        self.norm_eps = norm_eps

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        return cagrad_weights(M, self.c, self.norm_eps)


def require_nash() -> None:
    """Raise ``ImportError`` naming ``pip install molma[nash]`` when Nash-MTL's solver is missing."""
    missing = [m for m in ("cvxpy", "ecos") if _find_spec(m) is None]
    if missing:
        raise ImportError(f"Nash-MTL needs the optional packages {', '.join(missing)} "
                          f"(torchjd[nash_mtl]); install them with: {NASH_INSTALL_HINT}")


class NashMTL(Weighting):
    """Nash-MTL (Navon et al. 2022) via torchjd's ``NashMTL`` (stateful; optional extra ``nash``).

    torchjd's Nash-MTL reads the Jacobian only through ``J J^T`` and ``||alpha^T J||``, so feeding it
    the K x K factor ``R`` with ``R R^T = M`` (:func:`~molma.gradients.linalg.sqrt_factor`) gives the
    same weights as the full Jacobian. The solver state resets when K changes.
    """

    name = "nash-mtl"

    def __init__(self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20) -> None:
        super().__init__()
        require_nash()
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self._agg = None

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        from torchjd.aggregation import NashMTL as _TorchJDNashMTL

        K = M.shape[0]
        if self._agg is None or self._agg.n_tasks != K:
            self._agg = _TorchJDNashMTL(n_tasks=K, max_norm=self.max_norm,
                                        update_weights_every=self.update_weights_every,
                                        optim_niter=self.optim_niter)
        return self._agg.weighting(sqrt_factor(M))

    def reset(self) -> None:
        """Forget the solver state (new experiment)."""
        self._agg = None


class TorchJDWeighting(Weighting):
    """Adapter for any torchjd Gramian ``Weighting`` object (importance is not passed on)."""

    name = "torchjd"

    def __init__(self, inner: TorchJDBaseWeighting) -> None:
        super().__init__()
        self.inner = inner
        self.name = f"torchjd:{type(inner).__name__}"

    def weights(self, M: Tensor, w: Tensor) -> Tensor:
        return self.inner(M)

    def __repr__(self) -> str:
        return f"TorchJDWeighting({self.inner!r})"


_REGISTRY: dict[str, Callable[..., Weighting]] = {
    "aligned-mtl": AlignedMTL,
    "molma": AlignedMTL,
    "gapo": GAPO,
    "pgapo": PGAPO,
    "mgda": MGDA,
    "linear": LinearScalarization,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "imtl-g": IMTLG,
    "upgrad": UPGrad,
    "nash-mtl": NashMTL,
}
_ALIASES = {"alignedmtl": "aligned-mtl", "p-gapo": "pgapo", "imtlg": "imtl-g", "nash": "nash-mtl",
            "nashmtl": "nash-mtl", "weighted-sum": "linear", "ls": "linear"}

#: Names accepted by :func:`get_weighting`.
WEIGHTING_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_weighting(name: str, **kwargs) -> Weighting:
    """A new weighting by name (see ``WEIGHTING_NAMES``); ``kwargs`` go to its constructor.

    >>> get_weighting("gapo", p=2)
    GAPO(p=2)
    """
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown weighting {name!r}; choose one of {', '.join(WEIGHTING_NAMES)}")
    return _REGISTRY[key](**kwargs)


def resolve_weighting(weighting: str | Weighting | TorchJDBaseWeighting, **kwargs) -> Weighting:
    """A :class:`Weighting` from a name, one of ours, or a torchjd Gramian weighting."""
    if isinstance(weighting, str):
        return get_weighting(weighting, **kwargs)
    if kwargs:
        raise TypeError("weighting keyword arguments are only accepted with a weighting name")
    if isinstance(weighting, Weighting):
        return weighting
    if isinstance(weighting, TorchJDBaseWeighting):
        return TorchJDWeighting(weighting)
    raise TypeError(f"weighting must be a name, a molma Weighting or a torchjd Weighting, "
                    f"got {type(weighting).__name__}")


def aggregate(jacobian: Tensor, weighting: str | Weighting, importance: ImportanceLike = None) -> Tensor:
    """The update ``d = sum_k alpha_k g_k`` for a K x P Jacobian whose rows are the ``g_k``.

    Convenience for small problems and tests (the training path never builds the K x P matrix).
    """
    if jacobian.ndim != 2:
        raise ValueError(f"jacobian must be K x P, got shape {tuple(jacobian.shape)}")
    J = jacobian.detach().to(torch.float64)
    alpha = resolve_weighting(weighting)(J @ J.T, importance)
    return (alpha @ J).to(jacobian.dtype)
