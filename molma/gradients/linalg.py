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

#: Relative precision (times K) of the Gramian's entries: each ``M_ij`` sums float32 products, so it is
#: known to about ``eps_float32 * ||g_i|| ||g_j||``. Eigenvalues of the *normalised* Gramian
#: ``M_ij / (||g_i|| ||g_j||)`` below ``K * eps_float32`` (times its largest) are numerical zeros.
FLOAT32_EPS: float = float(torch.finfo(torch.float32).eps)
#: Precision of the float64 eigen-decomposition of ``M`` relative to its largest eigenvalue.
FLOAT64_EPS: float = float(torch.finfo(torch.float64).eps)


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


def null_space(M: Tensor, rtol: float | None = None) -> Tensor:
    """Orthonormal basis (K x (K - r)) of the numerical null space of ``G`` (the ``alpha`` with
    ``G alpha = 0``), found on the normalised Gramian ``C = D^-1/2 M D^-1/2`` with ``D = diag(M)``.

    Why normalised: the float32 round-off of ``M_ij`` is relative to ``||g_i|| ||g_j||``, not to the
    largest eigenvalue, so on ``C`` it is about ``eps_float32`` everywhere. A tolerance relative to
    ``lambda_max(M)`` instead would call two orthogonal gradients of norm ratio > ~2000 dependent and
    drop the smaller objective, the very dominance Aligned-MTL removes. An eigenvalue of ``C`` counts
    as zero below ``rtol * lambda_max(C)`` (default ``K * eps_float32``); a gradient with norm under
    ``sqrt(K * eps_float64)`` times the largest counts as zero.
    """
    K = M.shape[0]
    tol = K * FLOAT32_EPS if rtol is None else rtol
    d = torch.clamp(torch.diagonal(M), min=0.0)
    live = d > K * FLOAT64_EPS * d.max()
    scale = torch.where(live, torch.rsqrt(torch.where(live, d, torch.ones_like(d))), torch.ones_like(d))
    C = scale[:, None] * M * scale[None, :]
    C = torch.where(live[:, None] & live[None, :], C, torch.zeros_like(C))  # a zero gradient: all null
    mu, U = torch.linalg.eigh((C + C.T) / 2)
    null = U[:, mu <= tol * torch.clamp(mu.max(), min=1.0)]
    if null.shape[1] == 0:
        return null
    basis, _ = torch.linalg.qr(scale[:, None] * null)  # G (S u) = (G S) u = 0: back to M's coordinates
    return basis


def positive_spectrum(M: Tensor, rtol: float | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of ``M`` (Algorithm 1, line 10) on the span of ``G``.

    The numerical null space of ``G`` (:func:`null_space`, tolerance ``rtol``) is projected out of
    ``M`` first, so its round-off never passes for a tiny positive eigenvalue, while a small but real
    one (a dominated objective) is kept; eigenvalues the float64 decomposition cannot tell from zero
    (``< K * eps_float64 * lambda_max``) are dropped. Returned in decreasing order; both empty when
    ``M`` is zero.
    """
    K = M.shape[0]
    if not bool(torch.diagonal(M).max() > 0):
        return M.new_zeros(0), M.new_zeros(K, 0)
    Q = null_space(M, rtol)
    if Q.shape[1]:
        P = torch.eye(K, dtype=M.dtype) - Q @ Q.T
        M = P @ M @ P
    lam, V = torch.linalg.eigh((M + M.T) / 2)
    order = torch.argsort(lam, descending=True)[: K - Q.shape[1]]
    lam, V = lam[order], V[:, order]
    keep = lam > K * FLOAT64_EPS * torch.clamp(lam.max(), min=0.0) if lam.numel() else lam > 0
    return lam[keep], V[:, keep]


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

    ``lambda_min`` is the smallest *positive* eigenvalue (the numerical null space of ``G``, see
    :func:`positive_spectrum`, is dropped), so ``G B`` has
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
