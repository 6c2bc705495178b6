"""Prepacked linear layers for CPU decoding: ``F.linear`` with the weight reordered once into the GEMM
library's blocked layout (oneDNN for bf16, MKL for float32), the same results bit for bit.

Decoding multiplies a few rows (one new token per sequence: 16 at batch 16) by every weight of the model at
every step. For so few rows the GEMM libraries spend much of each call reordering the weight into their
blocked layout; reordering once per generation call and reusing it was measured here (SmolLM2-135M shapes, 16
rows, one thread) at 2x faster for the bf16 layers (58 vs 121 us for 576 -> 1536) and 1.7x for the float32
LM head over 49,152 tokens (12.5 vs 21.2 ms), with identical outputs. PyTorch exposes the reordering only as
the operators its compiler (inductor) uses when it freezes weights (``torch.ops.mkldnn._reorder_linear_weight``
/ ``torch.ops.mkl._mkl_reorder_linear_weight``); written here because no library packs the weights of an
eager model. Where those operators are missing (other devices, builds without oneDNN / MKL), and whenever a
gradient could flow, the layer is plain ``F.linear``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# rows per call the packed layout is tuned for (a decoding batch); any other number of rows gives the same result
ROWS_HINT = 16


def _mkldnn_packing() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _mkl_packing() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


def packed_linear(weight: Tensor, bias: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """``x -> F.linear(x.to(weight.dtype), weight, bias)`` for inference, with ``weight`` prepacked where the CPU
    GEMM library allows it (bf16: oneDNN; float32: MKL), else plain ``F.linear``. The packed form keeps no
    other copy of a bf16 weight (the decoding copies would otherwise double) and has no backward: an input that
    requires grad is refused. ``weight`` and ``bias`` must not change while the returned function is in use."""
    weight, bias = weight.detach(), None if bias is None else bias.detach().to(weight.dtype)
    dtype = weight.dtype
    if weight.device.type != "cpu" or weight.dim() != 2:
        return lambda x: F.linear(x.to(dtype), weight, bias)
    if dtype == torch.bfloat16 and _mkldnn_packing():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT)
        del weight

        def run(x: Tensor) -> Tensor:
            # oneDNN reads the input as a dense row-major block: a strided view gives wrong rows (tested)
            return torch.ops.mkldnn._linear_pointwise(x.to(dtype).contiguous(), packed, bias, "none", [], "")
    elif dtype == torch.float32 and _mkl_packing():
        packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, ROWS_HINT)

        def run(x: Tensor) -> Tensor:
            return torch.ops.mkl._mkl_linear(x.to(dtype).contiguous(), packed, weight, bias, ROWS_HINT)
    else:
        return lambda x: F.linear(x.to(dtype), weight, bias)

    def forward(x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("a prepacked linear layer (molma.models.packing) has no backward: it serves "
                               "inference contexts only (autocast(..., inference=True) under torch.no_grad())")
        return run(x)

    return forward


# (layer, dtype) -> ((weight, bias) identities and versions, its packed forward): a frozen layer (the LM head) is
# packed once, not at every generation call (52 ms for SmolLM2's 49,152 x 576 head in float32)
_PACKED_LAYERS: weakref.WeakKeyDictionary[nn.Linear, dict[torch.dtype, tuple[tuple, Callable[[Tensor], Tensor]]]] = \
    weakref.WeakKeyDictionary()


def packed_layer(layer: nn.Linear, dtype: torch.dtype = torch.float32) -> Callable[[Tensor], Tensor]:
    """:func:`packed_linear` of ``layer``'s weight and bias in ``dtype``, reused while neither was replaced or
    changed in place (a tensor's version counts its in-place updates: an optimizer step repacks)."""
    weight, bias = layer.weight, layer.bias
    key = tuple((t.data_ptr(), t._version, t.dtype) if t is not None else None for t in (weight, bias))
    per_dtype = _PACKED_LAYERS.setdefault(layer, {})
    cached = per_dtype.get(dtype)
    if cached is not None and cached[0] == key:
        return cached[1]
    forward = packed_linear(weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype))
    per_dtype[dtype] = (key, forward)
    return forward
