"""Small pure functions for the task-space linear algebra of gradient modulation.

Notation follows the MOLMA paper (section 3.3.5, Algorithm 1): the K objective gradients are the
columns of ``G = [g_1 ... g_K]`` (P x K), the task-space Gram matrix is ``M = G^T G`` (K x K) and a
weighting maps ``M`` to coefficients ``alpha`` so that the update is ``G alpha = sum_k alpha_k g_k``.

Everything here works on the K x K Gramian (float64), never on a K x P matrix, except
:func:`gramian` / :func:`combine`, which work parameter by parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: Relative eigenvalue tolerance (times K) below which an eigenvalue of ``M`` counts as zero. The
#: Gramian is accumulated from float32 gradients, so its eigenvalues are only known to about float32
#: precision relative to the largest one, whatever dtype the eigen-decomposition runs in.
FLOAT32_EPS: float = float(torch.finfo(torch.float32).eps)


def gramian(jacobians: Sequence[Tensor]) -> Tensor:
    """``M = G^T G`` (Algorithm 1, line 9) accumulated parameter by parameter.

    ``jacobians[i]`` has shape ``(K, *param_i.shape)`` and holds the K objective gradients of one
    parameter; no K x P matrix is built. Each block product runs in the gradients' dtype, the sum in
    float64. Returns a K x K float64 tensor on the CPU.
    """
    if not jacobians:
        raise ValueError("gramian() needs at least one Jacobian block")
    K = jacobians[0].shape[0]
    out = torch.zeros(K, K, dtype=torch.float64)
    for jac in jacobians:
        if jac.shape[0] != K:
            raise ValueError(f"inconsistent number of objectives: {jac.shape[0]} != {K}")
        flat = jac.reshape(K, -1)
        out += (flat @ flat.T).to(device="cpu", dtype=torch.float64)
    return out


def combine(jacobians: Sequence[Tensor], alpha: Tensor) -> list[Tensor]:
    """The update ``G alpha = sum_k alpha_k g_k`` (Algorithm 1, line 13), one tensor per parameter."""
    out = []
    for jac in jacobians:
        a = alpha.to(device=jac.device, dtype=jac.dtype)
        out.append(torch.tensordot(a, jac, dims=([0], [0])))
    return out


def as_gramian(matrix: Tensor) -> Tensor:
    """Validate a K x K Gramian and return it symmetrised in float64 (CPU).

    Raises ``ValueError`` for a wrong shape or a non-finite entry (never propagates NaN/inf).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"a Gramian must be a non-empty square matrix, got shape {tuple(matrix.shape)}")
    M = matrix.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(M).all()):
        raise ValueError("the Gramian has non-finite entries (NaN or inf gradients)")
    return (M + M.T) / 2


def norms(M: Tensor) -> Tensor:
    """Gradient norms ``||g_k|| = sqrt(M_kk)`` (negative round-off clamped to zero)."""
    return torch.sqrt(torch.clamp(torch.diagonal(M), min=0.0))


def cosines(M: Tensor) -> Tensor:
    """Pairwise cosines ``M_ij / (||g_i|| ||g_j||)``; a zero gradient has cosine 0 with everything."""
    n = norms(M)
    denom = torch.outer(n, n)
    cos = torch.where(denom > 0, M / torch.where(denom > 0, denom, torch.ones_like(denom)),
                      torch.zeros_like(M))
    return torch.clamp(cos, -1.0, 1.0)


def positive_spectrum(M: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of ``M`` (Algorithm 1, line 10) that are numerically positive.

    An eigenvalue counts as positive when it exceeds ``rtol * lambda_max`` (default ``K * eps32``),
    as in the Aligned-MTL reference, which keeps "the last positive singular value". Returned in
    decreasing order; both empty when ``M`` is zero.
    """
    K = M.shape[0]
    lam, V = torch.linalg.eigh(M)
    lam_max = lam.max()
    if not bool(lam_max > 0):
        return lam[:0], V[:, :0]
    tol = lam_max * (K * FLOAT32_EPS if rtol is None else rtol)
    keep = lam > tol
    lam, V = lam[keep], V[:, keep]
    order = torch.argsort(lam, descending=True)
    return lam[order], V[:, order]


def rank(M: Tensor, rtol: float | None = None) -> int:
    """Numerical rank of ``G`` from its Gramian (number of positive eigenvalues, see above)."""
    return int(positive_spectrum(M, rtol)[0].numel())


def condition_number(M: Tensor, rtol: float | None = None) -> float | None:
    """``sigma_max / sigma_min`` of ``G`` from ``M = G^T G``, over its positive singular values.

    ``sigma_k = sqrt(lambda_k)`` (section 3.3.5). ``None`` when ``G`` is zero. A rank-deficient ``G``
    reports the ratio over its non-zero singular values (pair it with :func:`rank`).
    """
    lam, _ = positive_spectrum(M, rtol)
    if lam.numel() == 0:
        return None
    return float(torch.sqrt(lam[0] / lam[-1]))


def transformed_gramian(M: Tensor, T: Tensor) -> Tensor:
    """Gramian of the transformed gradient matrix ``G T``: ``(G T)^T (G T) = T^T M T``."""
    T = T.to(torch.float64)
    return T.T @ M @ T


def sqrt_factor(M: Tensor) -> Tensor:
    """A K x K matrix ``R`` with ``R R^T = M`` (eigen-factor), standing in for the K x P ``G^T``.

    Any method that only reads ``G`` through ``G G^T`` products and norms of ``alpha^T G^T`` gives
    the same weights on ``R`` as on the full Jacobian.
    """
    lam, V = torch.linalg.eigh(M)
    return V * torch.sqrt(torch.clamp(lam, min=0.0))


def balance_transformation(M: Tensor, rtol: float | None = None,
                           scale_mode: str = "min") -> tuple[Tensor, int]:
    """Aligned-MTL balance transformation ``B = sqrt(lambda_min) V Sigma^{-1} V^T`` (Alg. 1, l. 10-12).

    ``lambda_min`` is the smallest *positive* eigenvalue (eigenvalues under the tolerance of
    :func:`positive_spectrum` are treated as zero and their eigenvectors dropped), so ``G B`` has
    mutually orthogonal columns of equal norm ``sqrt(lambda_min)`` on the span of ``G``. ``scale_mode``
    ``"median"`` / ``"rmse"`` (mean eigenvalue) are the reference implementation's variants. Returns
    ``(B, rank)``; the zero Gramian gives the identity (the update ``G w`` is then zero anyway).
    """
    K = M.shape[0]
    lam, V = positive_spectrum(M, rtol)
    r = int(lam.numel())
    if r == 0:
        return torch.eye(K, dtype=torch.float64), 0
    if scale_mode == "min":
        scale = lam[-1]
    elif scale_mode == "median":
        scale = torch.median(lam)
    elif scale_mode == "rmse":
        scale = lam.mean()
    else:
        raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}")
    B = torch.sqrt(scale) * (V / torch.sqrt(lam)) @ V.T
    return B, r


def normalize_importance(importance: Tensor | Sequence[float] | None, K: int,
                         name: str = "importance") -> Tensor:
    """Task importance ``w`` (Algorithm 1's omega) as a float64 vector summing to one.

    ``None`` means equal importance ``1/K`` (the MOLMA paper's setting). Raises ``ValueError`` for a
    wrong length, a negative or non-finite entry or an all-zero vector.
    """
    if importance is None:
        return torch.full((K,), 1.0 / K, dtype=torch.float64)
    w = torch.as_tensor(importance).detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    if w.numel() != K:
        raise ValueError(f"{name} has {w.numel()} entries but there are {K} objectives")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative, got {w.tolist()}")
    total = w.sum()
    if not bool(total > 0):
        raise ValueError(f"{name} must not be all zero")
    return w / total
