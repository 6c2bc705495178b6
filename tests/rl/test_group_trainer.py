"""The critic-free losses (GRPO, RLOO), TRL's multi-reward GRPO and Safe RLHF's PPO-Lagrangian on the trainer,
with the tiny rule-objective toy of ``test_trainer.py`` (``long`` and ``clean`` conflict)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from molma.rewards import RewardFunction
from molma.rl import MultiObjectiveTrainer, TrainConfig
from molma.rl.group_advantages import grpo_advantages, rloo_advantages, trl_multi_reward_advantages
from molma.rl.group_losses import sequence_kl_penalty
from molma.rl.shaping import shape_objective_rewards
from tests.rl import toy
from tests.rl.test_trainer import _assert_trained, _config


@pytest.fixture(scope="module")
def policy():
    return toy.toy_policy()


def _trainer(policy, tmp_path, algo, judges=None, **kw) -> MultiObjectiveTrainer:
    """A trainer of the toy; ``judges``: the objective objects (default the toy's long and clean)."""
    model, tok = policy
    cfg = _config(tmp_path, algo, **kw)
    return MultiObjectiveTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok,
                                 objectives=judges or toy.objectives(), prompt_pools=toy.pools())


def _metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


SMALL = dict(iterations=4, experience_size=32, minibatch_size=16)


def test_molma_grpo_raises_both_objectives_grpo_on_one_raises_it_and_lowers_the_other(policy, tmp_path):
    model, tok = policy
    before = toy.mean_rewards(model, tok)
    molma = _trainer(policy, tmp_path, "molma-grpo", **SMALL)
    molma.train()
    so_help = _trainer(policy, tmp_path, "so-help-grpo", **SMALL)
    so_help.train()
    after_molma = toy.mean_rewards(molma.policy, tok)
    after_help = toy.mean_rewards(so_help.policy, tok)
    assert after_molma["long"] > before["long"] and after_molma["clean"] > before["clean"], (before, after_molma)
    assert after_help["long"] > before["long"] and after_help["clean"] < before["clean"], (before, after_help)
    assert molma.critic is None and so_help.critic is None


def _brief(prompts, responses):
    return [-x for x in toy.long_reward(prompts, responses)]


def test_safe_rlhf_keeps_the_cost_near_its_limit(policy, tmp_path):
    """Reward: length; cost: length too (the negative of the ``brief`` objective), so the constrained optimum
    is a mean cost at the limit. Lambda rises exactly when the iteration's mean cost is above the limit, and
    the cost oscillates around the limit, while GRPO on the reward alone runs far past it."""
    judges = [RewardFunction(toy.long_reward, "long"), RewardFunction(_brief, "brief")]
    common = dict(SMALL, iterations=12, lr=5e-4, objectives={"long": "rule:length", "brief": "rule:length"},
                  safe_objective="brief")
    limit = 0.3
    safe = _trainer(policy, tmp_path, "safe-rlhf-grpo", judges, cost_limit=limit, lambda_lr=1.0, **common)
    safe.train()
    lines = _metrics(tmp_path / "safe-rlhf-grpo")
    costs = [m["lagrange/cost"] for m in lines]
    lambdas = [1.0] + [m["lagrange/lambda"] for m in lines]  # lambda_init 1
    assert costs[0] > limit  # the toy policy starts above the limit
    for cost, lam_before, lam in zip(costs, lambdas, lambdas[1:]):
        assert (lam > lam_before) == (cost > limit), (costs, lambdas)
    late = costs[2:]
    assert abs(sum(late) / len(late) - limit) < 0.08, costs
    assert safe.multiplier.value == pytest.approx(lambdas[-1])

    free = _trainer(policy, tmp_path, "so-help-grpo", judges, help_objective="long", **common)
    free.train()
    free_costs = [m["reward/raw/long"] for m in _metrics(tmp_path / "so-help-grpo")]
    assert sum(free_costs[2:]) / len(late) > limit + 0.2, free_costs


COMBINERS = ["molma", "pcgrad", "gapo", "so-weighted", "so-piecewise", "safe-rlhf"]


@pytest.mark.parametrize("loss", ["apa", "ppo", "grpo", "rloo"])
@pytest.mark.parametrize("algo", COMBINERS)
def test_every_loss_with_every_kind_of_combiner(policy, tmp_path, algo, loss):
    trainer = _trainer(policy, tmp_path, algo, loss=loss, iterations=1, experience_size=8, minibatch_size=4)
    summary = trainer.train()
    assert summary["finished"]
    assert trainer.cfg.policy_loss == loss
    assert (trainer.critic is None) == (loss in ("grpo", "rloo"))
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    _assert_trained(trainer, policy[0], tmp_path / algo)
    last = _metrics(tmp_path / algo)[-1]
    assert any(k.startswith("loss/value/") for k in last) == (loss in ("apa", "ppo"))
    if algo == "safe-rlhf":
        assert {"lagrange/lambda", "lagrange/cost", "lagrange/cost_limit"} <= set(last)


def _weightings() -> list[str]:
    from molma.gradients.weightings import WEIGHTING_NAMES

    return [n for n in WEIGHTING_NAMES if n not in ("aligned-mtl", "molma")]  # molma: above


@pytest.mark.parametrize("method", _weightings())
def test_grpo_with_every_registered_weighting(policy, tmp_path, method):
    """K GRPO losses combined by each gradient method molma registers (``<method>-grpo``)."""
    if method == "nash-mtl":
        pytest.importorskip("cvxpy")
    algo = f"{method}-grpo"
    trainer = _trainer(policy, tmp_path, algo, iterations=1, experience_size=8, minibatch_size=4,
                       **({"importance": [0.3, 0.7]} if method == "pgapo" else {}))
    trainer.train()
    assert trainer.critic is None and trainer.cfg.gradient_method == method
    _assert_trained(trainer, policy[0], tmp_path / algo)


@pytest.mark.parametrize("algo", ["trl-grpo-sum", "trl-grpo-norm", "gapo-grpo", "so-weighted-grpo", "molma-rloo"])
def test_named_presets_run(policy, tmp_path, algo):
    trainer = _trainer(policy, tmp_path, algo, importance=[0.3, 0.7], iterations=1, experience_size=8,
                       minibatch_size=4)
    trainer.train()
    assert trainer.critic is None
    _assert_trained(trainer, policy[0], tmp_path / algo)


def test_critic_free_runs_build_hold_and_save_no_critic(policy, tmp_path):
    grpo = _trainer(policy, tmp_path, "molma-grpo", iterations=1, experience_size=8, minibatch_size=8,
                    save_every=1, critic_backbone="trainable")
    apa = _trainer(policy, tmp_path, "molma", iterations=1, experience_size=8, minibatch_size=8, save_every=1,
                   critic_backbone="trainable")
    assert grpo.critic is None and grpo.critic_params == []
    optimised = [p for group in grpo.optimizer.param_groups for p in group["params"]]
    assert len(optimised) == len(grpo.policy_params) and len(grpo.optimizer.param_groups) == 1

    def held(trainer):  # every parameter the trainer keeps (policy, reference copy, critic)
        modules = [trainer.policy, trainer.reference, trainer.critic]
        return sum(p.numel() for m in modules if m is not None for p in m.parameters())

    assert held(apa) - held(grpo) == sum(p.numel() for p in apa.critic.parameters()) > 0
    grpo.train()
    checkpoint = tmp_path / "molma-grpo" / "checkpoints" / "iter-000001"
    assert (checkpoint / "policy.safetensors").exists() and not (checkpoint / "critic.safetensors").exists()
    assert json.loads((checkpoint / "meta.json").read_text())["critic"] is False
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    assert all(name.startswith("policy.") for name in state["optimizer"]["state"])


def test_group_advantages_are_wired_as_defined(policy, tmp_path):
    """Each prompt's group_size responses are contiguous rows; the per-objective advantages are those of
    molma.rl.group_advantages on the shaped rewards (KL in the loss: rewards untouched; KL in the reward:
    beta * sum_t (log pi_old - log pi_ref) subtracted first); TRL's on the raw scores."""
    grpo = _trainer(policy, tmp_path, "molma-grpo", experience_size=16, minibatch_size=8, group_size=4,
                   precision="fp32")
    exp, _ = grpo.collect(1)
    assert all(len(set(exp.prompts[i:i + 4])) == 1 for i in range(0, 16, 4))
    assert len(set(exp.prompts)) > 1
    expected = grpo_advantages(shape_objective_rewards(exp.scores).T.double(), 4).T.float()
    mask = exp.batch.response_mask
    assert torch.allclose(exp.advantages, expected.unsqueeze(-1) * mask, atol=1e-5)
    assert exp.returns is None

    rloo = _trainer(policy, tmp_path, "molma", loss="rloo", kl_penalty="reward", kl_beta=0.5, experience_size=16,
                    minibatch_size=8, group_size=4, precision="fp32")
    # after one update the policy differs from the reference, so the KL term is not zero
    exp, _ = rloo.collect(1)
    rloo.policy.train()
    rloo.update(exp, 1)
    exp, _ = rloo.collect(2)
    assert exp.kl.abs().sum() > 0
    seq = sequence_kl_penalty(shape_objective_rewards(exp.scores).T.double(), exp.logp_old.double(),
                              exp.logp_ref.double(), exp.batch.response_mask, 0.5)
    expected = rloo_advantages(seq, 4).T.float()
    assert torch.allclose(exp.advantages, expected.unsqueeze(-1) * exp.batch.response_mask, atol=1e-5)

    trl = _trainer(policy, tmp_path, "trl-grpo-norm", importance=[0.3, 0.7], experience_size=16, minibatch_size=8,
                   group_size=4, precision="fp32")
    exp, _ = trl.collect(1)
    expected = trl_multi_reward_advantages(exp.scores.T.double(), 4, [0.3, 0.7], "normalize_then_sum").float()
    assert exp.advantages.shape[0] == 1
    assert torch.allclose(exp.advantages[0], expected.unsqueeze(-1) * exp.batch.response_mask, atol=1e-5)


def test_kl_penalty_in_the_loss_changes_the_update(policy, tmp_path):
    """kl_penalty: loss adds beta * k3 to the loss: with beta > 0 the second iteration's update differs from
    beta = 0 (in the first the policy is the reference, where k3 and its gradient vanish)."""
    runs = {}
    for beta in (0.0, 1.0):
        trainer = _trainer(policy, tmp_path, "molma-grpo", kl_beta=beta, iterations=2, experience_size=8,
                           minibatch_size=8, precision="fp32", out=str(tmp_path / f"beta{beta}"))
        trainer.train()
        runs[beta] = trainer
    assert runs[0.0].cfg.kl_placement == "loss"
    assert any(not torch.equal(a, b) for a, b in zip(runs[0.0].policy.parameters(), runs[1.0].policy.parameters()))


def _resume_matches(policy, tmp_path, algo, **kw) -> tuple[MultiObjectiveTrainer, MultiObjectiveTrainer]:
    common = dict(iterations=5, experience_size=8, minibatch_size=4, save_every=1, **kw)

    def make(out):
        return _trainer(policy, tmp_path, algo, out=str(tmp_path / out), **common)

    full = make(f"{algo}-full")
    full.train()
    make(f"{algo}-killed").train(stop_after=3)
    resumed = make(f"{algo}-killed")
    resumed.train(resume=True)
    assert resumed.start_iteration == 4
    for (n, a), (_, b) in zip(full.policy.named_parameters(), resumed.policy.named_parameters()):
        assert torch.equal(a, b), n
    if full.critic is not None:
        for a, b in zip(full.critic.parameters(), resumed.critic.parameters()):
            assert torch.equal(a, b)
    a, b = _metrics(tmp_path / f"{algo}-full"), _metrics(tmp_path / f"{algo}-killed")
    assert [m["iteration"] for m in b] == [1, 2, 3, 4, 5]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if not k.startswith(("time/", "tokens_per_s"))} == \
               {k: v for k, v in y.items() if not k.startswith(("time/", "tokens_per_s"))}
    return full, resumed


def test_killed_grpo_run_resumes_bit_identically(policy, tmp_path):
    full, resumed = _resume_matches(policy, tmp_path, "molma-grpo")
    assert resumed.critic is None


def test_killed_safe_rlhf_run_resumes_bit_identically_with_its_multiplier(policy, tmp_path):
    full, resumed = _resume_matches(policy, tmp_path, "safe-rlhf", critic_backbone="trainable", lambda_lr=0.5)
    meta = json.loads((tmp_path / "safe-rlhf-killed" / "checkpoints" / "iter-000005" / "meta.json").read_text())
    assert meta["lagrange"]["steps"] == 5
    assert meta["lagrange"]["lambda"] == resumed.multiplier.value == full.multiplier.value != 1.0
    assert resumed.multiplier.steps == full.multiplier.steps == 5


def test_config_validation_of_losses_groups_and_algorithms():
    rules = {"help": "rule:length", "safe": "rule:banned_words"}
    with pytest.raises(ValueError, match=r"experience_size \(10\) must be a multiple of group_size \(4\)"):
        TrainConfig(algo="molma-grpo", objectives=rules, experience_size=10, minibatch_size=2)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        TrainConfig(algo="molma", loss="grpo", group_size=1, objectives=rules)
    with pytest.raises(ValueError, match="fixes the loss to grpo"):
        TrainConfig(algo="molma-grpo", loss="apa", objectives=rules)
    with pytest.raises(ValueError, match="kl_penalty=loss"):
        TrainConfig(algo="molma", kl_penalty="loss", objectives=rules)
    with pytest.raises(ValueError, match="'trl-grpo-sum' fixes the loss to grpo"):
        TrainConfig(algo="trl-grpo-sum", loss="rloo", objectives=rules)
    with pytest.raises(ValueError, match="TRL's GRPO adds the KL to the loss"):
        TrainConfig(algo="trl-grpo-sum", kl_penalty="reward", objectives=rules)
    with pytest.raises(ValueError, match="no critic"):
        TrainConfig(algo="molma-grpo", modulate_critic=True, objectives=rules)
    with pytest.raises(ValueError, match="cost_objective 'harm'"):
        TrainConfig(algo="safe-rlhf", cost_objective="harm", objectives=rules)
    cfg = TrainConfig(algo="gapo-grpo", objectives=rules)
    assert (cfg.gradient_method, cfg.policy_loss, cfg.group_samples, cfg.kl_placement, cfg.beta) == \
        ("gapo", "grpo", 4, "loss", 0.04)
    assert TrainConfig(algo="molma", loss="rloo", objectives=rules).kl_placement == "reward"
    assert TrainConfig(algo="safe-rlhf", objectives=rules).policy_loss == "ppo"
    assert TrainConfig(algo="trl-grpo-sum", objectives={"help": "rule:length"}).policy_loss == "grpo"
    # the apa / ppo defaults are unchanged: one response per prompt, KL in the reward
    cfg = TrainConfig(objectives=rules)
    assert (cfg.group_samples, cfg.kl_placement, cfg.beta, cfg.needs_critic) == (1, "reward", 0.01, True)


def test_preflight_accepts_loss_suffixes_and_names_unknown_algorithms():
    from molma.cli.train import preflight
    from molma.config import ConfigError, load_config

    rules = {"help": "rule:length", "safe": "rule:banned_words"}
    for algo in ("molma-grpo", "mgda-rloo", "trl-grpo-norm", "safe-rlhf", "so-weighted-grpo"):
        preflight(TrainConfig(algo=algo, objectives=rules, report_to="none"))
    with pytest.raises(ConfigError, match="unknown algorithm 'nope-grpo'"):
        preflight(TrainConfig(algo="nope-grpo", objectives=rules, report_to="none"))
    with pytest.raises(ConfigError, match=r"command line: .*experience_size .*group_size"):
        load_config(TrainConfig, overrides={"algo": "molma-grpo", "experience_size": 6, "minibatch_size": 2})


@pytest.mark.slow
def test_grpo_benchmark_runs_on_the_tiny_model(tmp_path):
    """``benchmarks/grpo.py --tiny``: both variants train and the JSON has the ratios (not a measurement)."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    out = tmp_path / "grpo.json"
    proc = subprocess.run([sys.executable, "benchmarks/grpo.py", "--tiny", "--out", str(out)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["results"]["molma-grpo"]["critic"] is False and result["results"]["molma-apa"]["critic"] is True
    assert result["ratio_seconds_per_iteration_grpo_to_apa"] > 0


@pytest.mark.slow
def test_optimisation_benchmark_runs_on_the_tiny_model(tmp_path):
    """``benchmarks/optimisation.py --tiny``: one run per epochs setting, the trend and the held-out comparison
    recorded (not a measurement); MOLMA optimises both objectives, each judged on its own pool's prompts."""
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    out = tmp_path / "optimisation.json"
    proc = subprocess.run([sys.executable, "benchmarks/optimisation.py", "--tiny", "--algo", "molma", "--epochs",
                           "1", "2", "--out", str(out)], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"epochs1", "epochs2"} and results["epochs2"]["gradient_steps"] == 6
    first = results["epochs1"]
    assert first["optimised"] == ["help", "safe"]
    assert first["heldout_pools"] == {"help": ["help"], "safe": ["safe"]}
    for name in ("help", "safe"):
        comparison = first["heldout_vs_initial"][name]
        assert comparison["n"] == first["heldout_prompts"][name] == 8
        assert comparison["n_win"] + comparison["n_tie"] + comparison["n_loss"] == 8
        assert set(first["train_reward_trend"][name]) >= {"slope_per_iteration", "slope_ci_low", "slope_ci_high"}
    assert len(first["train_rewards"]["help"]) == len(first["kl"]) == 3
