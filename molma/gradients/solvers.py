"""Exact small solvers on the K x K Gramian, written here because torchjd lacks an exact version.

* :func:`min_norm_point`: the MGDA / GAPO sub-problem ``min_{alpha in simplex} alpha^T M alpha``.
  torchjd's ``MGDAWeighting`` is the Frank-Wolfe iteration of Sener & Koltun (stops at
  ``gamma < 1e-3``), which is only approximate; GAPO's equal-progress property (eq. 7) and the
  min-norm checks need the exact point, so we run Wolfe's (1976) finite min-norm-point algorithm,
  written with inner products only.
* :class:`NNLSDualConeProjector`: torchjd's UPGrad needs ``quadprog`` (not a molma dependency); this
  projector solves the same quadratic program with ``scipy.optimize.nnls`` and plugs into torchjd's
  ``UPGradWeighting(projector=...)``.
* :func:`cagrad_weights`: torchjd's CAGrad needs ``cvxpy``; same problem solved with scipy SLSQP.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize, nnls
from torch import Tensor
from torchjd.linalg import DualConeProjector


def _affine_min_norm(A: np.ndarray) -> np.ndarray:
    """Weights ``mu`` (summing to 1) of the min-norm point of the affine hull; ``A`` is their Gramian."""
    n = A.shape[0]
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = A
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    mu = sol[:n]
    s = mu.sum()
    return mu / s if abs(s) > 1e-300 else np.full(n, 1.0 / n)


def min_norm_point(M: Tensor, tol: float = 1e-12, max_iter: int = 1000) -> Tensor:
    """``argmin_{alpha >= 0, sum alpha = 1} alpha^T M alpha``: MGDA's min-norm point (GAPO eq. 5/7).

    Wolfe's algorithm on the Gramian (scaled so ``max M_kk = 1``): grow a corral ``S`` with the
    point most opposed to the current ``x = G alpha``, take the affine min-norm point of ``S``, and
    step back to the simplex when it leaves it. Stops when ``x . g_i >= ||x||^2 - tol`` for all ``i``
    (the optimality condition). The zero Gramian returns ``1/K`` (every point has norm zero).
    """
    K = M.shape[0]
    A = M.detach().to(torch.float64).cpu().numpy()
    A = (A + A.T) / 2
    scale = float(np.max(np.diag(A)))
    if not scale > 0:
        return torch.full((K,), 1.0 / K, dtype=torch.float64)
    A = A / scale
    lam = np.zeros(K)
    start = int(np.argmin(np.diag(A)))
    lam[start] = 1.0
    corral = [start]
    for _ in range(max_iter):
        Ax = A @ lam
        xx = float(lam @ Ax)
        i = int(np.argmin(Ax))
        if Ax[i] >= xx - tol or i in corral:
            break
        corral.append(i)
        for _ in range(K + 1):  # minor cycle: each pass drops at least one corral point
            mu = _affine_min_norm(A[np.ix_(corral, corral)])
            cur = lam[corral]
            if np.all(mu > 1e-15):
                lam[corral] = mu
                break
            neg = mu <= 1e-15
            theta = float(np.min(cur[neg] / (cur[neg] - mu[neg])))
            new = cur + theta * (mu - cur)
            new[new <= 1e-15] = 0.0
            lam[corral] = new
            corral = [j for j in corral if lam[j] > 0]
            if len(corral) <= 1:
                break
        if i not in corral:  # the new point was dropped at once: no further progress possible
            break
    lam = np.clip(lam, 0.0, None)
    lam = lam / lam.sum()
    return torch.from_numpy(lam)


class NNLSDualConeProjector(DualConeProjector):
    """UPGrad's projection QP ``min_v v^T M v s.t. v >= u`` via non-negative least squares.

    Same pre-processing as torchjd's ``QuadprogProjector`` (``M`` normalised by its trace, then
    ``reg_eps * I`` added so it is positive definite); with ``M = L L^T`` and ``v = u + s``, the QP is
    ``min_{s >= 0} ||L^T s + L^T u||^2``, which ``scipy.optimize.nnls`` solves exactly.
    """

    def __init__(self, *, norm_eps: float = 0.0001, reg_eps: float = 0.0001) -> None:
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def __call__(self, U: Tensor, G: Tensor) -> Tensor:
        Gd = G.detach().to(torch.float64).cpu()
        trace = float(torch.diagonal(Gd).sum())
        Gn = torch.zeros_like(Gd) if trace < self.norm_eps else Gd / trace
        Gn = Gn + self.reg_eps * torch.eye(Gn.shape[0], dtype=torch.float64)
        L = np.linalg.cholesky(Gn.numpy())
        Ud = U.detach().to(torch.float64).cpu().numpy()
        flat = Ud.reshape(-1, Ud.shape[-1])
        out = np.empty_like(flat)
        for row, u in enumerate(flat):
            s, _ = nnls(L.T, -(L.T @ u))
            out[row] = u + s
        return torch.as_tensor(out.reshape(Ud.shape), device=G.device, dtype=G.dtype)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"


def cagrad_weights(M: Tensor, c: float, norm_eps: float = 0.0001) -> Tensor:
    """CAGrad (Liu et al. 2021, Alg. 1) weights, same convention as torchjd's ``CAGradWeighting``.

    With ``g_0`` the mean gradient and ``phi = c^2 ||g_0||^2``, solve
    ``min_{w in simplex} g_w . g_0 + sqrt(phi) ||g_w||`` and return ``alpha = 1/K + sqrt(phi)/||g_w|| w``
    (``d = g_0 + sqrt(phi) g_w / ||g_w||`` maximises ``min_i g_i . d`` on the ball
    ``||d - g_0|| <= c ||g_0||``). Computed on ``M / trace(M)``; the weights are scale invariant.
    """
    K = M.shape[0]
    A = M.detach().to(torch.float64).cpu().numpy()
    trace = float(np.trace(A))
    if trace < norm_eps:
        return torch.zeros(K, dtype=torch.float64)
    A = A / trace
    b = np.full(K, 1.0 / K)
    Ab = A @ b
    sqrt_phi = c * float(np.sqrt(max(b @ Ab, 0.0)))

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        Aw = A @ w
        nrm = float(np.sqrt(max(w @ Aw, 0.0) + 1e-18))
        return float(w @ Ab + sqrt_phi * nrm), Ab + sqrt_phi * Aw / nrm

    best: np.ndarray | None = None
    best_val = np.inf
    starts = [b] + [np.eye(K)[k] * 0.9 + 0.1 / K for k in range(K)]
    for w0 in starts:
        res = minimize(objective, w0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * K,
                       constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0,
                                     "jac": lambda w: np.ones_like(w)}],
                       options={"ftol": 1e-14, "maxiter": 500})
        w = np.clip(res.x, 0.0, None)
        w = w / w.sum() if w.sum() > 0 else b
        val = objective(w)[0]
        if np.isfinite(val) and val < best_val:
            best, best_val = w, val
    w = b if best is None else best
    gw_norm = float(np.sqrt(max(w @ A @ w, 0.0)))
    if gw_norm < norm_eps:  # approximately Pareto-stationary, as in torchjd
        return torch.zeros(K, dtype=torch.float64)
    return torch.from_numpy(b + (sqrt_phi / gw_norm) * w)
