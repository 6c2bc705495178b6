"""Two CPU processes (gloo on 127.0.0.1): data-parallel and sharded-parameter gradient modulation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from molma.gradients import MultiObjectiveBackward, gramian
from molma.models import last_layer_parameters
from tests.multiprocess import free_port, needs_gloo

from .dist_worker import build_model, full_batch, losses_of

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[2]

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    logs = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=240)
            logs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-3000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def single_process(mode: str, weighting: str):
    """The same step on ONE process over the full batch (what data parallelism must reproduce)."""
    model = build_model()
    params = list(model.parameters())
    ids, weights = full_batch()
    losses, tok_lp = losses_of(model, ids, weights)
    subset = last_layer_parameters(model) if mode == "subset" else None
    engine = MultiObjectiveBackward(params, weighting, mode=mode, subset_params=subset)
    diag = engine.backward(losses, representation=tok_lp if mode == "fast" else None)
    torch.optim.SGD(params, lr=0.1).step()
    return diag, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def assert_matches_single_process(r0: dict, r1: dict, mode: str, weighting: str,
                                  update_norm: bool = False) -> None:
    """Both ranks took the same, unskipped step, and it is the 1-process full-batch step."""
    assert r0["diag"]["skipped"] is None
    assert r0["diag"]["alpha"] == r1["diag"]["alpha"]
    assert torch.equal(r0["params"], r1["params"])
    ref_diag, ref_params = single_process(mode, weighting)
    torch.testing.assert_close(torch.tensor(r0["diag"]["alpha"]), torch.tensor(ref_diag["alpha"]),
                               rtol=1e-5, atol=1e-8)
    if update_norm:
        assert r0["diag"]["update_norm"] == pytest.approx(ref_diag["update_norm"], rel=1e-5)
    torch.testing.assert_close(r0["params"], ref_params, rtol=1e-5, atol=1e-6)


def test_data_parallel_exact_identical_alpha_and_parameters(ranks: list[dict]) -> None:
    r0, r1 = ranks[0]["data_exact"], ranks[1]["data_exact"]
    assert r0["local_losses"] != r1["local_losses"]  # the ranks really saw different data
    assert_matches_single_process(r0, r1, "exact", "aligned-mtl")


@pytest.mark.parametrize("mode", ["fast", "subset"])
def test_data_parallel_one_backward_modes(ranks: list[dict], mode: str) -> None:
    assert_matches_single_process(ranks[0][f"data_{mode}"], ranks[1][f"data_{mode}"], mode, "gapo")


@pytest.mark.parametrize(("mode", "weighting"), [("exact", "aligned-mtl"), ("fast", "gapo")])
def test_fsdp_step_equals_the_single_process_full_batch_step(ranks: list[dict], mode: str,
                                                              weighting: str) -> None:
    r0, r1 = ranks[0][f"fsdp_{mode}"], ranks[1][f"fsdp_{mode}"]
    # the gradients really were sharded: each rank held about half of every weight matrix
    assert r0["full_shapes"] == r1["full_shapes"]
    split = [(a, b, f) for a, b, f in zip(r0["local_shapes"], r1["local_shapes"], r0["full_shapes"])
             if len(f) == 2]
    assert split and all(a[0] + b[0] == f[0] and a[0] < f[0] for a, b, f in split)
    (held0, whole), (held1, whole1) = r0["bytes"], r1["bytes"]
    assert whole == whole1 and held0 + held1 == whole and held0 < whole
    assert r0["diag"]["distributed"] == "fsdp"
    assert_matches_single_process(r0, r1, mode, weighting, update_norm=True)


def test_fsdp_subset_mode_with_a_replicated_last_layer(ranks: list[dict]) -> None:
    r0, r1 = ranks[0]["fsdp_subset"], ranks[1]["fsdp_subset"]
    assert r0["whole_subset"] and r0["sharded_rest"] > 0
    assert_matches_single_process(r0, r1, "subset", "gapo", update_norm=True)
    # a subset FSDP has sharded is refused with the way out
    assert "shard_model(model, mesh, replicate=subset_params)" in ranks[0]["fsdp_sharded_subset_error"]


def test_sharded_gramian_equals_full_gramian(ranks: list[dict]) -> None:
    model = build_model()
    params = list(model.parameters())
    ids, weights = full_batch()
    losses, _ = losses_of(model, ids, weights)
    per_loss = [torch.autograd.grad(loss, params, retain_graph=True) for loss in losses]
    jacs = [torch.stack(g) for g in zip(*per_loss)]
    full = gramian(jacs)
    for r in range(2):
        torch.testing.assert_close(ranks[r]["sharded_gramian"], full, rtol=1e-6, atol=1e-9)
    a0, a1 = ranks[0]["sharded_exact"]["diag"]["alpha"], ranks[1]["sharded_exact"]["diag"]["alpha"]
    assert a0 == a1
    engine = MultiObjectiveBackward(params, "aligned-mtl", mode="exact")
    ref = engine.backward(losses_of(model, ids, weights)[0])
    torch.testing.assert_close(torch.tensor(a0), torch.tensor(ref["alpha"]), rtol=1e-6, atol=1e-9)
    for r in range(2):  # each rank's shard holds exactly its part of the full update
        for got, p in zip(ranks[r]["sharded_exact"]["grads"], params[r::2]):
            torch.testing.assert_close(got, p.grad, rtol=1e-5, atol=1e-7)


def test_fsdp_non_finite_gradient_on_one_rank_skips_everywhere(ranks: list[dict]) -> None:
    for r in range(2):  # the reduce-scatter spreads the inf to every shard; every rank skips
        assert ranks[r]["fsdp_nan"]["diag"]["skipped"] == "non-finite gradient for objective 0"
        assert all(g is None for g in ranks[r]["fsdp_nan"]["grads"])


def test_non_finite_loss_on_one_rank_skips_everywhere(ranks: list[dict]) -> None:
    assert ranks[1]["nan_skip"]["skipped"] == "non-finite loss for objective 2"
    assert ranks[0]["nan_skip"]["skipped"] == "non-finite loss on another rank"
