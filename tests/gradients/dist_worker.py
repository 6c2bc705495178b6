"""One rank of the 2-process gloo test (run as a script by test_distributed.py).

Usage: python dist_worker.py RANK WORLD PORT OUT_DIR. Writes OUT_DIR/rank{RANK}.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from molma.distributed import FSDP, DataParallel, device_mesh, full_tensor, parameter_bytes
from molma.gradients import MultiObjectiveBackward, gramian
from molma.models import last_layer_parameters
from molma.models.sharding import shard_model

K = 3
FULL_BATCH, SEQ = 4, 10


class ShardedStandIn(DataParallel):
    """Test stand-in for model parallelism: every rank owns a disjoint shard of the parameters and
    sees the same losses, so Gramian terms and squared norms are partial sums and nothing is averaged."""

    name = "sharded"

    def is_shard(self, param: torch.Tensor) -> bool:
        return True

    def sum_over_shards(self, t: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(t)

    def representation_gramian(self, M: torch.Tensor) -> torch.Tensor:
        return M

    def average_replicated_(self, grads, params) -> None:
        pass


def build_model():
    from transformers import LlamaForCausalLM

    from molma.models import tiny_llama_config

    config = tiny_llama_config(vocab_size=128, hidden_size=16, intermediate_size=32, num_layers=2,
                               num_heads=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model


def full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(0, 128, (FULL_BATCH, SEQ), generator=g)
    weights = torch.rand(K, FULL_BATCH, SEQ - 1, generator=g) + 0.05
    return ids, weights


def losses_of(model, ids, weights):
    """Per-objective token-weighted mean losses: equal-size shards average to the full-batch loss."""
    logits = model(input_ids=ids).logits[:, :-1]
    tok_lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return [-(w * tok_lp).mean() for w in weights], tok_lp


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _inf_grad(x: torch.Tensor) -> torch.Tensor:
    """Zero in the forward pass, an infinite gradient for ``x`` in the backward pass."""
    return _InfGradOf.apply(x)


class _InfGradOf(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return grad.new_full(ctx.shape, float("inf"))


def main(rank: int, world: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ids, weights = full_batch()
    mine = slice(rank * FULL_BATCH // world, (rank + 1) * FULL_BATCH // world)
    result: dict = {}

    # 1. data parallel, exact: different data per rank, per-objective gradients averaged
    model = build_model()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    engine = MultiObjectiveBackward(params, "aligned-mtl", mode="exact", layout=DataParallel())
    losses, _ = losses_of(model, ids[mine], weights[:, mine])
    diag = engine.backward(losses)
    opt.step()
    result["data_exact"] = {"diag": diag, "params": flat_params(model),
                            "local_losses": [float(x) for x in losses]}

    # 2. data parallel, fast (representation = per-token log-probs): K x K all-reduce of the Gramian
    model = build_model()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    engine = MultiObjectiveBackward(params, "gapo", mode="fast", layout=DataParallel())
    losses, tok_lp = losses_of(model, ids[mine], weights[:, mine])
    diag = engine.backward(losses, representation=tok_lp)
    opt.step()
    result["data_fast"] = {"diag": diag, "params": flat_params(model)}

    # 2b. data parallel, subset (GAPO's last layer): subset gradients averaged, then one backward
    model = build_model()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    engine = MultiObjectiveBackward(params, "gapo", mode="subset", layout=DataParallel(),
                                    subset_params=last_layer_parameters(model))
    losses, _ = losses_of(model, ids[mine], weights[:, mine])
    diag = engine.backward(losses)
    opt.step()
    result["data_subset"] = {"diag": diag, "params": flat_params(model)}

    # 3. sharded parameters (same data everywhere): partial Gramians all-reduced
    model = build_model()
    params = list(model.parameters())
    shard = params[rank::world]
    losses, _ = losses_of(model, ids, weights)
    jacs = [torch.stack(g) for g in zip(*[torch.autograd.grad(loss, shard, retain_graph=True)
                                         for loss in losses])]
    result["sharded_gramian"] = DataParallel().all_reduce_sum(gramian(jacs))
    engine = MultiObjectiveBackward(shard, "aligned-mtl", mode="exact", layout=ShardedStandIn())
    diag = engine.backward(losses)
    result["sharded_exact"] = {"diag": diag, "grads": [p.grad.clone() for p in shard]}

    # 3b. FSDP2: parameters sharded by fully_shard, different data per rank; K backward() calls
    #     reduce-scatter the per-objective gradients, partial Gramians are all-reduced
    for mode, weighting in (("exact", "aligned-mtl"), ("fast", "gapo")):
        model = shard_model(build_model(), device_mesh(torch.device("cpu")))
        params = list(model.parameters())
        opt = torch.optim.SGD(params, lr=0.1)
        engine = MultiObjectiveBackward(params, weighting, mode=mode, layout=FSDP())
        losses, tok_lp = losses_of(model, ids[mine], weights[:, mine])
        diag = engine.backward(losses, representation=tok_lp if mode == "fast" else None)
        local_shapes = [tuple(p.grad.to_local().shape) for p in params]
        opt.step()
        full = torch.cat([full_tensor(p.detach()).reshape(-1) for p in model.parameters()])
        result[f"fsdp_{mode}"] = {"diag": diag, "params": full, "local_shapes": local_shapes,
                                  "full_shapes": [tuple(p.shape) for p in params],
                                  "bytes": parameter_bytes(model)}

    # 3b'. FSDP with GAPO's last-layer Gramian: that layer stays whole on every rank (averaged by the
    #      engine), the rest is sharded
    model = build_model()
    subset = last_layer_parameters(model)
    shard_model(model, device_mesh(torch.device("cpu")), replicate=subset)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    engine = MultiObjectiveBackward(params, "gapo", mode="subset", layout=FSDP(), subset_params=subset)
    losses, _ = losses_of(model, ids[mine], weights[:, mine])
    diag = engine.backward(losses)
    opt.step()
    result["fsdp_subset"] = {
        "diag": diag, "params": torch.cat([full_tensor(p.detach()).reshape(-1) for p in model.parameters()]),
        "whole_subset": all(not hasattr(p, "device_mesh") for p in subset),
        "sharded_rest": sum(hasattr(p, "device_mesh") for p in params)}
    try:
        MultiObjectiveBackward(params, "gapo", mode="subset", layout=FSDP(),
                               subset_params=last_layer_parameters(shard_model(
                                   build_model(), device_mesh(torch.device("cpu")))))
    except ValueError as err:
        result["fsdp_sharded_subset_error"] = str(err)

    # 3c. FSDP: a non-finite gradient on one rank's data (finite loss) skips the step everywhere
    model = shard_model(build_model(), device_mesh(torch.device("cpu")))
    params = list(model.parameters())
    engine = MultiObjectiveBackward(params, "aligned-mtl", mode="exact", layout=FSDP())
    losses, tok_lp = losses_of(model, ids[mine], weights[:, mine])
    if rank == 1:  # inf gradient, finite loss value
        losses[0] = losses[0] + _inf_grad(tok_lp)
    result["fsdp_nan"] = {"diag": engine.backward(losses),
                          "grads": [p.grad for p in params]}

    # 4. a non-finite loss on one rank makes every rank skip (no deadlock, no divergence)
    model = build_model()
    params = list(model.parameters())
    engine = MultiObjectiveBackward(params, "mgda", mode="exact", layout=DataParallel())
    losses, _ = losses_of(model, ids[mine], weights[:, mine])
    if rank == 1:
        losses[2] = losses[2] * float("inf")
    result["nan_skip"] = engine.backward(losses)

    torch.save(result, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
