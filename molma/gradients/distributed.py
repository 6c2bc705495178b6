"""The few collectives gradient modulation needs under ``torch.distributed``.

Two layouts (see ``docs/gradients.md``):

* ``"data"`` (DDP-style): every rank holds all parameters and a different slice of the batch. The
  per-objective gradients (or the combined one) are averaged across ranks, exactly as DDP would
  average a single gradient, so every rank builds the same Gramian and the same ``alpha``.
* ``"sharded"`` (model-parallel): every rank holds a disjoint shard of the parameters and sees the
  same losses; each rank's Gramian over its shard is a partial sum of ``G^T G``, so one K x K
  all-reduce (sum) gives every rank the full Gramian.
* ``"fsdp"`` (both): parameters are FSDP2 ``DTensor`` shards and every rank sees different data.
  Each ``loss.backward()`` makes FSDP reduce-scatter (average) the gradient, so every rank then holds
  its shard of the data-averaged gradient, and the sharded Gramian rule applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

#: Elements per all-reduce bucket when averaging gradients (64 MB of float32).
BUCKET_NUMEL = 1 << 24


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 parameter or gradient)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's part of ``t``: the local shard of a ``DTensor``, else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def like(param: Tensor, local_value: Tensor) -> Tensor:
    """``local_value`` (this rank's shard) as a tensor laid out like ``param`` (a ``DTensor`` with the
    same mesh, placements and global shape when ``param`` is one)."""
    if not is_dtensor(param):
        return local_value
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local_value, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def require_initialized(kind: str) -> None:
    """Raise a clear error if a distributed layout is requested without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"distributed={kind!r} needs torch.distributed to be initialised "
                           "(torch.distributed.init_process_group) before backward()")


def world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (1 when torch.distributed is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def all_reduce_sum(t: Tensor, group: Any = None, device: torch.device | None = None) -> Tensor:
    """Sum of ``t`` over ranks (returned as a new tensor with ``t``'s dtype and device).

    ``device`` is where the collective runs (the parameters' device: NCCL needs CUDA tensors).
    """
    work = t.to(device if device is not None else t.device, copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM, group=group)
    return work.to(t.device)


def any_rank(flag: bool, group: Any = None, device: torch.device | None = None) -> bool:
    """True on every rank if ``flag`` is true on any rank (keeps skip decisions collective)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item() > 0)


def average_(tensors: Sequence[Tensor], group: Any = None, bucket_numel: int = BUCKET_NUMEL) -> None:
    """Average ``tensors`` in place across ranks, packed into flat buckets (as DDP does)."""
    R = world_size(group)
    if R == 1:
        return
    bucket: list[Tensor] = []
    size = 0

    def flush() -> None:
        if not bucket:
            return
        if len(bucket) == 1:
            dist.all_reduce(bucket[0], op=dist.ReduceOp.SUM, group=group)
            bucket[0].div_(R)
        else:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat.div_(R)
            offset = 0
            for b in bucket:
                n = b.numel()
                b.copy_(flat[offset:offset + n].view_as(b))
                offset += n
        bucket.clear()

    for t in tensors:
        if bucket and (size + t.numel() > bucket_numel or t.dtype != bucket[0].dtype
                       or t.device != bucket[0].device):
            flush()
            size = 0
        bucket.append(t)
        size += t.numel()
    flush()
