"""Batched ensembles of small MLPs, input standardisation and atomic safetensors checkpoints.

An ensemble of ``M`` MLPs is stored as stacked weights ``[M, in, out]`` so that all members run in one
``baddbmm`` per layer: on a CPU this is what makes look-ahead and MPC cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from molma.atomic import atomic_file


class EnsembleLinear(nn.Module):
    """``M`` independent linear layers applied to ``x[M, B, in]``."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """``M`` MLPs (SiLU hidden layers) in one module: ``[M, B, in] -> [M, B, out]``."""

    def __init__(self, members: int, in_dim: int, out_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = nn.functional.silu(layer(x))
        return self.layers[-1](x)

    def numpy_forward(self, x: np.ndarray) -> np.ndarray:
        """Inference on ``x[M, B, in]`` or shared ``x[B, in]`` with little per-call overhead.

        Small batches run in numpy, large ones through torch's batched matmul (one thread is faster
        than numpy's generic stacked matmul there). Both use views of the live parameters.
        """
        views = _numpy_views(self)
        last = len(views) - 1
        if x.shape[-2] > SMALL_BATCH:
            with torch.inference_mode():
                t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                for i, layer in enumerate(self.layers):
                    t = torch.matmul(t, layer.weight) + layer.bias
                    if i < last:
                        t = nn.functional.silu(t)
                return t.numpy()
        for i, (w, b) in enumerate(views):
            x = np.matmul(x, w) + b
            if i < last:
                x = silu_np(x)
        return x


SMALL_BATCH = 16  # rows up to which numpy beats torch for ensemble inference


def silu_np(x: np.ndarray) -> np.ndarray:
    """SiLU ``x * sigmoid(x)`` in numpy (overflow-safe)."""
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))


def _numpy_views(module: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cached numpy views ``(weight, bias)`` of the ensemble layers (shared memory with torch)."""
    views = getattr(module, "_np_views", None)
    if views is None:
        views = [(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in module.layers]
        object.__setattr__(module, "_np_views", views)
    return views


class Standardizer(nn.Module):
    """Per-feature ``(x - mean) / std`` with statistics fitted from data (std floored)."""

    def __init__(self, dim: int, min_std: float = 1e-3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.min_std = min_std

    def fit(self, data: torch.Tensor) -> None:
        self.mean.copy_(data.mean(0))
        self.std.copy_(data.std(0, unbiased=False).clamp_min(self.min_std) if len(data) > 1
                       else torch.ones_like(self.std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` as numpy views (updated in place by :meth:`fit`)."""
        return self.mean.numpy(), self.std.numpy()


def one_hot(actions: torch.Tensor, n: int) -> torch.Tensor:
    """Float one-hot of integer ``actions[...]`` -> ``[..., n]``."""
    return nn.functional.one_hot(actions.long(), n).float()


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise ``FloatingPointError`` if any tensor holds NaN/inf (never continue silently)."""
    for t in tensors:
        if not torch.isfinite(t).all():
            raise FloatingPointError(f"{name}: non-finite values encountered")


def bootstrap_indices(n: int, members: int, size: int, rng: np.random.Generator,
                      bootstrap: bool = True) -> np.ndarray:
    """``[members, size]`` row indices: independent resamples per member (or shared uniform draws)."""
    if bootstrap:
        return rng.integers(0, n, size=(members, size))
    return np.repeat(rng.integers(0, n, size=(1, size)), members, axis=0)


def save_module(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module.state_dict()`` as safetensors, atomically (temp file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_module(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors checkpoint written by :func:`save_module` into ``module`` (strict)."""
    module.load_state_dict(load_file(str(path)))
    return module
