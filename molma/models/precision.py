"""Mixed precision: ``precision: auto | fp32 | bf16 | fp16`` for every model forward in molma.

Mixed precision, not a cast: parameters (and AdamW's state) stay float32; the forwards run under
``torch.autocast`` in bf16 / fp16 (frozen linear layers with a half-precision copy of their weights made
once per context: what autocast computes, without its cast at every call); the output layers (the LM head
that gives token logits, a reward model's score head) run in float32 so log-softmax, token log-probabilities
and scores keep float32 resolution (a bf16 logit of magnitude 20 is only resolved to 0.125). Losses,
advantages and whitening are computed outside the autocast region in float32; the gradient engine's Gramian
stays float64.

``auto`` picks bf16 where the hardware has it (a CUDA GPU with bf16, a CPU with AMX-BF16 or
AVX-512-BF16), else fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from molma.environment import read_cpuinfo
from molma.models.fusion import SharedInputProduct, sibling_groups
from molma.models.packing import packed_layer, packed_linear

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX-BF16 or AVX-512-BF16), read from /proc/cpuinfo."""
    return bool(read_cpuinfo()["cpu_bf16_units"])


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> str:
    """``auto`` -> ``bf16`` where ``device`` supports it, else ``fp32``; other values are checked and
    returned as they are."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp32"


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless module
        return torch.device("cpu")


def output_layers(model: nn.Module) -> list[nn.Linear]:
    """The layers whose outputs are read as numbers: the LM head and a classification ``score`` head.

    A peft model is unwrapped to its base model (adapters live inside the decoder, not in these)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers: list[nn.Linear] = []
    head = _lm_head(model)
    if head is not None:
        layers.append(head)
    for name in ("score", "classifier"):
        layer = getattr(base, name, None)
        if isinstance(layer, nn.Linear) and layer not in layers:
            layers.append(layer)
        # peft wraps a trainable score head as ModulesToSaveWrapper: its active copy is what runs
        elif layer is not None and isinstance(getattr(layer, "original_module", None), nn.Linear):
            layers.extend(m for m in layer.modules() if isinstance(m, nn.Linear) and m not in layers)
    return layers


def _lm_head(model: nn.Module) -> nn.Linear | None:
    """The causal LM head of ``model`` (a peft model unwrapped), or None (a reward model has none)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    return head if isinstance(head, nn.Linear) else None


@contextlib.contextmanager
def _replaced_forwards(forwards: dict[nn.Module, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Run each module of ``forwards`` with the given forward while the context is open (an instance
    attribute over the class's method), then restore it. The callers skip modules an enclosing context
    already replaced (``"forward" in module.__dict__``)."""
    for module, forward in forwards.items():
        module.forward = forward
    try:
        yield
    finally:
        for module in forwards:
            del module.forward


def _float32_outputs(layers: list[nn.Linear], inference: bool = False):
    """Temporarily run ``layers`` in float32 with autocast off (inputs upcast). Gradients still flow
    to the float32 weights, so this works in training forwards too. ``inference``: the weights are taken once
    on entry and prepacked (:func:`molma.models.packing.packed_linear`; same results, no gradient)."""

    def float32_forward(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        packed = packed_layer(layer) if inference else None

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                if packed is not None:
                    return packed(x.float())
                bias = None if layer.bias is None else layer.bias.float()
                return F.linear(x.float(), layer.weight.float(), bias)

        return forward

    return _replaced_forwards({layer: float32_forward(layer) for layer in layers
                               if "forward" not in layer.__dict__})  # not patched by an enclosing context


# the logits of each row that the sampling head recomputes in float32, and the most rows it serves (one position
# per sequence while decoding; a longer input takes the float32 head)
SAMPLING_EXACT_TOP = 64
SAMPLING_MAX_ROWS = 1024


def sampling_logits(x: torch.Tensor, half: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor,
                    bias: torch.Tensor | None, exact_top: int = SAMPLING_EXACT_TOP) -> torch.Tensor:
    """Float32 logits for sampling the next token: the product with the half-precision weight (``half``),
    then each row's ``exact_top`` largest logits replaced by their float32 values (``weight``, ``bias``).

    The half-precision product rounds every logit to bf16 (0.125 apart near 20), which would move the top
    tokens' probabilities by up to ~6 %; recomputing the top ones in float32 leaves that rounding only on tokens
    outside them, whose probabilities it changes by the same few per cent of a small number. Samples and their
    log-probabilities both come from these logits, so the two agree exactly."""
    with torch.autocast(device_type=x.device.type, enabled=False):  # the recomputation must stay float32
        logits = half(x).float()
        top = logits.topk(min(exact_top, logits.shape[-1]), dim=-1).indices  # [..., k]
        # index_select, not weight[top]: the same rows, 3x faster at 16 x 64 of 49,152 (measured)
        rows = weight.float().index_select(0, top.reshape(-1)).view(*top.shape, -1)
        exact = (rows @ x.float().unsqueeze(-1)).squeeze(-1)  # [..., k, H] @ [..., H, 1]
        if bias is not None:
            exact = exact + bias.float().index_select(0, top.reshape(-1)).view(top.shape)
        return logits.scatter_(-1, top, exact)


def _sampling_head(layer: nn.Linear, dtype: torch.dtype):
    """Run a causal LM's head as :func:`sampling_logits` (decoding only: one position per sequence, no gradient;
    other inputs take the float32 head). Its half-precision product is 3.6x faster than the float32 one on
    SmolLM2's 49,152 x 576 head at 16 rows (5.4 vs 19.7 ms, both prepacked; measured), a fifth of a decoding
    step."""
    half, exact = packed_layer(layer, dtype), packed_layer(layer)
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x[..., 0].numel() > SAMPLING_MAX_ROWS or (x.dim() > 2 and x.shape[-2] > 1):
            return exact(x.float())
        return sampling_logits(x, half, weight, bias)

    return _replaced_forwards({layer: forward} if "forward" not in layer.__dict__ else {})


def _is_plain_tensor(t: torch.Tensor) -> bool:
    return not hasattr(t, "to_local")  # an FSDP2 shard (DTensor) is left to FSDP's own mixed precision


def _lora_linears(model: nn.Module) -> list[nn.Module]:
    """peft's LoRA-wrapped linear layers of ``model`` whose active adapters can be folded into one weight
    (plain LoRA: no DoRA or other variant, no LoRA bias; not merged or disabled; a frozen, unsharded base)."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return []
    layers = []
    for module in model.modules():
        if not isinstance(module, LoraLinear) or module.merged or module.disable_adapters:
            continue
        base = module.get_base_layer()
        active = [a for a in module.active_adapters if a in module.lora_A]
        variants = getattr(module, "lora_variant", {})  # DoRA and other variants (attribute names of peft 0.17+)
        special = any(a in variants or getattr(module, "use_dora", {}).get(a) or getattr(module, "lora_bias", {}).get(a)
                      for a in active)
        # a trainable base (not LoRA's usual frozen one) keeps peft's forward: the copies below carry no gradient
        if (isinstance(base, nn.Linear) and not base.weight.requires_grad and _is_plain_tensor(base.weight)
                and not special):
            layers.append(module)
    return layers


# rows of a weight folded at a time (:func:`_folded_weight`): the float32 sum of a block stays in the core's cache
# instead of going through a fresh weight-sized tensor, a cast and a copy (measured on SmolLM2's gate/up, 2 x 1536 x
# 576: 0.9 vs 4.2-5.9 ms; the same numbers bit for bit)
FOLD_ROWS = 256


def _folded_weight(layer: nn.Module, dtype: torch.dtype, out: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A plain LoRA layer's weight with its active adapters folded in, ``W + s B A`` (summed in float32, rounded
    once to ``dtype``), and its base's bias in ``dtype``: the weight of :func:`_lora_forwards`' merged forward.
    Written into ``out`` (``[out_features, in_features]``, ``dtype``: e.g. a block of a stacked weight) if given.
    Autocast is off inside: the inference context folds within its autocast region, where a plain ``addmm`` runs in
    bf16 (so it did until session 16: both terms rounded before the sum)."""
    base = layer.get_base_layer()
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    bias = None if base.bias is None else base.bias.detach().to(dtype)
    with torch.no_grad(), torch.autocast(device_type=base.weight.device.type, enabled=False):
        weight = base.weight.detach()
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device) if out is None else out
        if getattr(layer, "fan_in_fan_out", False):  # weights stored transposed: peft's own delta
            total = weight.float()
            for adapter in active:
                total = total + layer.get_delta_weight(adapter).float()
            return out.copy_(total), bias
        # W + s B A block by block (peft's delta, then the sum, took two more passes over the weight)
        adapters = [(layer.lora_B[a].weight.float(), layer.lora_A[a].weight.float(), layer.scaling[a]) for a in active]
        scratch = torch.empty((min(FOLD_ROWS, weight.shape[0]), weight.shape[1]), device=weight.device)
        for first in range(0, weight.shape[0], FOLD_ROWS):
            rows = slice(first, min(first + FOLD_ROWS, weight.shape[0]))
            block = scratch[:rows.stop - first]
            if adapters and weight.dtype == torch.float32:  # the first sum read straight from the weight
                torch.addmm(weight[rows], adapters[0][0][rows], adapters[0][1], alpha=adapters[0][2], out=block)
                rest = adapters[1:]
            else:
                block.copy_(weight[rows])
                rest = adapters
            for lora_b, lora_a, scaling in rest:
                block.addmm_(lora_b[rows], lora_a, alpha=scaling)
            out[rows].copy_(block)
        return out, bias


def _half_weight(layer: nn.Linear, dtype: torch.dtype, out: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``layer``'s weight and bias as ``dtype`` copies (no gradient); the weight written into ``out`` if given (as
    :func:`_folded_weight`)."""
    bias = None if layer.bias is None else layer.bias.detach().to(dtype)
    if out is None:
        return layer.weight.detach().to(dtype), bias
    return out.copy_(layer.weight.detach()), bias


def _with_peft_arguments(layer: nn.Module, run: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A LoRA layer's replacement forward: ``run(x)``, or peft's own forward when called with more arguments
    (e.g. peft's per-row ``adapter_names``)."""

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:
            return type(layer).forward(layer, x, *args, **kwargs)
        return run(x)

    return forward


def _lora_forwards(layers: list[nn.Module], dtype: torch.dtype, merged: bool):
    """Run each plain LoRA layer of ``layers`` with molma's forward instead of peft's, in ``dtype``:

    * ``merged`` (forwards that need no gradient: generation): one matmul with the adapters folded in,
      ``W + s B A`` (summed in float32 once on entry, then rounded). peft's forward runs the base matmul and,
      per adapter, two small matmuls, a dropout and an add: a few Python calls per layer and new token (7 x 30
      layers under SmolLM2's all-linear LoRA), which cost SmolLM2 + LoRA generation most of its bf16
      speed-up. (peft's ``merge_adapter`` writes the sum into the float32 weights, and ``unmerge`` cannot
      restore them bit for bit.) The rounding differs from the unmerged forward's (one rounding of the sum
      instead of two products): of the order of bf16 itself (tested). The folded weight is prepacked for the
      CPU GEMM library (:func:`molma.models.packing.packed_linear`: same results, 2x faster at 16 rows).
    * otherwise (training): ``W x + B (s A x)`` on the base layer's ``dtype`` copy, scaling the rank-r
      intermediate instead of the layer's output, and without peft's cast of the input to the adapters'
      float32 and back (two copies of the activations per layer, measured as a large share of a bf16 step).
      Gradients reach A and B as through peft's forward.
    """

    def molma_forward(layer: nn.Module) -> Callable[..., torch.Tensor]:
        if merged:  # the packed form is the only copy kept (no closure holds the unpacked one)
            return _with_peft_arguments(layer, packed_linear(*_folded_weight(layer, dtype)))
        active = [a for a in layer.active_adapters if a in layer.lora_A]
        weight, bias = _half_weight(layer.get_base_layer(), dtype)

        def run(x: torch.Tensor) -> torch.Tensor:
            out = F.linear(x.to(dtype), weight, bias)
            for adapter in active:
                low = F.linear(layer.lora_dropout[adapter](x).to(dtype), layer.lora_A[adapter].weight)
                out = out + F.linear(low * layer.scaling[adapter], layer.lora_B[adapter].weight)
            return out

        return _with_peft_arguments(layer, run)

    return _replaced_forwards({layer: molma_forward(layer) for layer in layers if "forward" not in layer.__dict__})


def _half_frozen_linears(model: nn.Module, dtype: torch.dtype, keep: list[nn.Linear], inference: bool = False):
    """Run ``model``'s frozen ``nn.Linear`` layers (no gradient to their weight: the base model under LoRA,
    a reference or judge) with a ``dtype`` copy of their weights made once on entry. Autocast would cast the
    same float32 weights to ``dtype`` again at every call: it caches casts only of weights that require
    grad, so in generation, one call per new token, the casts cost about a third of the time (measured with
    SmolLM2 + LoRA, batch 16: 1.44x faster with the copies, same tokens and log-probs). The results are the
    ones autocast gives (the same rounding, once); ``keep`` (the output layers) stay float32. The copies are
    plain tensors, so a backward after the context still finds them. ``inference``: the copies are prepacked
    (:func:`molma.models.packing.packed_linear`; same results)."""

    def half_forward(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        weight, bias = _half_weight(layer, dtype)
        if inference:
            return packed_linear(weight, bias)
        return lambda x: F.linear(x.to(dtype), weight, bias)

    return _replaced_forwards({layer: half_forward(layer) for layer in model.modules()
                               if _halvable(layer, dtype, keep)})


def _halvable(layer: nn.Module, dtype: torch.dtype, keep: list[nn.Linear]) -> bool:
    """Whether :func:`_half_frozen_linears` runs ``layer``: a frozen plain ``nn.Linear`` not in ``keep``, not yet
    in ``dtype``, not patched by an enclosing context."""
    return (isinstance(layer, nn.Linear) and layer not in keep and "forward" not in layer.__dict__
            and not layer.weight.requires_grad and layer.weight.dtype != dtype and _is_plain_tensor(layer.weight))


def _fused_siblings(model: nn.Module, dtype: torch.dtype, lora: list[nn.Module], keep: list[nn.Linear]):
    """Inference contexts: run each group of sibling layers (:func:`molma.models.fusion.sibling_groups`: q/k/v,
    gate/up) that the two contexts above would run one by one (LoRA layers folded, frozen layers halved) as one
    prepacked product over their stacked ``dtype`` weights. Same weights and roundings as those contexts; the
    product's columns are the layers' own (the same numbers bit for bit in the measured shapes, tested within
    float32 resolution). Entered first, so the other two skip these layers."""
    folds = {layer for layer in lora if "forward" not in layer.__dict__}
    halves = {layer for layer in model.modules() if _halvable(layer, dtype, keep)}
    forwards: dict[nn.Module, Callable[..., torch.Tensor]] = {}
    for group in sibling_groups(model, folds | halves):
        bases = [layer.get_base_layer() if layer in folds else layer for layer in group]
        if len({base.weight.shape[1] for base in bases}) != 1:
            continue
        sizes = [base.weight.shape[0] for base in bases]
        stacked = torch.empty((sum(sizes), bases[0].weight.shape[1]), dtype=dtype, device=bases[0].weight.device)
        biases = [(_folded_weight if layer in folds else _half_weight)(layer, dtype, out=block)[1]  # weights in place
                  for layer, block in zip(group, stacked.split(sizes), strict=True)]
        bias = None
        if any(b is not None for b in biases):
            bias = torch.cat([b if b is not None else stacked.new_zeros(n) for b, n in zip(biases, sizes, strict=True)])
        shared = SharedInputProduct(packed_linear(stacked, bias), sizes)
        del stacked, bias
        for index, layer in enumerate(group):
            run = shared.member(index)
            forwards[layer] = _with_peft_arguments(layer, run) if layer in folds else run
    return _replaced_forwards(forwards)


@contextlib.contextmanager
def autocast(model: nn.Module, precision: str, inference: bool = False, sampling: bool = False) -> Iterator[None]:
    """Run forwards of ``model`` (and anything else called inside) in ``precision`` (already resolved:
    fp32 / bf16 / fp16), with ``model``'s output layers in float32. fp32 is a no-op. ``inference``: no
    gradient will flow through the context's forwards (generation), so LoRA adapters are folded into their
    layers' half-precision weights (:func:`_lora_forwards`) and on CPU every linear layer's weight is prepacked
    once on entry (:mod:`molma.models.packing`). ``sampling`` (decoding, implies ``inference``): the LM head's
    logits are the half-precision product with each row's largest recomputed in float32
    (:func:`sampling_logits`); forwards that score given tokens (a reference, a judge) leave it off."""
    if precision == "auto":
        precision = resolve_precision(precision, _device_of(model))
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        yield
        return
    inference = inference or sampling
    device = _device_of(model)
    outputs = output_layers(model)
    dtype = DTYPES[precision]
    lora = _lora_linears(model)
    keep = outputs + [layer.get_base_layer() for layer in lora]
    head = _lm_head(model) if sampling else None
    if head is not None and not _is_plain_tensor(head.weight):  # an FSDP2 shard: FSDP's own mixed precision
        head = None
    with (torch.autocast(device_type=device.type, dtype=dtype),
          _sampling_head(head, dtype) if head is not None else contextlib.nullcontext(),
          _float32_outputs(outputs, inference),
          _fused_siblings(model, dtype, lora, keep) if inference else contextlib.nullcontext(),
          _lora_forwards(lora, dtype, merged=inference),
          # the LoRA layers' forwards hold their own copies of their bases: none made twice
          _half_frozen_linears(model, dtype, keep, inference)):
        yield
