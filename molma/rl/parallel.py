"""Data parallelism for the RL trainer: R processes share one experience batch.

Launch with ``torchrun --nproc_per_node R -m molma train ...`` or ``accelerate launch --multi_gpu
--num_processes R -m molma train ...`` (both set RANK / WORLD_SIZE / MASTER_ADDR). Layout:

* rollout: rank r generates, scores and runs the reference on rows ``[r b, (r + 1) b)`` of the global
  experience (``b = B / R``); sampling is batch-invariant (:mod:`molma.rl.sampling`), so these rows are
  what a single process would sample;
* the rollout tensors are gathered, so every rank holds the whole experience and shapes rewards
  (whitening over the global batch), GAE and metrics identically;
* update: each global mini-batch is split across ranks; the per-objective gradients are averaged by the
  gradient engine (``distributed="data"``) before the Gramian, so every rank gets the same alpha and the
  same step. We do not wrap the model in DDP: DDP averages one gradient, and gradient modulation needs K
  of them first.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from molma.gradients.distributed import world_size
from molma.rl.rollout import Batch

log = logging.getLogger(__name__)


def init_from_env() -> None:
    """Join the process group a launcher (torchrun, accelerate launch) describes in the environment.

    Does nothing for a single process or when the group already exists (e.g. created by accelerate)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)


def device_for(setting: str = "auto") -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; otherwise the named device."""
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(n: int, world: int, me: int) -> range:
    """Rows of a batch of ``n`` that rank ``me`` of ``world`` owns (contiguous, equal sizes)."""
    if n % world:
        raise ValueError(f"a batch of {n} cannot be split evenly over {world} processes")
    size = n // world
    return range(me * size, (me + 1) * size)


def pad_batch(batch: Batch, prompt_len: int, response_len: int, pad_id: int) -> Batch:
    """The same sequences with the prompt left-padded to ``prompt_len`` and the response right-padded
    to ``response_len`` (padding is masked, positions count real tokens, so the model sees the same)."""
    left = prompt_len - batch.prompt_len
    right = response_len - batch.response_mask.shape[1]
    if left == 0 and right == 0:
        return batch
    ids = F.pad(batch.input_ids, (left, right), value=pad_id)
    attn = F.pad(batch.attention_mask, (left, right), value=0)
    return Batch(ids, attn, prompt_len, F.pad(batch.response_mask, (0, right), value=0.0))


def pad_tokens(x: Tensor | None, response_len: int, dim: int = -1) -> Tensor | None:
    """Right-pad a per-response-token tensor with zeros along ``dim`` to ``response_len``."""
    if x is None:
        return None
    dim = dim % x.dim()
    right = response_len - x.shape[dim]
    if right == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, right]
    return F.pad(x, pad, value=0.0)


def all_max(value: int, device: torch.device | None = None) -> int:
    """Largest ``value`` over ranks (``device``: where the collective runs; NCCL needs CUDA)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_cat(x: Tensor, dim: int = 0) -> Tensor:
    """Concatenate equal-shaped tensors of every rank along ``dim``, in rank order."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


def all_gather_list(items: list[Any]) -> list[Any]:
    """Concatenate Python lists of every rank, in rank order."""
    if world_size() == 1:
        return items
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]
