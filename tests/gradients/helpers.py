"""Shared generators and an independent min-norm solver for the gradient tests."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

KINDS = ("random", "duplicated", "opposite", "zero", "scaled", "wide")


def jacobian(kind: str, K: int, P: int, seed: int) -> torch.Tensor:
    """A K x P float64 Jacobian (rows = objective gradients), random or adversarial."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, P, generator=g, dtype=torch.float64)
    if kind == "duplicated":
        J[-1] = J[0]
    elif kind == "opposite":
        J[-1] = -J[0]
    elif kind == "zero":
        J[-1] = 0.0
    elif kind == "scaled":
        J[0] *= 1e-8
        J[-1] *= 1e8
    elif kind == "wide":  # more objectives than dimensions: rank-deficient
        J = torch.randn(K, max(1, K // 2), generator=g, dtype=torch.float64)
    elif kind == "allzero":
        J.zero_()
    elif kind != "random":
        raise ValueError(kind)
    return J


def min_norm_reference(M: np.ndarray, starts: int = 6, seed: int = 0) -> np.ndarray:
    """min alpha^T M alpha on the simplex by SLSQP from several starts (independent of Wolfe)."""
    K = M.shape[0]
    rng = np.random.default_rng(seed)
    best, best_val = None, np.inf
    inits = [np.full(K, 1.0 / K)] + [rng.dirichlet(np.ones(K)) for _ in range(starts)]
    for a0 in inits:
        res = minimize(lambda a: a @ M @ a, a0, jac=lambda a: 2 * M @ a, method="SLSQP",
                       bounds=[(0.0, 1.0)] * K,
                       constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0}],
                       options={"ftol": 1e-15, "maxiter": 1000})
        a = np.clip(res.x, 0, None)
        a /= a.sum()
        if a @ M @ a < best_val:
            best, best_val = a, a @ M @ a
    return best
