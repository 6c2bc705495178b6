"""Where the transformer blocks of a causal LM, a reward model or a critic are (one rule for all)."""

from __future__ import annotations

from torch import Tensor, nn


def named_transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(name, blocks)``: the decoder layers of a transformers / peft model, i.e. its longest non-empty
    ``nn.ModuleList``; ``None`` when it has none. Ties go to the first one in ``named_modules()`` order
    (the outermost, earliest registered)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (
                best is None or len(module) > len(best[1])):
            best = (name, module)
    return best


def transformer_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The blocks of :func:`named_transformer_blocks` without their name."""
    found = named_transformer_blocks(model)
    return None if found is None else found[1]


def last_layer_parameters(model: nn.Module) -> list[Tensor]:
    """Trainable parameters of the model's last block: GAPO's "last layer" Gramian source.

    Takes the transformer blocks (:func:`transformer_blocks`) and returns the trainable parameters of
    the last one (with LoRA: that layer's adapters).
    """
    blocks = transformer_blocks(model)
    params = [] if blocks is None else [p for p in blocks[-1].parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable last layer found; pass subset_params explicitly")
    return params
