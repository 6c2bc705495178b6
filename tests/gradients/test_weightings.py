"""Mathematical properties of the Gramian weightings (random and adversarial Jacobians, K = 2..8)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from torchjd import aggregation as tja

from molma.gradients import (
    GAPO,
    MGDA,
    PGAPO,
    WEIGHTING_NAMES,
    AlignedMTL,
    NNLSDualConeProjector,
    aggregate,
    balance_transformation,
    combine,
    get_weighting,
    gramian,
    min_norm_point,
)
from molma.gradients import weightings as wmod
from molma.gradients.linalg import rank

from .helpers import KINDS, jacobian, min_norm_reference

HAS_NASH = all(importlib.util.find_spec(m) is not None for m in ("cvxpy", "ecos"))
HAS_CVX_CAGRAD = all(importlib.util.find_spec(m) is not None for m in ("cvxpy", "clarabel"))
HAS_QUADPROG = all(importlib.util.find_spec(m) is not None for m in ("qpsolvers", "quadprog"))

SETTINGS = settings(max_examples=30, deadline=None)
dims = st.integers(2, 8)
seeds = st.integers(0, 2**31 - 1)


def weights_and_update(name: str, J: torch.Tensor, importance=None, **kw):
    alpha = get_weighting(name, **kw)(J @ J.T, importance)
    return alpha, alpha @ J


# ----------------------------------------------------------------------------- golden values
def test_golden_values() -> None:
    J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([0.2133, 0.9673, 0.9673], dtype=torch.float64)
    # convention: importance normalised to sum 1 -> w = [1/2, 1/2] whether given as None or [1, 1]
    for importance in (None, [1.0, 1.0], [0.5, 0.5]):
        torch.testing.assert_close(aggregate(J, "aligned-mtl", importance), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(aggregate(J, "molma"), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(aggregate(J, "mgda"), torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    # the update is finite and non-conflicting for MGDA: g_k . d >= ||d||^2
    d = aggregate(J, "mgda")
    assert bool(((J @ d) >= d @ d - 1e-9).all())


# ----------------------------------------------------------------------------- Aligned-MTL
@SETTINGS
@given(K=dims, extra=st.integers(0, 12), seed=seeds)
def test_aligned_mtl_orthogonal_equal_norms(K: int, extra: int, seed: int) -> None:
    """G B has mutually orthogonal columns of norm sqrt(lambda_min) (Algorithm 1, line 13)."""
    J = jacobian("random", K, 2 * K + extra, seed)
    M = J @ J.T
    B, r = balance_transformation(M)
    assert r == K
    GB = J.T @ B  # P x K aligned gradient matrix
    lam_min = torch.linalg.eigvalsh(M).min()
    scale = float(torch.linalg.eigvalsh(M).max())
    torch.testing.assert_close(GB.T @ GB, lam_min * torch.eye(K, dtype=torch.float64),
                               atol=1e-9 * scale, rtol=0)
    alpha = AlignedMTL()(M)
    torch.testing.assert_close(alpha, B @ torch.full((K,), 1.0 / K, dtype=torch.float64))


@SETTINGS
@given(K=dims, seed=seeds, kind=st.sampled_from(["duplicated", "opposite", "zero", "wide"]))
def test_aligned_mtl_rank_deficient(K: int, seed: int, kind: str) -> None:
    """Zero eigenvalues are dropped: the r non-zero singular values of G B all equal sqrt(lambda_r)."""
    J = jacobian(kind, K, 2 * K, seed)
    M = J @ J.T
    B, r = balance_transformation(M)
    assert torch.isfinite(B).all()
    assert r == rank(M) < K
    sv = torch.linalg.svdvals(J.T @ B)
    pos = sv[sv > 1e-6 * sv.max()]
    assert pos.numel() == r
    lam = torch.linalg.eigvalsh(M)
    lam_r = lam[lam > lam.max() * K * 1.2e-7].min()
    torch.testing.assert_close(pos, torch.full_like(pos, float(lam_r.sqrt())), rtol=1e-6, atol=0)


def test_aligned_mtl_zero_gramian() -> None:
    for K in (2, 5):
        alpha = AlignedMTL()(torch.zeros(K, K))
        assert torch.isfinite(alpha).all()


# ----------------------------------------------------------------------------- MGDA
@SETTINGS
@given(K=dims, seed=seeds, kind=st.sampled_from(KINDS))
def test_mgda_min_norm_point(K: int, seed: int, kind: str) -> None:
    """MGDA returns the min-norm point of conv{g_k} (vs SLSQP) and is non-conflicting."""
    J = jacobian(kind, K, 3 * K, seed)
    J = J / J.norm(dim=1).max()
    M = J @ J.T
    alpha = MGDA()(M)
    assert alpha.min() >= 0 and abs(float(alpha.sum()) - 1) < 1e-12
    d = alpha @ J
    ref = torch.from_numpy(min_norm_reference(M.numpy(), seed=seed % 1000)) @ J
    assert float(d @ d) <= float(ref @ ref) + 1e-10
    assert float((d - ref).norm()) < 1e-5
    # optimality / non-conflict: g_k . d >= ||d||^2 >= 0 for every objective
    assert bool(((J @ d) >= float(d @ d) - 1e-10).all())


@SETTINGS
@given(seed=seeds, kind=st.sampled_from(KINDS))
def test_mgda_two_objectives_closed_form(seed: int, kind: str) -> None:
    J = jacobian(kind, 2, 7, seed)
    J = J / J.norm(dim=1).max()
    M = J @ J.T
    den = float(M[0, 0] + M[1, 1] - 2 * M[0, 1])
    gamma = 0.5 if den <= 1e-15 else min(max(float(M[1, 1] - M[0, 1]) / den, 0.0), 1.0)
    d_ref = gamma * J[0] + (1 - gamma) * J[1]
    d = MGDA()(M) @ J
    assert float((d - d_ref).norm()) < 1e-9


def test_mgda_frank_wolfe_is_torchjd_and_no_better_than_exact() -> None:
    for seed in range(5):
        J = jacobian("random", 4, 9, seed)
        fw = MGDA(solver="frank-wolfe")(J @ J.T) @ J
        torch.testing.assert_close(fw, tja.MGDA()(J), rtol=1e-6, atol=1e-9)
        exact = MGDA()(J @ J.T) @ J
        assert float(exact @ exact) <= float(fw @ fw) + 1e-12


# ----------------------------------------------------------------------------- GAPO / P-GAPO
def correlated(K: int, P: int, seed: int, spread: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(P, generator=g, dtype=torch.float64)
    J = base + 0.9 * torch.randn(K, P, generator=g, dtype=torch.float64)
    return J * torch.exp(spread * torch.randn(K, 1, generator=g, dtype=torch.float64))


@SETTINGS
@given(K=dims, seed=seeds)
def test_gapo_p1_equal_progress(K: int, seed: int) -> None:
    """GAPO, p = 1 (eq. 6/7): g_i . d / ||g_i|| equals ||d||^2 on the support, >= it elsewhere."""
    J = correlated(K, 3 * K, seed)
    n = J.norm(dim=1)
    alpha = GAPO(p=1)(J @ J.T)
    d = alpha @ J
    alpha_n = alpha * n  # weights of the normalised gradients, on the simplex
    assert abs(float(alpha_n.sum()) - 1) < 1e-9 and alpha_n.min() >= 0
    progress = (J @ d) / n
    dd = float(d @ d)
    assert bool((progress >= dd - 1e-9).all())
    support = alpha_n > 1e-9
    torch.testing.assert_close(progress[support], torch.full_like(progress[support], dd),
                               rtol=1e-6, atol=1e-10)


def test_gapo_interior_equal_progress_all_objectives() -> None:
    J = torch.tensor([[2.0, 0.2, 0.1], [0.01, 0.1, 0.02], [0.3, -0.4, 5.0]], dtype=torch.float64)
    alpha = GAPO(p=1)(J @ J.T)
    assert bool((alpha > 0).all())  # interior min-norm point
    progress = (J @ (alpha @ J)) / J.norm(dim=1)
    torch.testing.assert_close(progress, progress.mean().expand(3), rtol=1e-9, atol=0)


@SETTINGS
@given(K=dims, seed=seeds, p=st.sampled_from([1, 2]))
def test_gapo_is_mgda_of_rescaled_gradients(K: int, seed: int, p: int) -> None:
    J = correlated(K, 2 * K + 1, seed, spread=1.0)
    JN = J / J.norm(dim=1, keepdim=True) ** p  # eq. 6
    d_ref = torch.from_numpy(min_norm_reference((JN @ JN.T).numpy())) @ JN
    d = GAPO(p=p)(J @ J.T) @ J
    assert float((d - d_ref).norm()) < 1e-5 * float(JN.norm(dim=1).max())


def test_gapo_p1_ignores_gradient_scale() -> None:
    J = correlated(4, 10, 3)
    d = GAPO(p=1)(J @ J.T) @ J
    J2 = J.clone()
    J2[1] *= 1e4
    J2[2] *= 1e-3
    torch.testing.assert_close(GAPO(p=1)(J2 @ J2.T) @ J2, d)


def test_gapo_rejects_bad_p() -> None:
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        GAPO(p=3)


@SETTINGS
@given(K=dims, seed=seeds, k=st.integers(0, 7))
def test_pgapo_one_hot_is_normalised_gradient(K: int, seed: int, k: int) -> None:
    k = k % K
    J = jacobian("random", K, 9, seed)
    pref = torch.zeros(K, dtype=torch.float64)
    pref[k] = 1.0
    d = PGAPO(preference=pref)(J @ J.T) @ J
    torch.testing.assert_close(d, J[k] / J[k].norm())


def test_pgapo_formula_and_per_step_preference() -> None:
    J = jacobian("random", 3, 6, 11)
    lam = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    expected = sum(lam[i] * J[i] / J[i].norm() for i in range(3))  # eq. 8
    torch.testing.assert_close(PGAPO(preference=lam)(J @ J.T) @ J, expected)
    torch.testing.assert_close(PGAPO()(J @ J.T, importance=lam * 10) @ J, expected)


# ----------------------------------------------------------------------------- all methods
def deterministic_methods() -> list[tuple[str, dict]]:
    return [("aligned-mtl", {}), ("mgda", {}), ("gapo", {"p": 1}), ("gapo", {"p": 2}),
            ("pgapo", {}), ("linear", {}), ("imtl-g", {}), ("upgrad", {}), ("cagrad", {"c": 0.4})]


@settings(max_examples=15, deadline=None)
@given(K=dims, seed=seeds)
def test_permutation_equivariance(K: int, seed: int) -> None:
    J = jacobian("random", K, 2 * K + 3, seed)
    w = torch.rand(K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.1
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(seed + 1))
    for name, kw in deterministic_methods():
        a = get_weighting(name, **kw)(J @ J.T, w)
        Jp = J[perm]
        ap = get_weighting(name, **kw)(Jp @ Jp.T, w[perm])
        tol = 1e-5 if name == "cagrad" else 1e-7
        torch.testing.assert_close(ap, a[perm], rtol=tol, atol=tol * float(a.abs().max()),
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("kind", [*KINDS, "allzero"])
@pytest.mark.parametrize("K", [2, 3, 8])
def test_adversarial_inputs_give_finite_updates(kind: str, K: int) -> None:
    J = jacobian(kind, K, 6, seed=K)
    names = [n for n in WEIGHTING_NAMES if n != "nash-mtl" or HAS_NASH]
    for name in names:
        alpha = get_weighting(name)(J @ J.T)
        d = alpha @ J
        assert torch.isfinite(alpha).all() and torch.isfinite(d).all(), (name, kind, alpha)


def test_methods_with_one_objective() -> None:
    J = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    for name in ("aligned-mtl", "mgda", "gapo", "pgapo", "linear", "imtl-g", "upgrad"):
        d = aggregate(J, name)
        assert torch.isfinite(d).all()
        assert float(torch.nn.functional.cosine_similarity(d, J[0], dim=0)) > 0.999999, name


# ----------------------------------------------------------------------------- vs torchjd aggregators
def blocks_of(J: torch.Tensor) -> list[torch.Tensor]:
    """Split a K x P Jacobian into per-'parameter' blocks of various shapes (as autograd gives them)."""
    K, P = J.shape
    a, b = P // 3, P // 3
    return [J[:, :a].reshape(K, a), J[:, a:a + b].reshape(K, 1, b), J[:, a + b:].reshape(K, -1, 1)]


def composed(J: torch.Tensor, weighting, importance=None) -> torch.Tensor:
    blocks = blocks_of(J)
    alpha = weighting(gramian(blocks), importance)
    return torch.cat([g.reshape(-1) for g in combine(blocks, alpha)])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("K", [2, 3, 5])
def test_composition_equals_torchjd_aggregators(K: int, seed: int) -> None:
    J = jacobian("random", K, K + 10, seed)
    w = torch.rand(K, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.2
    wn = w / w.sum()
    cases = [
        (wmod.AlignedMTL(), None, tja.AlignedMTL()),
        (wmod.AlignedMTL(), w, tja.AlignedMTL(pref_vector=wn)),
        (wmod.AlignedMTL(scale_mode="rmse"), None, tja.AlignedMTL(scale_mode="rmse")),
        (wmod.MGDA(solver="frank-wolfe"), None, tja.MGDA()),
        (wmod.IMTLG(), None, tja.IMTLG()),
        (wmod.UPGrad(), None, tja.UPGrad(projector=NNLSDualConeProjector())),
        (wmod.UPGrad(), w, tja.UPGrad(pref_vector=wn, projector=NNLSDualConeProjector())),
        (wmod.LinearScalarization(), None, tja.Mean()),
        (wmod.LinearScalarization(), w, tja.Constant(wn)),
    ]
    for ours, importance, theirs in cases:
        torch.testing.assert_close(composed(J, ours, importance), theirs(J), rtol=1e-6, atol=1e-9,
                                   msg=lambda m, o=ours: f"{o!r}: {m}")
    # PCGrad is randomised: same seed, same permutations
    torch.manual_seed(seed)
    expected = tja.PCGrad()(J)
    torch.testing.assert_close(composed(J, wmod.PCGrad(seed=seed)), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.skipif(not HAS_QUADPROG, reason="quadprog not installed (torchjd's default UPGrad projector)")
def test_upgrad_matches_torchjd_quadprog() -> None:
    for seed in range(3):
        J = jacobian("random", 4, 8, seed)
        torch.testing.assert_close(aggregate(J, "upgrad"), tja.UPGrad()(J), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", ["random", "opposite", "duplicated", "wide"])
def test_nnls_projector_kkt(kind: str) -> None:
    """v solves min v^T G v s.t. v >= u: Gv >= 0, v >= u, (Gv)_i (v_i - u_i) = 0 (normalised G)."""
    J = jacobian(kind, 5, 8, 1)
    M = J @ J.T
    Gn = M / torch.trace(M) + 1e-4 * torch.eye(5, dtype=torch.float64)
    U = torch.eye(5, dtype=torch.float64) / 5
    V = NNLSDualConeProjector()(U, M)
    for u, v in zip(U, V):
        grad = Gn @ v
        assert bool((v >= u - 1e-10).all()) and bool((grad >= -1e-10).all())
        assert float((grad * (v - u)).abs().max()) < 1e-10


@pytest.mark.parametrize("seed", range(3))
def test_cagrad_solves_its_primal(seed: int) -> None:
    """d maximises min_i g_i . d over the ball ||d - g_0|| <= c ||g_0|| (independent SLSQP)."""
    c = 0.5
    J = jacobian("random", 3, 5, seed)
    d = (get_weighting("cagrad", c=c)(J @ J.T) @ J).numpy()
    Jn = J.numpy()
    g0 = Jn.mean(0)
    r = c * np.linalg.norm(g0)
    assert abs(np.linalg.norm(d - g0) - r) < 1e-6 * r
    cons = [{"type": "ineq", "fun": lambda x: r**2 - np.sum((x[:-1] - g0) ** 2)}] + [
        {"type": "ineq", "fun": lambda x, i=i: Jn[i] @ x[:-1] - x[-1]} for i in range(3)]
    res = minimize(lambda x: -x[-1], np.append(g0, min(Jn @ g0)), method="SLSQP", constraints=cons,
                   options={"ftol": 1e-14, "maxiter": 500})
    assert min(Jn @ d) >= -res.fun - 1e-6 * abs(res.fun)


@pytest.mark.skipif(not HAS_CVX_CAGRAD, reason="cvxpy/clarabel not installed")
def test_cagrad_matches_torchjd() -> None:
    for seed in range(3):
        J = jacobian("random", 3, 6, seed)
        torch.testing.assert_close(aggregate(J, get_weighting("cagrad", c=0.5)), tja.CAGrad(c=0.5)(J),
                                   rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- Nash-MTL, registry
def test_nash_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wmod, "_find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install molma\[nash\]"):
        get_weighting("nash-mtl")


@pytest.mark.skipif(not HAS_NASH, reason="Nash-MTL needs the nash extra (cvxpy, ecos)")
def test_nash_matches_torchjd() -> None:
    J = jacobian("random", 3, 7, 0).float()
    ours = aggregate(J, get_weighting("nash-mtl"))
    theirs = tja.NashMTL(n_tasks=3)(J)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)


def test_registry() -> None:
    assert set(WEIGHTING_NAMES) == {"aligned-mtl", "molma", "gapo", "pgapo", "mgda", "linear", "pcgrad",
                                    "cagrad", "imtl-g", "upgrad", "nash-mtl"}
    assert isinstance(get_weighting("molma"), AlignedMTL)
    assert isinstance(get_weighting("Aligned_MTL"), AlignedMTL)
    assert isinstance(get_weighting("P-GAPO"), PGAPO)
    assert get_weighting("gapo", p=2).p == 2
    with pytest.raises(ValueError, match="aligned-mtl"):
        get_weighting("adam")


def test_importance_validation() -> None:
    M = torch.eye(3, dtype=torch.float64)
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [float("nan"), 1.0, 1.0]):
        with pytest.raises(ValueError):
            AlignedMTL()(M, bad)
    with pytest.raises(ValueError, match="non-finite"):
        AlignedMTL()(torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="square"):
        AlignedMTL()(torch.ones(2, 3))


def test_min_norm_point_zero_and_simplex() -> None:
    assert torch.allclose(min_norm_point(torch.zeros(4, 4)), torch.full((4,), 0.25, dtype=torch.float64))
    a = min_norm_point(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))  # opposite: 0 in the hull
    torch.testing.assert_close(a, torch.tensor([0.5, 0.5], dtype=torch.float64))
