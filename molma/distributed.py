"""How the processes of a run share the work: one layout object answers every distributed question.

The trainer (:class:`molma.rl.MultiObjectiveTrainer`) and the gradient engine
(:class:`molma.gradients.MultiObjectiveBackward`) never branch on the world size, the rank or the
kind of sharding; they ask their layout. Three layouts (see ``docs/training.md``, ``docs/gradients.md``):

* :class:`SingleProcess`: one process holds everything; every collective is the identity.
* :class:`DataParallel` (DDP-style): every process holds all parameters and a different slice of the
  batch. Gradients (the K per-objective ones, or a plain one) are averaged across processes exactly as
  DDP would average one gradient, so every process builds the same Gramian, ``alpha`` and step. The
  model is never wrapped in DDP: DDP averages one gradient, and gradient modulation needs K first.
* :class:`FSDP` (FSDP2 ``fully_shard``): parameters are ``DTensor`` shards and every process sees
  different data. Each ``loss.backward()`` makes FSDP reduce-scatter (average) the gradient, so every
  process then holds its shard of the data-averaged gradient; a Gramian over shards is a partial sum
  of ``G^T G``, and one K x K all-reduce (sum) completes it. Parameters left unsharded (GAPO's
  last-layer subset) are averaged as in :class:`DataParallel`.

Launch several processes with ``torchrun --nproc_per_node R -m molma train ...`` or ``accelerate launch
--multi_gpu --num_processes R -m molma train ...`` (both set RANK / WORLD_SIZE / MASTER_ADDR);
:func:`from_env` joins that process group and picks the layout.

This module imports nothing else of molma at import time (only :meth:`FSDP.shard` calls
:func:`molma.models.sharding.shard_model`, which knows where the transformer blocks are).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Elements per all-reduce bucket when averaging gradients (64 MB of float32).
BUCKET_NUMEL = 1 << 24


# ---------------------------------------------------------------------------------------- launching
def init_from_env() -> None:
    """Join the process group a launcher (torchrun, accelerate launch) describes in the environment.

    Does nothing for a single process or when the group already exists (e.g. created by accelerate)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)


def initialized() -> bool:
    """Whether a ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def device_for(setting: str = "auto") -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; otherwise the named device."""
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def rank() -> int:
    """This process's rank in the world (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


def from_env(device: str = "auto", fsdp: bool = False, gather_for_generation: bool = True) -> Layout:
    """The layout of this run: join the launcher's process group (:func:`init_from_env`), then
    :class:`FSDP` when asked for and there are several processes, :class:`DataParallel` with several,
    :class:`SingleProcess` with one. The device is :func:`device_for` ``device``; a CUDA device becomes
    the current one (NCCL collectives and FSDP's mesh use it)."""
    init_from_env()
    where = device_for(device)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    world = dist.get_world_size() if initialized() else 1
    if world == 1:
        if fsdp:
            log.warning("fsdp: true needs several processes (torchrun / accelerate launch); training "
                        "unsharded on this one")
        return SingleProcess(where)
    if fsdp:
        return FSDP(where, gather_for_generation=gather_for_generation)
    return DataParallel(where)


# ---------------------------------------------------------------------------------------- tensors
def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 parameter or gradient)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This process's part of ``t``: the local shard of a ``DTensor``, else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def like(param: Tensor, local_value: Tensor) -> Tensor:
    """``local_value`` (this process's shard) as a tensor laid out like ``param`` (a ``DTensor`` with
    the same mesh, placements and global shape when ``param`` is one)."""
    if not is_dtensor(param):
        return local_value
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local_value, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def full_tensor(t: Tensor) -> Tensor:
    """The whole tensor (a collective for a ``DTensor``: every process must call it, in the same order)."""
    return t.full_tensor() if is_dtensor(t) else t


def placed_like(param: Tensor, value: Tensor) -> Tensor:
    """A whole tensor (e.g. from a checkpoint) on ``param``'s device and dtype; this process's shard
    of it when ``param`` is sharded. Every process holds ``value`` whole, so each slices its shard
    locally (no communication)."""
    value = value.to(param.device, param.dtype)
    if not is_dtensor(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """Bytes of weights this process holds, and of the whole model (equal when not sharded)."""
    held = whole = 0
    for p in model.parameters():
        held += local(p).numel() * p.element_size()
        whole += p.numel() * p.element_size()
    return held, whole


def device_mesh(device: torch.device):
    """A 1-D mesh over every process of the default group, on ``device``'s type (cpu: gloo)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_rows(n: int, world: int, me: int) -> range:
    """Rows of a batch of ``n`` that rank ``me`` of ``world`` owns (contiguous, equal sizes)."""
    if n % world:
        raise ValueError(f"a batch of {n} cannot be split evenly over {world} processes")
    size = n // world
    return range(me * size, (me + 1) * size)


# ---------------------------------------------------------------------------------------- layouts
class Layout:
    """One process holding everything (the base every layout refines; see :class:`SingleProcess`).

    Attributes: ``name`` (recorded in the gradient diagnostics), ``device`` (where this process
    computes and where collectives run: NCCL needs CUDA tensors), ``group`` (the process group),
    ``world`` / ``rank``, ``shards_parameters`` (FSDP), ``reduces_in_backward`` (gradients are
    reduced by ``backward()``'s hooks, which ``autograd.grad`` never runs), ``build_device`` (where
    models are built before :meth:`shard`)."""

    name = "none"
    shards_parameters = False
    reduces_in_backward = False

    def __init__(self, device: torch.device | str | None = None, group: Any = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.group = group
        self.world = 1
        self.rank = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank {self.rank} of {self.world}, {self.device})"

    @property
    def is_main(self) -> bool:
        """Process 0: it writes every file; every process holds the same state."""
        return self.rank == 0

    @property
    def build_device(self) -> torch.device:
        """Where to build models: FSDP builds on the CPU and :meth:`shard` moves each block's shard to
        the device (a GPU never holds more than one whole block)."""
        return self.device

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        """Wait for every process."""

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over processes (a new tensor on ``t``'s device)."""
        return t

    def mean(self, t: Tensor) -> Tensor:
        """Mean of ``t`` over processes."""
        return self.all_reduce_sum(t) / self.world

    def all_max(self, value: int) -> int:
        """Largest ``value`` over processes."""
        return value

    def any_rank(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (keeps skip decisions collective)."""
        return flag

    def gather(self, x: Tensor, dim: int = 0) -> Tensor:
        """Equal-shaped tensors of every process concatenated along ``dim``, in rank order."""
        return x

    def gather_objects(self, items: list[Any]) -> list[Any]:
        """Python lists of every process concatenated, in rank order."""
        return items

    # ------------------------------------------------------------------ the batch
    def rows(self, n: int) -> range:
        """This process's rows of a rollout of ``n`` (contiguous, ``n / world`` of them)."""
        return shard_rows(n, self.world, self.rank)

    def minibatch_share(self, idx: Tensor, response_mask: Tensor) -> tuple[Tensor, float]:
        """This process's rows of the global mini-batch ``idx`` (every ``world``-th) and the factor
        that makes the mean over processes of its token means the global token mean: its token
        count over the global one, times ``world`` (1.0 for one process)."""
        return idx, 1.0

    def generating(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """The context to generate in (FSDP: the whole weights gathered once)."""
        return contextlib.nullcontext(model)

    @property
    def synced_generation(self) -> bool:
        """Whether every forward of generation is a collective, so processes decode until all are done."""
        return False

    # ------------------------------------------------------------------ gradients
    def is_shard(self, param: Tensor) -> bool:
        """Whether this process holds only a shard of ``param``'s gradient (a partial Gramian term)."""
        return False

    def sum_over_shards(self, t: Tensor) -> Tensor:
        """Complete a sum of per-shard terms (a partial Gramian, a squared norm) over processes; every
        process must call it, even one without shards. Identity when nothing is sharded."""
        return t

    def representation_gramian(self, M: Tensor) -> Tensor:
        """The Gramian of a representation's gradients of the global mean loss from this process's
        ``M`` (each process saw its own rows)."""
        return M

    def average_replicated_(self, grads: Sequence[Tensor], params: Sequence[Tensor]) -> None:
        """Average in place over processes the gradients of parameters every process holds whole but
        computed on its own data."""

    def average_gradients_(self, params: Sequence[Tensor]) -> None:
        """Average the plain ``.grad`` of ``params`` over processes, as DDP would (missing ones count
        as zero)."""

    def check_subset(self, params: Sequence[Tensor]) -> None:
        """Refuse Gramian-subset parameters this layout cannot reduce on their own."""

    def clip_grad_norm_(self, params: Sequence[Tensor], max_norm: float) -> float:
        """Clip the gradients of ``params`` to a global norm over processes; returns the norm before."""
        return float(full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm)))

    # ------------------------------------------------------------------ models and state
    def shard(self, modules: Iterable[nn.Module | None], replicate: Iterable[Tensor] = ()) -> None:
        """Shard ``modules`` in place (FSDP only); parameters in ``replicate`` stay whole."""

    def trainable_state(self, module: nn.Module) -> dict[str, Tensor]:
        """The trainable parameters of ``module``, whole, by name (every process must call)."""
        return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}

    def gathered_state(self, module: nn.Module, trainable_only: bool) -> dict[str, Tensor] | None:
        """The whole state dict of a sharded ``module`` on process 0's CPU; ``None`` when the module
        already holds its weights whole (save it as it is)."""
        return None

    def _state_options(self, saving: bool) -> Any:
        return None

    def optimizer_state(self, modules: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The whole optimizer state keyed by parameter name (gathered from the shards under FSDP), so
        a run resumes with any number of processes, sharded or not."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(modules, optimizer, options=self._state_options(saving=True))

    def load_optimizer_state(self, modules: nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict[str, Any]) -> None:
        """Load a state :meth:`optimizer_state` wrote (with any layout)."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(modules, optimizer, state, options=self._state_options(saving=False))

    def place(self, param: Tensor, value: Tensor) -> Tensor:
        """A whole tensor placed like ``param`` (see :func:`placed_like`)."""
        return placed_like(param, value)


class SingleProcess(Layout):
    """One process: every collective is the identity."""


class DataParallel(Layout):
    """Every process holds all parameters and a different slice of the batch (see the module doc)."""

    name = "data"

    def __init__(self, device: torch.device | str | None = None, group: Any = None) -> None:
        if not initialized():
            raise RuntimeError(f"the {self.name!r} layout needs torch.distributed to be initialised "
                               "(torch.distributed.init_process_group) first")
        if device is None:  # NCCL needs CUDA tensors, gloo takes CPU ones
            cuda = dist.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        super().__init__(device, group)
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        work = t.to(self.device, copy=True)
        dist.all_reduce(work, op=dist.ReduceOp.SUM, group=self.group)
        return work.to(t.device)

    def all_max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return int(t.item())

    def any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item() > 0)

    def gather(self, x: Tensor, dim: int = 0) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)

    def gather_objects(self, items: list[Any]) -> list[Any]:
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, items, group=self.group)
        return [x for part in parts for x in part]

    def minibatch_share(self, idx: Tensor, response_mask: Tensor) -> tuple[Tensor, float]:
        n_global = response_mask[idx].sum().clamp(min=1.0)
        mine = idx[self.rank::self.world]
        return mine, float(response_mask[mine].sum().clamp(min=1.0) / n_global) * self.world

    def representation_gramian(self, M: Tensor) -> Tensor:
        # global loss = mean over processes of local losses: its representation gradient is the
        # concatenation of the local ones / R, so M = sum_r M_r / R^2
        return self.all_reduce_sum(M) / (self.world * self.world)

    def average_replicated_(self, grads: Sequence[Tensor], params: Sequence[Tensor]) -> None:
        self._average_([g for g, p in zip(grads, params) if not is_dtensor(p)])

    def average_gradients_(self, params: Sequence[Tensor]) -> None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._average_([p.grad for p in params])

    def _average_(self, tensors: Sequence[Tensor], bucket_numel: int = BUCKET_NUMEL) -> None:
        """Average ``tensors`` in place over processes, packed into flat buckets (as DDP does)."""
        R = self.world
        bucket: list[Tensor] = []
        size = 0

        def flush() -> None:
            if not bucket:
                return
            if len(bucket) == 1:
                dist.all_reduce(bucket[0], op=dist.ReduceOp.SUM, group=self.group)
                bucket[0].div_(R)
            else:
                flat = torch.cat([b.reshape(-1) for b in bucket])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
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


class FSDP(DataParallel):
    """FSDP2: parameters sharded by ``fully_shard`` per transformer block, different data per process
    (see the module doc). ``gather_for_generation``: gather the whole policy once per rollout so that
    decoding does not all-gather every block at every token."""

    name = "fsdp"
    shards_parameters = True
    reduces_in_backward = True

    def __init__(self, device: torch.device | str | None = None, group: Any = None,
                 gather_for_generation: bool = True) -> None:
        super().__init__(device, group)
        self.gather_for_generation = gather_for_generation
        self._mesh = None

    @property
    def mesh(self):
        """A 1-D device mesh over every process of the default group, on the device's type (cpu: gloo)."""
        if self._mesh is None:
            self._mesh = device_mesh(self.device)
        return self._mesh

    @property
    def build_device(self) -> torch.device:
        return torch.device("cpu")

    def generating(self, model: nn.Module) -> contextlib.AbstractContextManager:
        if not self.gather_for_generation:
            return contextlib.nullcontext(model)
        from molma.models.sharding import gathered

        return gathered(model)

    @property
    def synced_generation(self) -> bool:
        return not self.gather_for_generation

    def is_shard(self, param: Tensor) -> bool:
        return is_dtensor(param)

    def sum_over_shards(self, t: Tensor) -> Tensor:
        return self.all_reduce_sum(t)

    def average_gradients_(self, params: Sequence[Tensor]) -> None:
        """FSDP's ``backward()`` already reduce-scattered (averaged) them."""

    def check_subset(self, params: Sequence[Tensor]) -> None:
        if any(is_dtensor(p) for p in params):
            # a sharded subset would need its own reduce-scatter, which only a full backward()
            # through FSDP triggers: the cost "subset" exists to avoid
            raise ValueError("with the FSDP layout the subset parameters must stay unsharded: "
                             "shard_model(model, mesh, replicate=subset_params)")

    def shard(self, modules: Iterable[nn.Module | None], replicate: Iterable[Tensor] = ()) -> None:
        """``fully_shard`` each transformer block of each module, then its root
        (:func:`molma.models.sharding.shard_model`); the parameters in ``replicate`` stay whole."""
        from molma.models.sharding import shard_model

        keep = {id(p): p for p in replicate}
        sizes = []
        for module in modules:
            if module is None:
                continue
            mine = [p for p in module.parameters() if id(p) in keep]
            shard_model(module, self.mesh, replicate=mine)
            sizes.append(parameter_bytes(module))
        log.info("fsdp: %d models sharded over %d processes; this one holds %.0f of %.0f MB of their "
                 "weights", len(sizes), self.world, sum(h for h, _ in sizes) / 2**20,
                 sum(w for _, w in sizes) / 2**20)

    def trainable_state(self, module: nn.Module) -> dict[str, Tensor]:
        state = self.gathered_state(module, trainable_only=True)
        assert state is not None
        return state

    def gathered_state(self, module: nn.Module, trainable_only: bool) -> dict[str, Tensor] | None:
        """Gathered one tensor at a time (every process must call; empty except on process 0). Tied
        weights (embeddings = LM head) are one parameter: only its first name is kept, as
        ``named_parameters()`` and ``save_pretrained`` do for an unsharded model."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only))
        first: dict[int, str] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            if first.setdefault(id(param), name) != name:
                state.pop(name, None)
        return state

    def _state_options(self, saving: bool) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        # saved whole on the CPU; loaded from a whole state that every process holds
        return StateDictOptions(full_state_dict=True, cpu_offload=saving)
