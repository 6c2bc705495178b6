"""Multi-objective backward: K losses from one forward pass -> one modulated update in ``.grad``.

MOLMA Algorithm 1, lines 4-13, for one mini-batch: per-objective gradients ``g_k`` (or a cheap
proxy of them), the Gram matrix ``M = G^T G``, weights ``alpha`` from a weighting, and the update
``G alpha`` written to the parameters' ``.grad`` (then clipped to a global norm). The optimizer step
(line 14) stays with the caller.

Modes (where the Gramian comes from):

* ``"exact"``: gradients over all trainable parameters (one shared forward; K vector-Jacobian
  products, batched with ``is_grads_batched`` or looped), Gramian accumulated per parameter, update
  combined from the stored gradients. Memory: K gradients of the trainable parameters.
* ``"fast"``: Gramian of the gradients w.r.t. a shared ``representation`` tensor passed to
  :meth:`MultiObjectiveBackward.backward` (Aligned-MTL's representation-level variant: final hidden
  states, per-token log-probabilities, ...), then ONE backward of ``sum_k alpha_k L_k``.
* ``"subset"``: Gramian of the gradients of a small parameter subset (``subset_params``, e.g. the
  policy's last layer as in GAPO), then ONE backward of ``sum_k alpha_k L_k``.

Under ``torch.distributed`` a layout from :mod:`molma.distributed` says how gradients, Gramians and
norms are reduced over processes; this module never asks which layout it has.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from molma.distributed import Layout, SingleProcess, like, local
from molma.gradients.linalg import (
    combine,
    condition_number,
    cosines,
    gramian,
    normalize_importance,
    norms,
    rank,
    transformed_gramian,
)
from molma.gradients.weightings import ImportanceLike, Weighting, resolve_weighting

log = logging.getLogger(__name__)

Mode = Literal["exact", "fast", "subset"]
VJPStrategy = Literal["batched", "loop"]

MODES: tuple[str, ...] = ("exact", "fast", "subset")
_SOURCES = {"exact": "parameters", "fast": "representation", "subset": "subset"}


class _SkipStepError(Exception):
    """Internal: abandon this step without writing an update."""


def _float_or_none(x: float | Tensor | None) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


class MultiObjectiveBackward:
    """Per-step gradient modulation engine for K objectives sharing one forward pass.

    Args:
        params: the trainable parameters (those with ``requires_grad``; duplicates removed).
        weighting: a name from ``WEIGHTING_NAMES`` ("aligned-mtl", "gapo", ...), a molma
            :class:`~molma.gradients.weightings.Weighting` or a torchjd Gramian weighting.
        mode: ``"exact"``, ``"fast"`` (needs ``representation=`` at each step) or ``"subset"``
            (needs ``subset_params``).
        clip_norm: global-norm clipping of the combined update (the paper uses 1.0); ``None``: off.
        subset_params: parameters whose gradients define the Gramian in ``"subset"`` mode.
        importance: default task importance / preference (normalised to sum 1; default ``1/K``).
        vjp: ``"loop"`` (K ``autograd.grad`` calls sharing the graph) or ``"batched"``
            (one ``autograd.grad(..., is_grads_batched=True)``; falls back to the loop with a warning
            if an operation has no batching rule).
        layout: how the processes share the work (:mod:`molma.distributed`): ``SingleProcess()``
            (the default), ``DataParallel()`` (DDP-style: replicated params, different data; do NOT
            also wrap the model in DDP) or ``FSDP()`` (parameters sharded by FSDP2 ``fully_shard``,
            different data per rank; parameters FSDP leaves unsharded are averaged as under
            ``DataParallel``, and the ``subset`` parameters must be such). Its process group and
            device are where the collectives run.
        **weighting_kwargs: passed to :func:`~molma.gradients.weightings.get_weighting` with a name.

    ``backward`` overwrites ``.grad`` of every parameter (it never accumulates): the update of this
    step only, like ``optimizer.zero_grad(); loss.backward()``. A skipped step sets ``.grad = None``
    so that ``optimizer.step()`` leaves the parameters (and Adam's moments) untouched.
    """

    def __init__(self, params: Iterable[Tensor], weighting: Any = "aligned-mtl", *,
                 mode: Mode = "exact", clip_norm: float | None = 1.0,
                 subset_params: Iterable[Tensor] | None = None, importance: ImportanceLike = None,
                 vjp: VJPStrategy = "loop", layout: Layout | None = None,
                 **weighting_kwargs: Any) -> None:
        self.params = _unique_trainable(params)
        if not self.params:
            raise ValueError("MultiObjectiveBackward needs at least one parameter with requires_grad")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if layout is not None and not isinstance(layout, Layout):
            raise TypeError(f"layout must be a molma.distributed.Layout, got {type(layout).__name__}")
        if vjp not in ("batched", "loop"):
            raise ValueError(f"vjp must be 'batched' or 'loop', got {vjp!r}")
        if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError(f"clip_norm must be a positive number or None, got {clip_norm}")
        self.subset_params = _unique_trainable(subset_params or [])
        if mode == "subset" and not self.subset_params:
            raise ValueError("mode='subset' needs subset_params (e.g. the policy's last layer)")
        if mode != "subset" and self.subset_params:
            raise ValueError("subset_params is only used with mode='subset'")
        self.layout: Layout = layout if layout is not None else SingleProcess(self.params[0].device)
        self.layout.check_subset(self.subset_params)
        self.weighting: Weighting = resolve_weighting(weighting, **weighting_kwargs)
        self.mode: Mode = mode
        self.clip_norm = clip_norm
        self.importance = importance
        self.vjp: VJPStrategy = vjp
        self.steps = 0
        self.skipped_steps = 0

    # ------------------------------------------------------------------ public
    def backward(self, losses: Sequence[Tensor], representation: Tensor | None = None,
                 importance: ImportanceLike = None) -> dict[str, Any]:
        """Write the modulated update of ``losses`` (K scalars, one forward) into ``.grad``.

        ``representation`` is required in ``"fast"`` mode (a tensor in the graph of every loss).
        ``importance`` overrides the default task importance / P-GAPO preference for this step.
        Returns JSON-serialisable diagnostics (see ``docs/gradients.md``); ``"skipped"`` is ``None``
        or the reason the update was not written.
        """
        losses = _check_losses(losses)
        K = len(losses)
        if self.mode == "fast":
            if representation is None:
                raise ValueError("mode='fast' needs representation= (a tensor shared by all losses)")
            if not representation.requires_grad:
                raise ValueError("the representation tensor does not require grad (is it detached?)")
        self.steps += 1
        diag: dict[str, Any] = {
            "mode": self.mode, "weighting": self.weighting.name, "num_objectives": K,
            "gramian_source": _SOURCES[self.mode],
            "distributed": self.layout.name,
            "losses": [_float_or_none(x.detach().float()) for x in losses],
            "skipped": None, "alpha": None, "importance": None, "grad_norms": None, "cosines": None,
            "min_cosine": None,
            "gramian_rank": None, "cond_before": None, "cond_after": None, "update_norm": None,
            "clip_coef": None,
        }
        try:
            bad = [k for k, v in enumerate(diag["losses"]) if v is None]
            if self.layout.any_rank(bool(bad)):
                raise _SkipStepError(f"non-finite loss for objective {bad[0]}" if bad
                                     else "non-finite loss on another rank")
            if self.mode == "exact":
                self._exact(losses, importance, diag)
            else:
                self._one_backward(losses, representation, importance, diag)
        except _SkipStepError as skip:
            self._skip(str(skip), diag)
        return diag

    # ------------------------------------------------------------------ modes
    def _exact(self, losses: list[Tensor], importance: ImportanceLike, diag: dict[str, Any]) -> None:
        if self.layout.reduces_in_backward:
            jacs = self._backward_jacobians(losses)
        else:
            jacs = self._jacobians(losses, self.params)
        self.layout.average_replicated_(jacs, self.params)
        M = self._reduced_gramian(jacs, self.params)
        alpha = self._weights(M, importance, diag)
        update_norm = math.sqrt(max(float(alpha @ M @ alpha), 0.0))  # ||G alpha||, exact across shards
        if not math.isfinite(update_norm):
            raise _SkipStepError("non-finite combined gradient")
        coef = self._clip_coef(update_norm, diag)
        grads = combine(jacs, alpha * coef)
        del jacs
        for p, g in zip(self.params, grads):
            p.grad = like(p, g)

    def _one_backward(self, losses: list[Tensor], representation: Tensor | None,
                      importance: ImportanceLike, diag: dict[str, Any]) -> None:
        if self.mode == "fast":
            assert representation is not None
            jacs = self._jacobians(losses, [representation], retain_graph=True)
            M = self.layout.representation_gramian(gramian(jacs))
        else:
            jacs = self._jacobians(losses, self.subset_params, retain_graph=True)
            self.layout.average_replicated_(jacs, self.subset_params)
            M = self._reduced_gramian(jacs, self.subset_params)
        del jacs
        alpha = self._weights(M, importance, diag)
        weighted = [(float(a), loss) for a, loss in zip(alpha, losses) if a != 0 and loss.requires_grad]
        if self.layout.reduces_in_backward:  # e.g. FSDP reduce-scatters (averages) on backward() only
            for p in self.params:
                p.grad = None
            if weighted:
                sum(a * loss for a, loss in weighted).backward()
            raw = tuple(None if p.grad is None else local(p.grad) for p in self.params)
        elif weighted:
            total = sum(a * loss for a, loss in weighted)
            raw = torch.autograd.grad(total, self.params, allow_unused=True)
        else:
            raw = (None,) * len(self.params)
        grads = [torch.zeros_like(local(p)) if g is None else g for p, g in zip(self.params, raw)]
        self.layout.average_replicated_(grads, self.params)
        sq = torch.zeros((), dtype=torch.float64, device=self._device)  # this rank's shards
        whole = torch.zeros((), dtype=torch.float64, device=self._device)  # held whole by every rank
        for p, g in zip(self.params, grads):
            term = torch.linalg.vector_norm(g.detach()).double() ** 2
            if self.layout.is_shard(p):
                sq += term
            else:
                whole += term
        sq = self.layout.sum_over_shards(sq) + whole
        update_norm = math.sqrt(float(sq)) if math.isfinite(float(sq)) else math.inf
        if not math.isfinite(update_norm):
            raise _SkipStepError("non-finite combined gradient")
        coef = self._clip_coef(update_norm, diag)
        for p, g in zip(self.params, grads):
            p.grad = like(p, g.mul_(coef) if coef != 1.0 else g)

    # ------------------------------------------------------------------ pieces
    @property
    def _device(self) -> torch.device:
        return self.params[0].device

    def _jacobians(self, losses: list[Tensor], inputs: list[Tensor],
                   retain_graph: bool = False) -> list[Tensor]:
        """``(K, *x.shape)`` gradients of every loss w.r.t. every input, from the one shared graph."""
        K = len(losses)
        out = [torch.zeros((K, *x.shape), dtype=x.dtype, device=x.device) for x in inputs]
        diff = [k for k, loss in enumerate(losses) if loss.requires_grad]
        if not diff:
            return out
        if self.vjp == "batched" and len(diff) > 1:
            try:
                stacked = torch.stack([losses[k] for k in diff])
                eye = torch.eye(len(diff), dtype=stacked.dtype, device=stacked.device)
                # retain_graph=True so that a failed vmap can still fall back to the loop
                grads = torch.autograd.grad(stacked, inputs, grad_outputs=eye, is_grads_batched=True,
                                            allow_unused=True, retain_graph=True)
            except (RuntimeError, NotImplementedError) as err:
                log.warning("batched vector-Jacobian product failed (%s); falling back to the loop", err)
                self.vjp = "loop"
            else:
                for i, g in enumerate(grads):
                    if g is not None:
                        if len(diff) == K:
                            out[i] = g
                        else:
                            out[i][diff] = g
                return out
        for j, k in enumerate(diff):
            keep = retain_graph or j < len(diff) - 1
            grads = torch.autograd.grad(losses[k], inputs, allow_unused=True, retain_graph=keep)
            for i, g in enumerate(grads):
                if g is not None:
                    out[i][k].copy_(g)
        return out

    def _backward_jacobians(self, losses: list[Tensor]) -> list[Tensor]:
        """``(K, *local shard shape)`` gradients from K ``backward()`` calls through one graph.

        FSDP2 reduce-scatters a gradient in its post-backward hooks, which ``autograd.grad`` never
        runs; after each ``backward()`` this rank's ``.grad`` is its shard of the gradient averaged
        over ranks."""
        K = len(losses)
        out = [torch.zeros((K, *local(p).shape), dtype=p.dtype, device=local(p).device)
               for p in self.params]
        diff = [k for k, loss in enumerate(losses) if loss.requires_grad]
        for j, k in enumerate(diff):
            for p in self.params:
                p.grad = None
            losses[k].backward(retain_graph=j < len(diff) - 1)
            for i, p in enumerate(self.params):
                if p.grad is not None:
                    out[i][k].copy_(local(p.grad))
        for p in self.params:
            p.grad = None
        return out

    def _reduced_gramian(self, jacs: list[Tensor], params: list[Tensor]) -> Tensor:
        """``G^T G`` over all of ``params``: shards contribute partial sums (one all-reduce)."""
        shards = [j for j, p in zip(jacs, params) if self.layout.is_shard(p)]
        whole = [j for j, p in zip(jacs, params) if not self.layout.is_shard(p)]
        K = jacs[0].shape[0]
        M = gramian(shards) if shards else torch.zeros(K, K, dtype=torch.float64)
        M = self.layout.sum_over_shards(M)  # every process joins, even one without shards
        return M + gramian(whole) if whole else M

    def _weights(self, M: Tensor, importance: ImportanceLike, diag: dict[str, Any]) -> Tensor:
        """Check the Gramian, run the weighting, fill the Gramian diagnostics."""
        dvals = torch.diagonal(M)
        bad = [k for k in range(M.shape[0]) if not math.isfinite(float(dvals[k]))]
        if bad or not bool(torch.isfinite(M).all()):
            raise _SkipStepError(f"non-finite gradient for objective {bad[0] if bad else '?'}")
        if importance is None:
            importance = self.importance if self.importance is not None else self.weighting.importance
        try:
            alpha = self.weighting(M, importance)
        except FloatingPointError as err:
            raise _SkipStepError(str(err)) from err
        Ms = (M + M.T) / 2
        rtol = getattr(self.weighting, "rtol", None)
        diag["alpha"] = alpha.tolist()
        if self.weighting.uses_importance:
            diag["importance"] = normalize_importance(importance, M.shape[0]).tolist()
        diag["grad_norms"] = norms(Ms).tolist()
        cos = cosines(Ms)
        diag["cosines"] = cos.tolist()
        K = M.shape[0]
        off = cos[~torch.eye(K, dtype=torch.bool)]
        diag["min_cosine"] = float(off.min()) if K > 1 else None
        diag["gramian_rank"] = rank(Ms, rtol)
        diag["cond_before"] = _float_or_none(condition_number(Ms, rtol))
        aligned = transformed_gramian(Ms, self.weighting.alignment(Ms, alpha))
        diag["cond_after"] = _float_or_none(condition_number(aligned, rtol))
        return alpha

    def _clip_coef(self, update_norm: float, diag: dict[str, Any]) -> float:
        coef = 1.0
        if self.clip_norm is not None and update_norm > self.clip_norm:
            coef = self.clip_norm / (update_norm + 1e-6)
        diag["update_norm"] = update_norm
        diag["clip_coef"] = coef
        return coef

    def _skip(self, reason: str, diag: dict[str, Any]) -> None:
        for p in self.params:
            p.grad = None
        self.skipped_steps += 1
        diag["skipped"] = reason
        log.warning("molma.gradients: update skipped (%s)", reason)


def _unique_trainable(params: Iterable[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"expected tensors, got {type(p).__name__}")
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _check_losses(losses: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(losses, Tensor):
        losses = list(losses.reshape(-1).unbind()) if losses.ndim else [losses]
    out = list(losses)
    if not out:
        raise ValueError("backward() needs at least one loss")
    for k, loss in enumerate(out):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss {k} must be a scalar tensor")
    return [loss.reshape(()) for loss in out]
