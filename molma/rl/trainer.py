"""Multi-objective RL fine-tuning of a causal LM (MOLMA section 3.3, Algorithm 1) and the
single-objective baselines (section 4.3) on the same loop.

One iteration, top to bottom (see :meth:`MultiObjectiveTrainer.run_iteration`):
  1. rollout   sample an experience memory of prompts (pools mixed e.g. 60/40), generate responses
  2. score     every objective scores every response: r in R^{K x B}
  3. shape     WHITEN(LOGIT(r)) per objective (eq. 3.4), - beta * KL per token (eq. 3.3);
               SO baselines scalarise here instead (eq. 4.1 / 4.2)
  4. critic    values from K heads, GAE per objective; or, for the critic-free losses (grpo / rloo: no
               critic is built), per-objective advantages from each prompt's group of group_size
               responses (molma.rl.group_advantages)
  5. update    per mini-batch: K losses APA_k (eq. 3.5), PPO_k or GRPO_k from ONE policy forward, value
               losses (eq. 3.6) when there is a critic; K gradients combined by molma.gradients
               (Aligned-MTL for MOLMA, GAPO / P-GAPO, any registered weighting); AdamW step

The loss (apa | ppo | grpo | rloo) and the combiner (a gradient method, a scalarisation, TRL's
aggregations, Safe RLHF's Lagrangian) are chosen apart: steps 3-4 give advantages [K, B, T] (K = 1 after
a scalarisation), step 5 turns them into K losses with the configured loss and combines them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from molma import distributed
from molma.atomic import atomic_folder, write_text_atomic
from molma.config import to_dict
from molma.data.chat import render_prompt
from molma.models.attention import training_attention
from molma.models.blocks import last_layer_parameters
from molma.models.precision import autocast, resolve_precision
from molma.models.sharding import is_peft
from molma.rl.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    set_rng_state,
)
from molma.rl.config import TrainConfig
from molma.rl.critic import Critic
from molma.rl.gae import gae, masked_mean, masked_whiten
from molma.rl.group_advantages import grpo_advantages, rloo_advantages, trl_multi_reward_advantages
from molma.rl.group_losses import group_policy_loss, sequence_kl_penalty
from molma.rl.lagrangian import LagrangeMultiplier, lagrangian_advantages
from molma.rl.losses import apa_loss, ppo_loss, value_loss
from molma.rl.prompts import sample_batch, train_heldout_pools
from molma.rl.rollout import (
    Batch,
    GenerationSettings,
    finished_responses,
    gather_rollout,
    generate,
    seen_prompt,
    sequence_logprobs,
)
from molma.rl.shaping import scalarize, shape_objective_rewards, token_rewards

log = logging.getLogger(__name__)

#: Each iteration's random streams are seeded ``seed * multiplier + iteration``, a different prime per
#: stream, so that the streams of one run, and of runs with nearby seeds, do not share seeds.
PROMPT_SEED_MULTIPLIER = 1_000_003  # which prompts the experience holds (rl.prompts.sample_batch)
SAMPLING_SEED_MULTIPLIER = 7_919  # the rollout's per-row random streams (rl.sampling)
MINIBATCH_SEED_MULTIPLIER = 104_729  # the order of the rows in the update's mini-batches


def iteration_seed(seed: int, multiplier: int, iteration: int) -> int:
    """The seed of one random stream in one iteration (see ``*_SEED_MULTIPLIER``)."""
    return seed * multiplier + iteration


class TrainingDivergedError(RuntimeError):
    """Too many consecutive updates had to be skipped because of non-finite values."""


@dataclass
class Experience:
    prompts: list[str]
    tags: list[str]
    responses: list[str]
    batch: Batch
    scores: Tensor  # [K, B] raw objective scores
    logp_old: Tensor  # [B, T] rollout policy
    logp_ref: Tensor  # [B, T] frozen initial policy pi_0
    ref_hidden: Tensor | None  # [B, T, H] for a frozen-backbone critic
    advantages: Tensor  # [Kp, B, T]: one per policy loss (K, or 1 after a scalarisation)
    returns: Tensor | None  # [Kv, B, T]: one per value head; None without a critic (grpo / rloo)
    kl: Tensor  # [B, T]
    rollout_counts: Tensor  # [unfinished responses, left-truncated prompts, rows] over all processes
    stats: dict[str, float] = field(default_factory=dict)  # per-iteration extras (safe-rlhf: lambda, cost)


class MultiObjectiveTrainer:
    """Trainer for MOLMA, GAPO / P-GAPO, any gradient method, and the SO baselines.

    >>> trainer = MultiObjectiveTrainer(TrainConfig(algo="molma", iterations=20))  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, *, policy=None, tokenizer=None, objectives=None,
                 prompt_pools: tuple[dict, dict] | None = None,
                 layout: distributed.Layout | None = None) -> None:
        self.cfg = config
        self.out = Path(config.out)
        # under torchrun / accelerate launch: join the process group; one process, data parallel or FSDP
        self.layout = layout or distributed.from_env(config.device, config.fsdp, config.fsdp_gather_for_generation)
        self.world, self.rank = self.layout.world, self.layout.rank
        for name in ("experience_size", "minibatch_size"):
            if getattr(config, name) % self.world:
                raise ValueError(f"{name} ({getattr(config, name)}) must be divisible by the number of "
                                 f"processes ({self.world})")
        self.device = self.layout.device
        self.precision = resolve_precision(config.precision, self.device)
        log.info("precision: %s (config: %s)", self.precision, config.precision)
        build_device = self.layout.build_device
        torch.manual_seed(config.seed)
        if policy is None:
            from molma.models import load_model

            policy, tokenizer = load_model(config.model, device=build_device)
        policy.to(build_device)
        if tokenizer is None:
            raise ValueError("a tokenizer is needed with a custom policy")
        self.tokenizer = tokenizer
        if config.lora is not None and not is_peft(policy):
            from molma.models import apply_lora

            policy = apply_lora(policy, config.lora)
        # no dropout anywhere in RL (policy, LoRA adapters, reference, critic): rollout, reference and
        # update forwards must agree on the log-probabilities of the same tokens
        from molma.models import disable_dropout

        disable_dropout(policy)
        self.policy = policy
        # pi_0: with LoRA the base model with adapters disabled (no copy); otherwise a frozen copy
        if is_peft(policy):
            self.reference = None
            base_lm = policy.get_base_model()
        else:
            self.reference = copy.deepcopy(policy).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
            base_lm = self.reference
        # objectives
        if objectives is None:
            from molma.rewards import load_objective

            objectives = [load_objective(spec, name, device=str(self.device), precision=self.precision)
                          for name, spec in config.objectives.items()]
        self.objectives = list(objectives)
        self.names = [o.name for o in self.objectives]
        if config.multi_objective and len(self.objectives) < 2:
            raise ValueError(f"{config.algo} needs >= 2 objectives")
        # safe-rlhf: a reward and a cost stream (two value heads), combined by the Lagrange multiplier
        self.multiplier: LagrangeMultiplier | None = None
        if config.scalarization == "lagrangian":
            cost = config.cost_objective or config.safe_objective
            for name in (config.help_objective, cost):
                if name not in self.names:
                    raise ValueError(f"{config.algo}: objective {name!r} not among {self.names}")
            self.multiplier = LagrangeMultiplier(config.cost_limit, config.lambda_lr, config.lambda_init,
                                                 config.lambda_max)
            self.stream_names = [config.help_objective, f"cost:{cost}"]
        else:
            self.stream_names = self.names if config.multi_objective else [config.algo]
        self.n_reward = len(self.stream_names)
        # prompts
        self.train_pools, self.heldout_pools = prompt_pools or train_heldout_pools(
            config.prompts, config.heldout_fraction, seed=config.seed, first_turn=config.first_turn)
        # critic: K value heads (one for SO baselines), initialised from the reference; none at all for the
        # critic-free losses (grpo / rloo): not built, run, optimised or checkpointed
        self.critic: Critic | None = None
        if config.needs_critic:
            self.critic = Critic.from_reference(base_lm, self.n_reward, config.critic_backbone,
                                                config.lora).to(build_device)
        # FSDP: every process keeps 1/R of each weight (other layouts: nothing to do); GAPO's
        # last-layer Gramian ("subset") needs that layer's trainable weights whole
        subset = config.multi_objective and config.gradient_mode == "subset"
        self.layout.shard((self.policy, self.reference, self.critic),
                          replicate=last_layer_parameters(self.policy) if subset else ())
        self.policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.critic_params = self.critic.trainable_parameters() if self.critic is not None else []
        groups = [{"params": self.policy_params, "lr": config.lr}]
        if self.critic is not None:
            groups.append({"params": self.critic_params, "lr": config.critic_lr or config.lr})
        self.optimizer = torch.optim.AdamW(groups, betas=tuple(config.adam_betas), eps=config.adam_eps,
                                           weight_decay=config.weight_decay)
        self.engine = self._make_engine() if config.multi_objective else None
        self.gen = GenerationSettings(config.max_new_tokens, config.temperature, config.top_p, config.top_k,
                                      True, config.max_prompt_tokens)
        self.start_iteration = 1
        self.bad_updates = 0
        self._writer = None

    # ------------------------------------------------------------------ set-up helpers
    def _make_engine(self):
        from molma.gradients import MultiObjectiveBackward

        cfg = self.cfg
        params = self.policy_params + (self.critic_params if cfg.modulate_critic else [])
        kwargs: dict[str, Any] = {}
        if cfg.gradient_method == "gapo":
            kwargs["p"] = cfg.gapo_p
        if cfg.gradient_mode == "subset":
            kwargs["subset_params"] = last_layer_parameters(self.policy)
        return MultiObjectiveBackward(params, cfg.gradient_method, mode=cfg.gradient_mode, vjp=cfg.gradient_vjp,
                                      clip_norm=cfg.clip_norm, layout=self.layout, **kwargs)

    @property
    def importance(self) -> Tensor | None:
        if self.cfg.importance is None:
            return None
        w = torch.tensor(self.cfg.importance, dtype=torch.float32)
        return w / w.sum()

    @property
    def _by_length(self) -> bool:
        """Forwards after the shared prompt prefix, by groups of similar prompt length (molma.rl.rollout
        .sequence_logprobs, the rollout's prefill), except for sharded models: every process must run the same
        forwards, and an FSDP2 block cannot run outside the root module's forward."""
        return not self.layout.shards_parameters

    def _reference_logprobs(self, batch: Batch, hidden: bool) -> tuple[Tensor, Tensor | None]:
        # no gradient flows here (collect runs under no_grad): the inference context prepacks the frozen weights
        # (same numbers; SmolLM2's 16 x 70-token reference forward 1.02 vs 1.17 s, measured)
        if self.reference is not None:
            with autocast(self.reference, self.precision, inference=True):
                return sequence_logprobs(self.reference, batch, return_hidden=hidden, by_length=self._by_length)
        with self.policy.disable_adapter(), autocast(self.policy, self.precision, inference=True):
            return sequence_logprobs(self.policy, batch, return_hidden=hidden, by_length=self._by_length)

    # ------------------------------------------------------------------ one iteration
    @torch.no_grad()
    def collect(self, iteration: int) -> tuple[Experience, dict[str, float]]:
        """Steps 1-4: rollout, score, shape, GAE. With R processes each rolls out its B / R rows and the
        rollout is gathered (the layout, molma.distributed), so every process shapes the same global batch."""
        cfg = self.cfg
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        group = cfg.group_samples  # each prompt group_size times, its responses next to each other
        prompts = sample_batch(self.train_pools, cfg.prompt_mix, cfg.experience_size // group,
                               seed=iteration_seed(cfg.seed, PROMPT_SEED_MULTIPLIER, iteration))
        prompts = [p for p in prompts for _ in range(group)]
        rows = list(self.layout.rows(len(prompts)))
        texts = [render_prompt(self.tokenizer, prompts[i].text) for i in rows]
        with self.layout.generating(self.policy), autocast(self.policy, self.precision, sampling=True):
            batch, logp_old = generate(self.policy, self.tokenizer, texts, self.gen,
                                       seed=iteration_seed(cfg.seed, SAMPLING_SEED_MULTIPLIER, iteration), rows=rows,
                                       synced=self.layout.synced_generation, by_length=self._by_length)
        responses = self.tokenizer.batch_decode(
            batch.response_ids.masked_fill(batch.response_mask == 0, self.tokenizer.pad_token_id),
            skip_special_tokens=True)
        times["generation"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        # the judges read what the policy saw: a prompt left-truncated for the policy is truncated for them too
        n_rendered = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        shard_prompts = [seen_prompt(self.tokenizer, prompts[i].text, n, cfg.max_prompt_tokens)
                         for i, n in zip(rows, n_rendered)]
        scores = torch.stack([obj.score(shard_prompts, responses).float().cpu() for obj in self.objectives])
        if not torch.isfinite(scores).all():
            bad = (~torch.isfinite(scores)).nonzero()[0].tolist()
            raise FloatingPointError(f"objective {self.names[bad[0]]!r} gave a non-finite score for "
                                     f"response {bad[1]}: {responses[bad[1]]!r}")
        # responses cut at max_new_tokens are not finished replies: counted, and optionally penalised
        finished = finished_responses(batch, self.tokenizer, self.policy).cpu()
        if cfg.unfinished_penalty:
            scores[:, ~finished] -= cfg.unfinished_penalty
        scores = scores.to(self.device)
        times["scoring"] = time.perf_counter() - t1
        # [unfinished responses, left-truncated prompts, rows], over every process
        counts = torch.tensor([float((~finished).sum()), float(sum(n > cfg.max_prompt_tokens for n in n_rendered)),
                               float(len(texts))], device=self.device)
        counts = self.layout.all_reduce_sum(counts)

        t2 = time.perf_counter()
        frozen_critic = self.critic is not None and self.critic.frozen
        logp_ref, ref_hidden = self._reference_logprobs(batch, hidden=frozen_critic)
        values_old = None
        if self.critic is not None:
            with autocast(self.critic, self.precision):
                values_old = self.critic(batch, ref_hidden, by_length=self._by_length)
        batch, logp_old, logp_ref, ref_hidden, values_old, scores, responses = gather_rollout(
            self.layout, self.tokenizer.pad_token_id, batch, logp_old, logp_ref, ref_hidden, values_old, scores,
            responses)
        prompt_texts = [p.text for p in prompts]
        mask = batch.response_mask
        kl = (logp_old - logp_ref) * mask
        stats: dict[str, float] = {}
        advantages, returns = self._advantages(scores, logp_old, logp_ref, kl, mask, values_old, stats)
        times["reference"] = time.perf_counter() - t2
        exp = Experience(prompt_texts, [p.tag for p in prompts], responses, batch, scores, logp_old,
                         logp_ref, ref_hidden, advantages, returns, kl, counts, stats)
        return exp, times

    def _sequence_rewards(self, scores: Tensor, stats: dict[str, float]) -> tuple[Tensor, list[bool]]:
        """Shaped sequence rewards [Kr, B] of the reward streams (step 3), and which streams carry the KL
        penalty when it is in the reward. MO: WHITEN(LOGIT(r_k)) per objective; SO: the scalarisation;
        safe-rlhf: (reward, - cost), the KL on the reward only (as in Dai et al. 2023), and the multiplier's
        dual-ascent step on this iteration's mean raw cost (before the update, as safe-rlhf does)."""
        cfg = self.cfg
        if cfg.multi_objective:
            return shape_objective_rewards(scores, cfg.logit_eps), [True] * len(self.names)
        if self.multiplier is not None:
            reward = shape_objective_rewards(scores[self.names.index(cfg.help_objective)].unsqueeze(0), cfg.logit_eps)
            if cfg.cost_objective is not None:  # a cost model: higher = less safe
                raw_cost = scores[self.names.index(cfg.cost_objective)]
                safety = -shape_objective_rewards(raw_cost.unsqueeze(0), cfg.logit_eps)
            else:  # the negative of the safety reward model's score
                raw_cost = -scores[self.names.index(cfg.safe_objective)]
                safety = shape_objective_rewards(-raw_cost.unsqueeze(0), cfg.logit_eps)
            self.multiplier.update(raw_cost.double().cpu())
            stats["lagrange/lambda"] = self.multiplier.value  # what this iteration's advantages use
            stats["lagrange/cost"] = raw_cost.mean().item()
            stats["lagrange/cost_limit"] = cfg.cost_limit
            return torch.cat([reward, safety]), [True, False]
        seq = scalarize(scores, self.names, cfg.scalarization, help_name=cfg.help_objective,
                        safe_name=cfg.safe_objective, weights=cfg.importance,
                        piecewise_delta=cfg.piecewise_delta, eps=cfg.logit_eps).unsqueeze(0)
        return seq, [True]

    def _advantages(self, scores: Tensor, logp_old: Tensor, logp_ref: Tensor, kl: Tensor, mask: Tensor,
                    values_old: Tensor | None, stats: dict[str, float]) -> tuple[Tensor, Tensor | None]:
        """Advantages [Kp, B, T] for the policy losses and returns [Kv, B, T] for the value heads (None
        without a critic). apa / ppo: GAE on per-token rewards (eq. 3.3); grpo / rloo: per-objective group
        advantages of the sequence rewards, broadcast over the response tokens; trl-grpo-*: TRL's
        scalarised advantage of the raw scores; safe-rlhf: (A_R - lambda A_C) / (1 + lambda)."""
        cfg = self.cfg
        group = cfg.group_samples
        if cfg.scalarization is not None and cfg.scalarization.startswith("trl:"):
            # TRL combines the raw reward-function outputs, weighted by reward_weights (= importance)
            adv = trl_multi_reward_advantages(scores.T.double(), group, cfg.importance,
                                              cfg.scalarization.split(":", 1)[1]).to(logp_old.dtype)
            return adv.view(1, -1, 1) * mask, None
        seq_reward, kl_streams = self._sequence_rewards(scores, stats)
        if self.critic is None:  # grpo / rloo
            seq = seq_reward.T.double()  # [B, Kr], each prompt's group contiguous
            if cfg.kl_placement == "reward":
                penalised = sequence_kl_penalty(seq, logp_old.double(), logp_ref.double(), mask, cfg.beta)
                keep = torch.tensor(kl_streams, device=seq.device)
                seq = torch.where(keep, penalised, seq)
            adv_fn = grpo_advantages if cfg.policy_loss == "grpo" else rloo_advantages
            adv = adv_fn(seq, group).T.to(logp_old.dtype)  # [Kr, B]
            advantages, returns = adv.unsqueeze(-1) * mask, None
        else:
            rewards = token_rewards(seq_reward, kl, mask, cfg.beta)
            for k, penalised in enumerate(kl_streams):
                if not penalised:
                    rewards[k] = token_rewards(seq_reward[k], kl, mask, 0.0)
            advantages, returns = gae(rewards, values_old, mask, cfg.gamma, cfg.gae_lambda)
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)
        if self.multiplier is not None:  # the safety stream is - cost: A_C = - A_safety
            advantages = lagrangian_advantages(advantages[:1], -advantages[1:], stats["lagrange/lambda"])
        return advantages, returns

    def _minibatch_losses(self, exp: Experience, idx: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """K policy losses and K value losses (None without a critic) from one policy forward and one
        critic forward.

        With R processes, ``idx`` is the global mini-batch and this process takes every R-th row; its
        token sums are divided by the global token count times R, so that the mean over processes (what
        the gradient engine averages) is exactly the 1-process token mean."""
        cfg = self.cfg
        idx, scale = self.layout.minibatch_share(idx, exp.batch.response_mask)
        mb = exp.batch.select(idx)
        # losses below are computed in float32; eager attention on CPU (faster backward: molma.models.attention)
        with autocast(self.policy, self.precision), training_attention(self.policy):
            logp, _ = sequence_logprobs(self.policy, mb, by_length=self._by_length)
        adv = exp.advantages[:, idx]
        if cfg.policy_loss == "apa":
            policy_losses = apa_loss(logp, exp.logp_ref[idx], adv, mb.response_mask, cfg.apa_lambda)
        elif cfg.policy_loss == "ppo":
            policy_losses = ppo_loss(logp, exp.logp_old[idx], adv, mb.response_mask, cfg.ppo_clip)
        else:  # grpo / rloo: token-level clipped surrogate, + beta * k3 KL per token with kl_penalty: loss
            in_loss = cfg.kl_placement == "loss" and cfg.beta > 0
            policy_losses = group_policy_loss(logp, exp.logp_old[idx], adv, mb.response_mask, clip=cfg.group_clip,
                                              logp_ref=exp.logp_ref[idx] if in_loss else None,
                                              beta=cfg.beta if in_loss else 0.0)
        value_losses = None
        if self.critic is not None:
            hidden = exp.ref_hidden[idx] if exp.ref_hidden is not None else None
            with autocast(self.critic, self.precision):
                values = self.critic(mb, hidden, by_length=self._by_length)
            value_losses = value_loss(values, exp.returns[:, idx], mb.response_mask)
        if scale != 1.0:
            policy_losses = policy_losses * scale
            value_losses = value_losses * scale if value_losses is not None else None
        return policy_losses, value_losses, logp

    def update(self, exp: Experience, iteration: int) -> dict[str, float]:
        """Step 5: one gradient step per mini-batch, K gradients combined by the gradient engine."""
        cfg = self.cfg
        B = len(exp.prompts)
        gen = torch.Generator().manual_seed(iteration_seed(cfg.seed, MINIBATCH_SEED_MULTIPLIER, iteration))
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.epochs_per_iteration):
            order = torch.randperm(B, generator=gen)
            for start in range(0, B, cfg.minibatch_size):
                idx = order[start:start + cfg.minibatch_size]
                policy_losses, value_losses, logp = self._minibatch_losses(exp, idx)
                stats = self._step(policy_losses, value_losses, logp)
                for k, v in stats.items():
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
        return {k: v / count for k, v in sums.items()}

    def _step(self, policy_losses: Tensor, value_losses: Tensor | None, logp: Tensor) -> dict[str, Any]:
        cfg = self.cfg
        stats: dict[str, Any] = {}
        labels = self.names if cfg.multi_objective else [cfg.algo]
        # the global mini-batch's losses: mean of the processes' scaled ones
        values = value_losses.detach() if value_losses is not None else policy_losses.new_zeros(0)
        logged = self.layout.mean(torch.cat([policy_losses.detach().reshape(-1), values]))
        for k, label in enumerate(labels):
            stats[f"loss/policy/{label}"] = logged[k].item()
        for k, label in enumerate(self.stream_names[:len(values)]):
            stats[f"loss/value/{label}"] = logged[len(labels) + k].item()
        finite = bool(torch.isfinite(logged).all())
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            return self._skip("non-finite loss", stats)
        if not cfg.multi_objective:
            skipped = self._plain_update(policy_losses, value_losses, stats)
        elif cfg.modulate_critic:
            skipped = self._modulated_update(policy_losses, value_losses, stats)
        else:
            skipped = self._modulated_policy_update(policy_losses, value_losses, logp, stats)
        if skipped:
            return self._skip(skipped, stats)
        self.optimizer.step()
        self.bad_updates = 0
        return stats

    # the three update paths: each writes .grad (and its stats) or returns why the update is skipped
    def _plain_update(self, policy_losses: Tensor, value_losses: Tensor | None,
                      stats: dict[str, Any]) -> str | None:
        """SO baselines (and TRL's GRPO, safe-rlhf): one backward of the policy loss plus the value losses."""
        cfg = self.cfg
        loss = policy_losses[0]
        if value_losses is not None:
            loss = loss + cfg.value_coef * value_losses.sum()
        loss.backward()
        params = self.policy_params + self.critic_params
        self.layout.average_gradients_(params)
        grads = [distributed.local(p.grad) for p in params if p.grad is not None]
        # each process checked only its shard (FSDP): decide together
        if self.layout.any_rank(not all(torch.isfinite(g).all() for g in grads)):
            return "non-finite gradient"
        if cfg.clip_norm is not None:  # policy and critic clipped apart, as on the multi-objective path
            stats["grad/norm"] = self._clip(self.policy_params)
            if self.critic_params:
                self._clip(self.critic_params)
        return None

    def _modulated_update(self, policy_losses: Tensor, value_losses: Tensor, stats: dict[str, Any]) -> str | None:
        """``modulate_critic``: Algorithm 1 as written, the K losses ``APA_k + value_k`` modulated together."""
        diag = self.engine.backward(list(policy_losses + self.cfg.value_coef * value_losses),
                                    importance=self.importance)
        if diag.get("skipped"):
            return str(diag["skipped"])
        stats.update(_flatten_diagnostics(diag, self.names))
        return None

    def _modulated_policy_update(self, policy_losses: Tensor, value_losses: Tensor | None, logp: Tensor,
                                 stats: dict[str, Any]) -> str | None:
        """The policy's K losses modulated (``fast``: the Gramian of the token log-probs ``logp``); the
        critic's value losses summed and stepped normally, clipped on their own."""
        cfg = self.cfg
        rep = logp if cfg.gradient_mode == "fast" else None
        diag = self.engine.backward(list(policy_losses), representation=rep, importance=self.importance)
        if diag.get("skipped"):
            return str(diag["skipped"])
        if value_losses is not None:  # no critic (grpo / rloo): nothing to step
            (cfg.value_coef * value_losses.sum()).backward()
            self.layout.average_gradients_(self.critic_params)
            if cfg.clip_norm is not None:
                self._clip(self.critic_params)
        stats.update(_flatten_diagnostics(diag, self.names))
        return None

    def _clip(self, params: list[Tensor]) -> float:
        """Clip to ``clip_norm`` (global norm over processes when sharded); returns the norm before."""
        return self.layout.clip_grad_norm_(params, self.cfg.clip_norm)

    def _skip(self, reason: str, stats: dict[str, Any]) -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_updates += 1
        log.warning("skipped an update: %s (%d in a row)", reason, self.bad_updates)
        stats["skipped_updates"] = 1.0
        if self.bad_updates >= self.cfg.max_bad_updates:
            raise TrainingDivergedError(f"{self.bad_updates} consecutive updates skipped; last reason: {reason}")
        return stats

    def run_iteration(self, iteration: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        exp, times = self.collect(iteration)
        t1 = time.perf_counter()
        self.policy.train()
        train_stats = self.update(exp, iteration)
        times["training"] = time.perf_counter() - t1
        times["total"] = time.perf_counter() - t0
        mask = exp.batch.response_mask
        n_tokens = float(mask.sum())
        metrics: dict[str, Any] = {"iteration": iteration}
        for k, name in enumerate(self.names):
            metrics[f"reward/raw/{name}"] = exp.scores[k].mean().item()
            for tag in sorted(set(exp.tags)):
                sel = torch.tensor([t == tag for t in exp.tags], device=exp.scores.device)
                metrics[f"reward/raw/{name}/{tag}"] = exp.scores[k][sel].mean().item()
        metrics["kl"] = exp.kl.sum(dim=1).mean().item()
        unfinished, truncated, n_rows = exp.rollout_counts.tolist()
        metrics["responses/unfinished"] = unfinished / max(n_rows, 1.0)  # cut at max_new_tokens
        metrics["prompts/truncated"] = truncated / max(n_rows, 1.0)  # left-truncated to max_prompt_tokens
        metrics["response_tokens"] = n_tokens / len(exp.prompts)
        metrics["advantage/mean_abs"] = masked_mean(exp.advantages.abs(), mask.unsqueeze(0).expand_as(
            exp.advantages)).item()
        metrics.update(exp.stats)
        metrics.update({f"time/{k}": round(v, 4) for k, v in times.items()})
        metrics["tokens_per_s"] = n_tokens / max(times["generation"], 1e-9)
        metrics.update(train_stats)
        metrics["sample"] = {"prompt": exp.prompts[0], "response": exp.responses[0]}
        return metrics

    # ------------------------------------------------------------------ persistence
    def _tensor_states(self) -> dict[str, dict[str, Tensor]]:
        """Trainable parameters, whole. Sharded: gathered to process 0's CPU (every process calls)."""
        return {name: self.layout.trainable_state(module) for name, module in self._modules.items()}

    @property
    def _modules(self) -> torch.nn.ModuleDict:
        """Policy and critic (when there is one) under one root, for torch.distributed.checkpoint's
        state-dict helpers."""
        modules = {"policy": self.policy}
        if self.critic is not None:
            modules["critic"] = self.critic
        return torch.nn.ModuleDict(modules)

    def _optimizer_state(self) -> dict[str, Any]:
        """The whole optimizer state keyed by parameter name (gathered from the shards under FSDP), so a
        run resumes with any number of processes, sharded or not."""
        return self.layout.optimizer_state(self._modules, self.optimizer)

    def save_checkpoint(self, iteration: int) -> Path:
        """Written by process 0 (with FSDP after gathering the shards); the others wait for it."""
        root = self.out / "checkpoints"
        tensors, optimizer_state = self._tensor_states(), self._optimizer_state()
        if self.layout.is_main:
            meta = {"algo": self.cfg.algo, "bad_updates": self.bad_updates, "fsdp": self.layout.shards_parameters,
                    "critic": self.critic is not None}
            if self.multiplier is not None:  # safe-rlhf: lambda, its step count and cost window
                meta["lagrange"] = self.multiplier.state_dict()
            save_checkpoint(root, iteration, tensors, optimizer_state, meta)
            prune_checkpoints(root, keep=2)
        self.layout.barrier()
        return root / f"iter-{iteration:06d}"

    def resume(self) -> bool:
        """Load the latest intact checkpoint of ``out`` (verified; a damaged one falls back to the previous
        with a warning); none usable is a CheckpointError saying what was found."""
        path = latest_checkpoint(self.out / "checkpoints", required=True)
        if path is None:
            return False
        tensors, state, meta = load_checkpoint(path, list(self._modules))
        with torch.no_grad():
            for group, module in self._modules.items():
                params = dict(module.named_parameters())
                missing = set(tensors[group]) - set(params)
                if missing:
                    raise ValueError(f"{path}: checkpoint has {group} parameters this model lacks: "
                                     f"{sorted(missing)[:3]}")
                for name, value in tensors[group].items():
                    params[name].copy_(self.layout.place(params[name], value))
        groups = state["optimizer"]["param_groups"]
        if groups and groups[0]["params"] and isinstance(groups[0]["params"][0], int):
            self.optimizer.load_state_dict(state["optimizer"])  # molma <= 0.2: keyed by position
        else:
            self.layout.load_optimizer_state(self._modules, self.optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        self.start_iteration = int(meta["iteration"]) + 1
        self.bad_updates = int(meta.get("bad_updates", 0))
        if self.multiplier is not None:
            if "lagrange" not in meta:
                raise ValueError(f"{path}: a {self.cfg.algo} run needs the Lagrange multiplier, which this "
                                 "checkpoint lacks (written by another algorithm?)")
            self.multiplier.load_state_dict(meta["lagrange"])
        if self.layout.is_main:
            _truncate_metrics(self.out / "metrics.jsonl", int(meta["iteration"]))
        log.info("resumed from %s (next iteration %d)", path, self.start_iteration)
        return True

    def save_final(self) -> Path:
        """``final/``: the adapter (LoRA) or the whole model, and the tokenizer; written by process 0."""
        final = self.out / "final"
        # FSDP: gather the shards (every process takes part); LoRA: the adapters only
        state = self.layout.gathered_state(self.policy, trainable_only=is_peft(self.policy))
        if not self.layout.is_main:
            return final
        from molma.models.cards import export_policy

        with atomic_folder(final) as folder:  # an older final/ is replaced only once this one is whole
            self.policy.save_pretrained(folder, safe_serialization=True,
                                        **({"state_dict": state} if state is not None else {}))
            self.tokenizer.save_pretrained(folder)
            (folder / "molma.json").write_text(json.dumps({"base_model": self.cfg.model,
                                                           "lora": is_peft(self.policy)}))
            # loadable elsewhere: the adapter names the public base model; a model card describes the run
            export_policy(folder, self.cfg)
        return final

    def _log(self, metrics: dict[str, Any]) -> None:
        if not self.layout.is_main:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics, ensure_ascii=False) + "\n")
        if self._writer is None:  # report_to: TensorBoard (OUT/tensorboard), W&B, none (molma.tracking)
            from molma.tracking import Tracker

            self._writer = Tracker(self.cfg.report_to, self.out / "tensorboard", run_name=self.out.name,
                                   config=to_dict(self.cfg))
        self._writer.log({k: v for k, v in metrics.items() if k != "iteration"}, metrics["iteration"])

    # ------------------------------------------------------------------ main loop
    def train(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run the configured iterations (from the latest checkpoint with ``resume``); ``stop_after``
        ends early after that iteration (used to simulate a killed run in tests)."""
        from molma.hub import check_token
        from molma.logs import ensure_progress_logging
        from molma.tracking import check_available

        ensure_progress_logging()  # a script that configured no logging still sees progress
        cfg = self.cfg
        check_available(cfg.report_to)  # a missing backend package or Hub token fails now, not at the end
        if cfg.push_to_hub:
            check_token(cfg.push_to_hub)
        main = self.layout.is_main  # process 0 writes every file; with R processes all hold the same state
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg) | {"processes": self.world},
                                                                 sort_keys=False))
        self.layout.barrier()
        if resume:
            self.resume()
        elif main and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()
        t0 = time.perf_counter()
        last: dict[str, Any] = {}
        iterations = range(self.start_iteration, cfg.iterations + 1)
        bar = tqdm(iterations, desc=f"{cfg.algo}", unit="it", disable=not (cfg.progress and main),
                   initial=self.start_iteration - 1, total=cfg.iterations)
        for it in bar:
            last = self.run_iteration(it)
            self._log(last)
            bar.set_postfix({n: f"{last[f'reward/raw/{n}']:.3f}" for n in self.names} | {"kl": f"{last['kl']:.3f}"})
            if cfg.save_every and (it % cfg.save_every == 0 or it == cfg.iterations):
                self.save_checkpoint(it)
            if stop_after is not None and it >= stop_after:
                if not (cfg.save_every and it % cfg.save_every == 0):
                    self.save_checkpoint(it)
                break
        bar.close()
        wall = time.perf_counter() - t0
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        finished = stop_after is None or stop_after >= cfg.iterations
        summary = {"algo": cfg.algo, "iterations": cfg.iterations, "wall_time_s": round(wall, 2),
                   "finished": finished, "processes": self.world, "fsdp": self.layout.shards_parameters,
                   "precision": self.precision,
                   "objectives": self.names,
                   "last": {k: v for k, v in last.items() if k != "sample"}}
        if finished:
            summary["final"] = str(self.out / "final")
            self.save_final()  # every process: with FSDP the shards are gathered first
        if main:
            prev = self.out / "run.json"
            if prev.exists() and resume:
                summary["wall_time_s"] += json.loads(prev.read_text()).get("wall_time_s", 0.0)
            write_text_atomic(self.out / "run.json", json.dumps(summary, indent=2))
        self.layout.barrier()
        if main and finished and cfg.push_to_hub:  # after the barrier: a failed upload blocks no process
            from molma.hub import push_folder

            push_folder(self.out / "final", cfg.push_to_hub, commit_message=f"molma: {cfg.algo} policy")
        return summary


def _flatten_diagnostics(diag: dict[str, Any], names: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in diag.items():
        # "losses" are this process's (already logged as loss/policy/* for the global mini-batch)
        if isinstance(value, bool) or value is None or key == "losses":
            continue
        if isinstance(value, (int, float)):
            out[f"grad/{key}"] = float(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
            if len(value) == len(names):
                for n, v in zip(names, value):
                    out[f"grad/{key}/{n}"] = float(v)
            else:
                for i, v in enumerate(value):
                    out[f"grad/{key}/{i}"] = float(v)
    return out


def _truncate_metrics(path: Path, last_iteration: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (no duplicates)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= last_iteration]
    path.write_text("".join(line + "\n" for line in keep))
