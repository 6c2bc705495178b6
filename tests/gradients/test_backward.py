"""MultiObjectiveBackward on a tiny Llama and on toy problems: exactness, modes, guards, diagnostics."""

from __future__ import annotations

import json

import pytest
import torch
from torchjd.aggregation import UPGradWeighting

from molma.distributed import DataParallel
from molma.gradients import (
    MultiObjectiveBackward,
    combine,
    get_weighting,
    gramian,
)
from molma.gradients.solvers import NNLSDualConeProjector
from molma.models import last_layer_parameters

K = 3


@pytest.fixture(scope="module")
def llama():
    from molma.models import tiny_llama

    model, _ = tiny_llama(seed=0)
    return model


def batch(seed: int = 0, n: int = 2, t: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 5000, (n, t), generator=g)
    weights = torch.rand(K, n, t - 1, generator=g) + 0.05
    return ids, weights


def lm_losses(model, ids, weights, inputs_embeds=None):
    """K differently weighted token-level LM losses, and the per-token log-probs, from one forward."""
    out = model(input_ids=ids) if inputs_embeds is None else model(inputs_embeds=inputs_embeds)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return [-(w * tok_lp).sum() / w.sum() for w in weights], tok_lp


def trainable(model) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def separate_jacobians(model, ids, weights, params) -> list[torch.Tensor]:
    """K separate forward+backward passes: per-parameter (K, *shape) blocks of the g_k."""
    per_obj = []
    for k in range(K):
        model.zero_grad(set_to_none=True)
        losses, _ = lm_losses(model, ids, weights)
        losses[k].backward()
        per_obj.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
    model.zero_grad(set_to_none=True)
    return [torch.stack([per_obj[k][i] for k in range(K)]) for i in range(len(params))]


def reference_update(jacs, weighting, clip_norm=None):
    """The update Algorithm 1 defines: Gramian, weights, combination, global-norm clipping."""
    M = gramian(jacs)
    alpha = weighting(M)
    norm = float(alpha @ M @ alpha) ** 0.5
    coef = min(1.0, clip_norm / (norm + 1e-6)) if clip_norm else 1.0
    return alpha, combine(jacs, alpha * coef)


@pytest.fixture(scope="module")
def reference(llama):
    ids, weights = batch()
    params = trainable(llama)
    return ids, weights, params, separate_jacobians(llama, ids, weights, params)


@pytest.mark.parametrize(("name", "vjp"), [("aligned-mtl", "loop"), ("aligned-mtl", "batched"),
                                           ("gapo", "loop"), ("mgda", "batched")])
def test_exact_equals_separate_backward_passes(llama, reference, name: str, vjp: str) -> None:
    ids, weights, params, jacs = reference
    alpha_ref, grads_ref = reference_update(jacs, get_weighting(name), clip_norm=1.0)
    engine = MultiObjectiveBackward(params, name, mode="exact", vjp=vjp, clip_norm=1.0)
    for p in params:  # existing .grad is overwritten, not accumulated
        p.grad = torch.full_like(p, 7.0)
    losses, _ = lm_losses(llama, ids, weights)
    diag = engine.backward(losses)
    assert diag["skipped"] is None
    torch.testing.assert_close(torch.tensor(diag["alpha"], dtype=torch.float64), alpha_ref,
                               rtol=1e-5, atol=1e-7)
    for p, g in zip(params, grads_ref):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-5)
    assert engine.vjp == vjp  # no fallback happened


def test_fast_equals_exact_when_representation_is_the_only_trainable_input(llama) -> None:
    ids, weights = batch(1)
    for p in llama.parameters():
        p.requires_grad_(False)
    try:
        base = llama.get_input_embeddings()(ids).detach()
        alphas, grads = {}, {}
        for mode in ("exact", "fast"):
            embeds = base.clone().requires_grad_(True)
            engine = MultiObjectiveBackward([embeds], "aligned-mtl", mode=mode, clip_norm=None)
            losses, _ = lm_losses(llama, ids, weights, inputs_embeds=embeds)
            diag = engine.backward(losses, representation=embeds if mode == "fast" else None)
            alphas[mode], grads[mode] = torch.tensor(diag["alpha"]), embeds.grad
            assert diag["gramian_source"] == ("parameters" if mode == "exact" else "representation")
        torch.testing.assert_close(alphas["fast"], alphas["exact"], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(grads["fast"], grads["exact"], rtol=1e-5, atol=1e-7)
    finally:
        for p in llama.parameters():
            p.requires_grad_(True)


def test_last_layer_parameters(llama) -> None:
    expected = [p for n, p in llama.named_parameters() if n.startswith("model.layers.1.")]
    assert [id(p) for p in last_layer_parameters(llama)] == [id(p) for p in expected]
    with pytest.raises(ValueError, match="subset_params"):
        last_layer_parameters(torch.nn.Linear(2, 2))


def test_subset_mode_uses_subset_gramian_and_one_backward(llama, reference) -> None:
    ids, weights, params, jacs = reference
    last = last_layer_parameters(llama)
    subset_engine = MultiObjectiveBackward(last, "gapo", mode="exact", clip_norm=None)
    diag_sub = subset_engine.backward(lm_losses(llama, ids, weights)[0])
    engine = MultiObjectiveBackward(params, "gapo", mode="subset", subset_params=last, clip_norm=None)
    diag = engine.backward(lm_losses(llama, ids, weights)[0])
    torch.testing.assert_close(torch.tensor(diag["alpha"]), torch.tensor(diag_sub["alpha"]))
    # the update is sum_k alpha_k g_k over ALL parameters
    alpha = torch.tensor(diag["alpha"], dtype=torch.float64)
    for g, r in zip([p.grad for p in params], combine(jacs, alpha)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_fast_mode_with_token_logprobs(llama) -> None:
    """The per-token log-prob Gramian of L_k = -sum c_kt lp_t / sum c_kt is c_k . c_j / (|c_k| |c_j|)."""
    ids, weights = batch(3)
    engine = MultiObjectiveBackward(trainable(llama), "aligned-mtl", mode="fast")
    losses, tok_lp = lm_losses(llama, ids, weights)
    diag = engine.backward(losses, representation=tok_lp)
    c = weights.reshape(K, -1) / weights.reshape(K, -1).sum(1, keepdim=True)
    M = (c @ c.T).double()
    torch.testing.assert_close(torch.tensor(diag["grad_norms"], dtype=torch.float64),
                               M.diagonal().sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(diag["alpha"], dtype=torch.float64),
                               get_weighting("aligned-mtl")(M), rtol=1e-4, atol=1e-7)
    assert diag["update_norm"] > 0 and all(p.grad is not None for p in trainable(llama))


# ----------------------------------------------------------------------------- toy problems
def toy():
    torch.manual_seed(0)
    x = torch.nn.Parameter(torch.randn(5))
    W = torch.nn.Parameter(torch.randn(3, 5))
    unused = torch.nn.Parameter(torch.randn(2))
    return x, W, unused


def toy_losses(x, W):
    h = W @ x
    return [h[0] ** 2 + x.sum(), (h[1] - 1) ** 2, torch.sin(h).sum()]


@pytest.mark.parametrize("mode", ["exact", "fast", "subset"])
def test_toy_update_matches_hand_computation(mode: str) -> None:
    x, W, unused = toy()
    kwargs = {"subset_params": [W]} if mode == "subset" else {}
    engine = MultiObjectiveBackward([x, W, unused], "upgrad", mode=mode, clip_norm=None, **kwargs)
    h = W @ x
    losses = [h[0] ** 2 + x.sum(), (h[1] - 1) ** 2, torch.sin(h).sum()]
    diag = engine.backward(losses, representation=h if mode == "fast" else None)
    assert diag["skipped"] is None
    # hand computation: per-objective gradients, Gramian source, same weighting
    grads = [torch.autograd.grad(toy_losses(x, W)[k], [x, W]) for k in range(3)]
    if mode == "exact":
        src = [torch.cat([g[0].reshape(-1), g[1].reshape(-1)]) for g in grads]
    elif mode == "subset":
        src = [g[1].reshape(-1) for g in grads]
    else:
        hh = (W @ x).detach().requires_grad_(True)  # x.sum() in L_0 does not depend on h
        fns = (lambda v: v[0] ** 2, lambda v: (v[1] - 1) ** 2, lambda v: torch.sin(v).sum())
        src = [torch.autograd.grad(f(hh), hh)[0] for f in fns]
    S = torch.stack(src).double()
    alpha = UPGradWeighting(projector=NNLSDualConeProjector())(S @ S.T)
    torch.testing.assert_close(torch.tensor(diag["alpha"], dtype=torch.float64), alpha, rtol=1e-6, atol=1e-9)
    expected_x = sum(float(alpha[k]) * grads[k][0] for k in range(3))
    expected_W = sum(float(alpha[k]) * grads[k][1] for k in range(3))
    torch.testing.assert_close(x.grad, expected_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(W.grad, expected_W, rtol=1e-5, atol=1e-6)
    assert torch.equal(unused.grad, torch.zeros(2))  # not reached by any loss: zero gradient


def test_clipping_bounds_the_update_norm() -> None:
    x, W, _ = toy()
    engine = MultiObjectiveBackward([x, W], "linear", clip_norm=0.01)
    diag = engine.backward(toy_losses(x, W))
    total = torch.sqrt(x.grad.pow(2).sum() + W.grad.pow(2).sum())
    assert diag["update_norm"] > 0.01 and diag["clip_coef"] < 1
    assert abs(float(total) - 0.01) < 1e-6
    unclipped = MultiObjectiveBackward([x, W], "linear", clip_norm=None)
    d2 = unclipped.backward(toy_losses(x, W))
    torch.testing.assert_close(torch.sqrt(x.grad.pow(2).sum() + W.grad.pow(2).sum()),
                               torch.tensor(d2["update_norm"], dtype=torch.float32), rtol=1e-5, atol=0)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_non_finite_loss_skips_the_update(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    x, W, _ = toy()
    engine = MultiObjectiveBackward([x, W], "aligned-mtl", mode=mode)
    x.grad = torch.ones_like(x)
    h = W @ x
    losses = [h.sum(), h[0] * float("nan")]
    diag = engine.backward(losses, representation=h)
    assert diag["skipped"] == "non-finite loss for objective 1"
    assert x.grad is None and W.grad is None  # optimizer.step() will leave the parameters alone
    assert engine.skipped_steps == 1 and "skipped" in caplog.text
    json.dumps(diag, allow_nan=False)


@pytest.mark.parametrize("mode", ["exact", "fast", "subset"])
def test_non_finite_gradient_skips_the_update(mode: str) -> None:
    x = torch.nn.Parameter(torch.tensor([0.0, 1.0, 2.0]))
    kwargs = {"subset_params": [x]} if mode == "subset" else {}
    engine = MultiObjectiveBackward([x], "gapo", mode=mode, **kwargs)
    h = x * 1.0
    losses = [h.sum(), torch.sqrt(h[0])]  # finite loss (0), infinite gradient
    diag = engine.backward(losses, representation=h)
    assert diag["skipped"] is not None and "non-finite" in diag["skipped"]
    if mode != "fast":
        assert diag["skipped"] == "non-finite gradient for objective 1"
    assert x.grad is None
    json.dumps(diag, allow_nan=False)


def test_constant_loss_and_diagnostics_are_json() -> None:
    x, W, _ = toy()
    engine = MultiObjectiveBackward([x, W], "aligned-mtl")
    losses = toy_losses(x, W)[:2] + [torch.tensor(3.0)]  # third objective does not depend on params
    diag = engine.backward(losses)
    assert diag["skipped"] is None
    text = json.dumps(diag, allow_nan=False)
    assert json.loads(text)["num_objectives"] == 3
    assert diag["grad_norms"][2] == 0.0 and diag["gramian_rank"] == 2
    assert len(diag["cosines"]) == 3 and diag["cosines"][0][0] == pytest.approx(1.0)
    assert diag["min_cosine"] == pytest.approx(min(diag["cosines"][0][1], diag["cosines"][0][2],
                                                   diag["cosines"][1][2]))
    assert diag["cond_after"] == pytest.approx(1.0)  # Aligned-MTL: equal singular values
    assert diag["cond_before"] >= 1.0
    assert all(torch.isfinite(p.grad).all() for p in (x, W))


def test_importance_changes_the_update() -> None:
    x, W, _ = toy()
    engine = MultiObjectiveBackward([x, W], "pgapo", clip_norm=None, importance=[1, 1, 2])
    assert engine.backward(toy_losses(x, W))["importance"] == [0.25, 0.25, 0.5]
    diag = engine.backward(toy_losses(x, W), importance=[1.0, 0.0, 0.0])
    assert diag["importance"] == [1.0, 0.0, 0.0]
    g0 = torch.autograd.grad(toy_losses(x, W)[0], [x, W])
    n0 = torch.sqrt(sum(g.pow(2).sum() for g in g0))
    torch.testing.assert_close(x.grad, g0[0] / n0)
    torch.testing.assert_close(W.grad, g0[1] / n0)


def test_accepts_weighting_objects() -> None:
    x, W, _ = toy()
    for weighting in (get_weighting("mgda"), UPGradWeighting(projector=NNLSDualConeProjector())):
        diag = MultiObjectiveBackward([x, W], weighting).backward(toy_losses(x, W))
        assert diag["skipped"] is None


def test_argument_errors() -> None:
    x, W, _ = toy()
    with pytest.raises(ValueError, match="representation"):
        MultiObjectiveBackward([x, W], mode="fast").backward(toy_losses(x, W))
    with pytest.raises(ValueError, match="subset_params"):
        MultiObjectiveBackward([x, W], mode="subset")
    with pytest.raises(ValueError, match="mode"):
        MultiObjectiveBackward([x, W], mode="fastest")
    with pytest.raises(ValueError, match="requires_grad"):
        MultiObjectiveBackward([torch.zeros(2)])
    with pytest.raises(RuntimeError, match="init_process_group"):
        MultiObjectiveBackward([x, W], layout=DataParallel()).backward(toy_losses(x, W))
    with pytest.raises(ValueError, match="scalar"):
        MultiObjectiveBackward([x, W]).backward([W @ x])
