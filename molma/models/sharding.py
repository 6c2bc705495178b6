"""FSDP2 sharding of a causal LM (plain or LoRA-wrapped) or of the critic, and gathering it back.

PyTorch's ``fully_shard`` does the work; what this module adds is where to apply it for the models
molma trains: every transformer block is its own FSDP unit (gathered just before it runs, freed right
after), then the root. The root of a peft model is its base causal LM, not the ``PeftModel`` wrapper:
``PeftModel.generate()`` calls the base model directly, so a hook on the wrapper would never gather
the embeddings for generation. The layout that uses it is :class:`molma.distributed.FSDP`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from molma.models.blocks import transformer_blocks


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (LoRA adapters that can be disabled)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def shard_model(model: nn.Module, mesh, replicate: Iterable[nn.Parameter] = ()) -> nn.Module:
    """``fully_shard`` each transformer block, then the root (in place; returns ``model``).

    Afterwards every parameter is a ``DTensor`` holding this process's shard along dim 0; forward and
    backward gather the full weights block by block, and ``backward()`` reduce-scatters (averages)
    the gradients over processes. Parameters in ``replicate`` stay whole on every process (moved to
    the mesh's device); FSDP does not reduce their gradients (``MultiObjectiveBackward`` with the
    :class:`~molma.distributed.FSDP` layout averages them), e.g. GAPO's last-layer Gramian source."""
    from torch.distributed.fsdp import fully_shard

    keep = {id(p): p for p in replicate}
    for block in transformer_blocks(model) or []:
        params = list(block.parameters())
        mine = {p for p in params if id(p) in keep}
        if params and len(mine) == len(params):
            continue  # nothing of this block to shard; its buffers go with the root
        fully_shard(block, mesh=mesh, reshard_after_forward=True, ignored_params=mine or None)
    # PyTorch's defaults for reshard_after_forward, made explicit for gathered()
    fully_shard(_root(model), mesh=mesh, reshard_after_forward=False,
                ignored_params=set(keep.values()) or None)
    device = torch.device(mesh.device_type) if mesh.device_type == "cpu" else \
        torch.device(mesh.device_type, torch.cuda.current_device())
    with torch.no_grad():
        for p in keep.values():
            p.data = p.data.to(device)
    return model


def _root(model: nn.Module) -> nn.Module:
    return model.get_base_model() if is_peft(model) else model


@contextmanager
def gathered(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: the sharded ``model`` holds its whole weights (one all-gather per FSDP unit), and its
    forward passes communicate nothing, so generation decodes token by token at replicated speed and
    processes may stop at different lengths. Costs the full model's memory while inside.

    Without it every decoding step would all-gather every block again."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    root = _root(model)
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for unit in units:
            unit.set_reshard_after_forward(unit is not root, recurse=False)  # as shard_model set them
            unit.reshard()
