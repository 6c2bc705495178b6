"""End-to-end behaviour of the RL trainer on a tiny model with conflicting rule-based objectives."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from molma.rl import MultiObjectiveTrainer, TrainConfig
from tests.rl import toy


@pytest.fixture(scope="module")
def policy():
    return toy.toy_policy()


def _config(tmp_path, algo: str, **kw) -> TrainConfig:
    base = dict(
        algo=algo, objectives={"long": "rule:length", "clean": "rule:banned_words"},
        help_objective="long", safe_objective="clean", iterations=12, experience_size=64,
        minibatch_size=32, max_new_tokens=16, lr=5e-3, kl_beta=0.01, critic_backbone="frozen",
        whiten_advantages=True, seed=1,
        prompt_mix={"help": 0.5, "safe": 0.5}, out=str(tmp_path / algo), report_to="none",
        progress=False, save_every=0, weight_decay=0.0,
    )
    base.update(kw)
    return TrainConfig(**base)


def _train(policy, tmp_path, algo, **kw):
    model, tok = policy
    trainer = MultiObjectiveTrainer(_config(tmp_path, algo, **kw), policy=copy.deepcopy(model), tokenizer=tok,
                                    objectives=toy.objectives(), prompt_pools=toy.pools())
    summary = trainer.train()
    return trainer, summary


def test_toy_policy_answers_with_words(policy):
    model, tok = policy
    r = toy.mean_rewards(model, tok)
    assert 0.2 < r["long"] < 0.8  # a few words, not the cap
    assert r["clean"] < -0.05  # "bad" appears at the start


def test_molma_raises_both_objectives_so_help_trades_one_for_the_other(policy, tmp_path):
    model, tok = policy
    before = toy.mean_rewards(model, tok)
    molma, _ = _train(policy, tmp_path, "molma")
    so_help, _ = _train(policy, tmp_path, "so-help")
    after_molma = toy.mean_rewards(molma.policy, tok)
    after_help = toy.mean_rewards(so_help.policy, tok)
    assert after_molma["long"] > before["long"] and after_molma["clean"] > before["clean"], (before, after_molma)
    assert after_help["long"] > before["long"] and after_help["clean"] < before["clean"], (before, after_help)


def test_metrics_and_outputs_are_written(policy, tmp_path):
    trainer, summary = _train(policy, tmp_path, "molma", iterations=2, experience_size=16, minibatch_size=8)
    out = tmp_path / "molma"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [1, 2]
    for key in ("reward/raw/long", "reward/raw/clean", "kl", "time/generation", "time/scoring",
                "time/training", "tokens_per_s", "loss/policy/long", "loss/value/clean", "grad/alpha/long"):
        assert key in lines[-1], key
    assert (out / "final" / "config.json").exists() and (out / "run.json").exists()
    assert summary["finished"] and summary["iterations"] == 2


def _assert_trained(trainer, initial, out) -> None:
    """Every update was taken (none skipped) and the policy's parameters moved."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and all(not m.get("skipped_updates") for m in lines), [m.get("skipped_updates") for m in lines]
    moved = [not torch.equal(a, b) for a, b in zip(initial.parameters(), trainer.policy.parameters())]
    assert any(moved)


@pytest.mark.parametrize("algo", ["gapo", "pgapo", "so-safe", "so-weighted", "so-piecewise", "mgda", "upgrad"])
def test_every_algorithm_runs(policy, tmp_path, algo):
    kw = {"importance": [0.3, 0.7]} if algo == "pgapo" else {}
    trainer, summary = _train(policy, tmp_path, algo, iterations=1, experience_size=8, minibatch_size=4, **kw)
    assert summary["finished"]
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    _assert_trained(trainer, policy[0], tmp_path / algo)


def test_fast_mode_and_modulated_critic_run(policy, tmp_path):
    for kw in ({"gradient_mode": "fast"}, {"gradient_mode": "subset"},
               {"modulate_critic": True, "critic_backbone": "trainable"}):
        trainer, summary = _train(policy, tmp_path, "molma", iterations=1, experience_size=8, minibatch_size=4,
                                  **kw)
        assert summary["finished"]
        _assert_trained(trainer, policy[0], tmp_path / "molma")


def test_batched_vector_jacobian_products_give_the_loops_update(policy, tmp_path):
    """gradient_vjp=batched (one vmapped autograd.grad) is a speed option: same gradients, same parameters."""
    params = {}
    for vjp in ("loop", "batched"):
        trainer, summary = _train(policy, tmp_path / vjp, "molma", iterations=2, experience_size=8,
                                  minibatch_size=4, gradient_vjp=vjp)
        assert summary["finished"] and trainer.engine.vjp == vjp  # no silent fallback to the loop
        params[vjp] = [p.detach().clone() for p in trainer.policy_params]
        _assert_trained(trainer, policy[0], tmp_path / vjp / "molma")
    # equal up to summation order (vmap adds in another order; the engine's own test compares the gradients,
    # tests/gradients): after two Adam steps the two runs differ by far less than either moved
    initial = [p for p in policy[0].parameters() if p.requires_grad]
    moved = max((a - p0).abs().max().item() for a, p0 in zip(params["loop"], initial))
    apart = max((a - b).abs().max().item() for a, b in zip(params["loop"], params["batched"]))
    assert apart < 0.05 * moved, (apart, moved)


def test_apa_anchor_is_the_initial_policy_and_lora_reference_is_the_initial_model(policy, tmp_path):
    """APA's anchor log-probs (``logp_ref``) are pi_0's, before and after updates; with LoRA the reference
    (adapters disabled) is exactly the initial model."""
    from molma.models import LoraSettings
    from molma.rl.rollout import sequence_logprobs

    model, tok = policy
    initial = copy.deepcopy(model).eval()
    trainer = MultiObjectiveTrainer(
        _config(tmp_path, "molma", lora=LoraSettings(r=4, alpha=8), experience_size=8, minibatch_size=8,
                precision="fp32"),
        policy=copy.deepcopy(model), tokenizer=tok, objectives=toy.objectives(), prompt_pools=toy.pools())
    for iteration in (1, 2, 3):
        exp, _ = trainer.collect(iteration)
        with torch.no_grad():
            expected, _ = sequence_logprobs(initial, exp.batch)
        assert torch.allclose(exp.logp_ref, expected, atol=1e-5)
        trainer.policy.train()
        trainer.update(exp, iteration)
    lora = [p for n, p in trainer.policy.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora)  # the adapters did train


@pytest.mark.parametrize("optimizer_format", ["by-name", "by-position (molma 0.2)"])
def test_killed_run_resumes_to_identical_parameters(policy, tmp_path, optimizer_format):
    model, tok = policy
    common = dict(iterations=5, experience_size=8, minibatch_size=4, save_every=1, critic_backbone="trainable")

    def make(out):
        cfg = _config(tmp_path, "molma", **common)
        cfg.out = str(tmp_path / out)
        return MultiObjectiveTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok,
                                     objectives=toy.objectives(), prompt_pools=toy.pools())

    full = make("full")
    full.train()
    killed = make("killed")
    killed.train(stop_after=3)
    state_file = tmp_path / "killed" / "checkpoints" / "iter-000003" / "state.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["optimizer"]["state"] and all(isinstance(n, str) for n in state["optimizer"]["state"])  # by name
    if optimizer_format != "by-name":  # a checkpoint written by molma 0.2 still resumes
        state["optimizer"] = killed.optimizer.state_dict()
        torch.save(state, state_file)
        (state_file.parent / "SHA256SUMS").unlink()  # molma 0.2 wrote no checksums
    resumed = make("killed")
    resumed.train(resume=True)
    assert resumed.start_iteration == 4
    for (n, a), (_, b) in zip(full.policy.named_parameters(), resumed.policy.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), n
    for a, b in zip(full.critic.parameters(), resumed.critic.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    its = [json.loads(x)["iteration"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert its == [1, 2, 3, 4, 5]


def test_non_finite_rewards_stop_with_a_clear_error(policy, tmp_path):
    from molma.rewards import RewardFunction

    model, tok = policy
    objs = [toy.objectives()[0], RewardFunction(lambda p, r: [float("nan")] * len(r), "broken")]
    cfg = _config(tmp_path, "molma", iterations=1, experience_size=8, minibatch_size=4)
    trainer = MultiObjectiveTrainer(cfg, policy=copy.deepcopy(model), tokenizer=tok, objectives=objs,
                                    prompt_pools=toy.pools())
    with pytest.raises(FloatingPointError, match="broken"):
        trainer.train()


def test_config_validation_messages():
    with pytest.raises(ValueError, match="needs >= 2 objectives"):
        TrainConfig(algo="molma", objectives={"help": "rule:length"})
    with pytest.raises(ValueError, match="minibatch_size"):
        TrainConfig(experience_size=4, minibatch_size=8)
    with pytest.raises(ValueError, match="prompt_mix proportions must sum to 1"):
        TrainConfig(prompt_mix={"help": 0.5, "safe": 0.4})


def test_rl_switches_dropout_off(tmp_path):
    """Dropout is off in policy (adapters included), reference and critic: two forwards of the same
    tokens in train mode give the same log-probabilities (issue: APA's residual started as dropout noise)."""
    from molma.models import LoraSettings, tiny_llama
    from molma.rl.rollout import GenerationSettings, generate, sequence_logprobs

    model, tok = tiny_llama(seed=0, attention_dropout=0.5)
    model.config.attention_dropout = 0.5
    trainer = MultiObjectiveTrainer(
        _config(tmp_path, "molma", lora=LoraSettings(r=2, alpha=4, dropout=0.3), iterations=1,
                experience_size=4, minibatch_size=4),
        policy=model, tokenizer=tok, objectives=toy.objectives(), prompt_pools=toy.pools())
    batch, _ = generate(trainer.policy, tok, ["hi", "hello"], GenerationSettings(max_new_tokens=4), seed=0)
    trainer.policy.train()
    a, _ = sequence_logprobs(trainer.policy, batch)
    b, _ = sequence_logprobs(trainer.policy, batch)
    assert torch.equal(a, b)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in trainer.policy.modules())


def test_single_objective_path_clips_policy_and_critic_apart(policy, tmp_path):
    """SO baselines clip the policy's gradient on its own, as the multi-objective path does: a huge critic
    gradient must not shrink the policy's step (it did when the two were clipped jointly)."""
    model, tok = policy
    trainer = MultiObjectiveTrainer(
        _config(tmp_path, "so-weighted", experience_size=8, minibatch_size=8, value_coef=1e6, clip_norm=1.0,
                critic_backbone="frozen", precision="fp32"),
        policy=copy.deepcopy(model), tokenizer=tok, objectives=toy.objectives(), prompt_pools=toy.pools())
    norms = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        grads = [p.grad for p in trainer.policy_params if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    exp, _ = trainer.collect(1)
    trainer.policy.train()
    stats = trainer.update(exp, 1)
    assert norms and stats["grad/norm"] > 1e-3
    assert norms[0] == pytest.approx(min(stats["grad/norm"], 1.0), rel=1e-4)


def test_unfinished_responses_and_truncated_prompts_are_counted_and_can_be_penalised(policy, tmp_path):
    """Responses cut at max_new_tokens were scored as finished replies without a word; now their share is
    logged (and optionally penalised), and so is the share of prompts the policy saw left-truncated."""
    model, tok = policy

    def first_iteration(**kw):
        trainer = MultiObjectiveTrainer(
            _config(tmp_path, "molma", experience_size=8, minibatch_size=8, max_new_tokens=2, precision="fp32",
                    **kw),
            policy=copy.deepcopy(model), tokenizer=tok, objectives=toy.objectives(), prompt_pools=toy.pools())
        return trainer.run_iteration(1)

    plain = first_iteration()
    unfinished = plain["responses/unfinished"]
    assert unfinished >= 0.5  # two tokens rarely reach the end of an answer (the tiny model may say it at once)
    assert plain["prompts/truncated"] == 0.0
    penalised = first_iteration(unfinished_penalty=1.0)  # the same draws: the same responses, the cut ones penalised
    assert penalised["responses/unfinished"] == unfinished
    assert penalised["reward/raw/long"] == pytest.approx(plain["reward/raw/long"] - unfinished)
    cut = first_iteration(max_prompt_tokens=8)
    assert cut["prompts/truncated"] == 1.0


def test_judges_score_the_prompt_the_policy_saw(policy, tmp_path):
    """A prompt left-truncated for the policy reaches the objectives truncated the same way (they scored
    the full prompt before)."""
    from molma.data import Prompt
    from molma.rewards import RewardFunction

    model, tok = policy
    seen: list[str] = []

    def record(prompts, responses):
        seen.extend(prompts)
        return [0.0] * len(prompts)

    from molma.data.chat import render_prompt

    long = "Please list some words. " * 6 + "Say some words."
    pools = {"help": [Prompt(long, "help")], "safe": [Prompt("Tell me words.", "safe")]}
    limit = len(tok(render_prompt(tok, "Tell me words."), add_special_tokens=False)["input_ids"]) + 10
    trainer = MultiObjectiveTrainer(
        _config(tmp_path, "molma", experience_size=4, minibatch_size=4, max_prompt_tokens=limit, precision="fp32"),
        policy=copy.deepcopy(model), tokenizer=tok,
        objectives=[RewardFunction(record, "long"), RewardFunction(toy.clean_reward, "clean")],
        prompt_pools=(pools, pools))
    trainer.collect(1)
    cut = [p for p in seen if p != "Tell me words."]
    assert cut and all(long.endswith(p.strip()) and len(p) < len(long) for p in cut)
    assert "Tell me words." in seen  # short prompts are passed unchanged
