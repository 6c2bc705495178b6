"""Multi-objective RL fine-tuning of a causal LM (MOLMA section 3.3, Algorithm 1) and the
single-objective baselines (section 4.3) on the same loop.

One iteration, top to bottom (see :meth:`MultiObjectiveTrainer.run_iteration`):
  1. rollout   sample an experience memory of prompts (pools mixed e.g. 60/40), generate responses
  2. score     every objective scores every response: r in R^{K x B}
  3. shape     WHITEN(LOGIT(r)) per objective (eq. 3.4), - beta * KL per token (eq. 3.3);
               SO baselines scalarise here instead (eq. 4.1 / 4.2)
  4. critic    values from K heads, GAE per objective
  5. update    per mini-batch: K losses APA_k (eq. 3.5) or PPO_k from ONE policy forward, value
               losses (eq. 3.6); K gradients combined by molma.gradients (Aligned-MTL for MOLMA,
               GAPO / P-GAPO, any registered weighting); AdamW step
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from molma.config import to_dict
from molma.data.chat import render_prompt
from molma.gradients import distributed as mdist
from molma.gradients.backward import last_layer_parameters
from molma.models.precision import autocast, resolve_precision
from molma.models.sharding import (
    device_mesh,
    full_tensor,
    gathered,
    gathered_state_dict,
    is_peft,
    parameter_bytes,
    placed_like,
    shard_model,
)
from molma.rl import parallel
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
from molma.rl.losses import apa_loss, ppo_loss, value_loss
from molma.rl.prompts import sample_batch, train_heldout_pools
from molma.rl.rollout import (
    Batch,
    GenerationSettings,
    finished_responses,
    generate,
    seen_prompt,
    sequence_logprobs,
)
from molma.rl.shaping import scalarize, shape_objective_rewards, token_rewards

log = logging.getLogger(__name__)


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
    advantages: Tensor  # [Kr, B, T]
    returns: Tensor  # [Kr, B, T]
    kl: Tensor  # [B, T]
    rollout_counts: Tensor  # [unfinished responses, left-truncated prompts, rows] over all processes


class MultiObjectiveTrainer:
    """Trainer for MOLMA, GAPO / P-GAPO, any gradient method, and the SO baselines.

    >>> trainer = MultiObjectiveTrainer(TrainConfig(algo="molma", iterations=20))  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, *, policy=None, tokenizer=None, objectives=None,
                 prompt_pools: tuple[dict, dict] | None = None) -> None:
        self.cfg = config
        self.out = Path(config.out)
        parallel.init_from_env()  # under torchrun / accelerate launch: join the process group
        self.world, self.rank = mdist.world_size(), parallel.rank()
        for name in ("experience_size", "minibatch_size"):
            if getattr(config, name) % self.world:
                raise ValueError(f"{name} ({getattr(config, name)}) must be divisible by the number of "
                                 f"processes ({self.world})")
        self.device = parallel.device_for(config.device)
        if self.device.type == "cuda":  # NCCL collectives and FSDP's mesh use the current device
            torch.cuda.set_device(self.device)
        self.sharded = config.fsdp and self.world > 1
        self.precision = resolve_precision(config.precision, self.device)
        log.info("precision: %s (config: %s)", self.precision, config.precision)
        if config.fsdp and not self.sharded:
            log.warning("fsdp: true needs several processes (torchrun / accelerate launch); training "
                        "unsharded on this one")
        # sharded: build on the CPU; fully_shard moves each block's shard to the device (a GPU never
        # holds more than one whole block of policy, reference or critic)
        build_device = torch.device("cpu") if self.sharded else self.device
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
        self.n_reward = len(self.objectives) if config.multi_objective else 1
        # prompts
        self.train_pools, self.heldout_pools = prompt_pools or train_heldout_pools(
            config.prompts, config.heldout_fraction, seed=config.seed)
        # critic: K value heads (one for SO baselines), initialised from the reference
        self.critic = Critic.from_reference(base_lm, self.n_reward, config.critic_backbone,
                                            config.lora).to(build_device)
        if self.sharded:  # FSDP2: every process keeps 1/R of each weight (molma.models.sharding)
            mesh = device_mesh(self.device)
            # GAPO's last-layer Gramian ("subset") needs that layer's trainable weights whole
            subset = config.multi_objective and config.gradient_mode == "subset"
            shard_model(self.policy, mesh, replicate=last_layer_parameters(self.policy) if subset else ())
            for module in (self.reference, self.critic):
                if module is not None:
                    shard_model(module, mesh)
            sizes = [parameter_bytes(m) for m in (self.policy, self.reference, self.critic) if m is not None]
            log.info("fsdp: policy%s and critic sharded over %d processes; this one holds %.0f of %.0f MB "
                     "of their weights", "" if self.reference is None else ", reference", self.world,
                     sum(h for h, _ in sizes) / 2**20, sum(w for _, w in sizes) / 2**20)
        self.policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        self.critic_params = self.critic.trainable_parameters()
        self.optimizer = torch.optim.AdamW(
            [{"params": self.policy_params, "lr": config.lr},
             {"params": self.critic_params, "lr": config.critic_lr or config.lr}],
            betas=tuple(config.adam_betas), eps=config.adam_eps, weight_decay=config.weight_decay,
        )
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
        layout = "fsdp" if self.sharded else "data" if self.world > 1 else "none"
        return MultiObjectiveBackward(params, cfg.gradient_method, mode=cfg.gradient_mode,
                                      clip_norm=cfg.clip_norm, distributed=layout, **kwargs)

    @property
    def importance(self) -> Tensor | None:
        if self.cfg.importance is None:
            return None
        w = torch.tensor(self.cfg.importance, dtype=torch.float32)
        return w / w.sum()

    def _reference_logprobs(self, batch: Batch, hidden: bool) -> tuple[Tensor, Tensor | None]:
        if self.reference is not None:
            with autocast(self.reference, self.precision):
                return sequence_logprobs(self.reference, batch, return_hidden=hidden)
        with self.policy.disable_adapter(), autocast(self.policy, self.precision):
            return sequence_logprobs(self.policy, batch, return_hidden=hidden)

    # ------------------------------------------------------------------ one iteration
    @torch.no_grad()
    def collect(self, iteration: int) -> tuple[Experience, dict[str, float]]:
        """Steps 1-4: rollout, score, shape, GAE. With R processes each rolls out its B / R rows and the
        rollout is gathered (molma.rl.parallel), so every process shapes the same global batch."""
        cfg = self.cfg
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        prompts = sample_batch(self.train_pools, cfg.prompt_mix, cfg.experience_size,
                               seed=cfg.seed * 1_000_003 + iteration)
        rows = list(parallel.shard(len(prompts), self.world, self.rank))
        texts = [render_prompt(self.tokenizer, prompts[i].text) for i in rows]
        gather = self.sharded and cfg.fsdp_gather_for_generation
        with gathered(self.policy) if gather else contextlib.nullcontext(), autocast(self.policy, self.precision):
            batch, logp_old = generate(self.policy, self.tokenizer, texts, self.gen,
                                       seed=cfg.seed * 7_919 + iteration, rows=rows,
                                       synced=self.sharded and not gather)
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
        if self.world > 1:
            counts = mdist.all_reduce_sum(counts)

        t2 = time.perf_counter()
        logp_ref, ref_hidden = self._reference_logprobs(batch, hidden=self.critic.frozen)
        with autocast(self.critic, self.precision):
            values_old = self.critic(batch, ref_hidden)
        if self.world > 1:
            batch, logp_old, logp_ref, ref_hidden, values_old, scores, responses = self._gather_rollout(
                batch, logp_old, logp_ref, ref_hidden, values_old, scores, responses)
        prompt_texts = [p.text for p in prompts]
        mask = batch.response_mask
        kl = (logp_old - logp_ref) * mask
        if cfg.multi_objective:
            seq_reward = shape_objective_rewards(scores, cfg.logit_eps)
        else:
            seq_reward = scalarize(scores, self.names, cfg.scalarization, help_name=cfg.help_objective,
                                   safe_name=cfg.safe_objective, weights=cfg.importance,
                                   piecewise_delta=cfg.piecewise_delta, eps=cfg.logit_eps).unsqueeze(0)
        rewards = token_rewards(seq_reward, kl, mask, cfg.beta)
        advantages, returns = gae(rewards, values_old, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        times["reference"] = time.perf_counter() - t2
        exp = Experience(prompt_texts, [p.tag for p in prompts], responses, batch, scores, logp_old,
                         logp_ref, ref_hidden, advantages, returns, kl, counts)
        return exp, times

    def _gather_rollout(self, batch: Batch, logp_old: Tensor, logp_ref: Tensor, ref_hidden: Tensor | None,
                        values_old: Tensor, scores: Tensor, responses: list[str]) -> tuple:
        """Every process's rollout rows, padded to common lengths and concatenated in rank order."""
        P = parallel.all_max(batch.prompt_len, self.device)
        T = parallel.all_max(batch.response_mask.shape[1], self.device)
        local = parallel.pad_batch(batch, P, T, self.tokenizer.pad_token_id)
        full = Batch(parallel.all_gather_cat(local.input_ids), parallel.all_gather_cat(local.attention_mask), P,
                     parallel.all_gather_cat(local.response_mask))
        hidden = None if ref_hidden is None else parallel.all_gather_cat(parallel.pad_tokens(ref_hidden, T, dim=1))
        return (full, parallel.all_gather_cat(parallel.pad_tokens(logp_old, T)),
                parallel.all_gather_cat(parallel.pad_tokens(logp_ref, T)), hidden,
                parallel.all_gather_cat(parallel.pad_tokens(values_old, T), dim=1),
                parallel.all_gather_cat(scores, dim=1), parallel.all_gather_list(responses))

    def _minibatch_losses(self, exp: Experience, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """K policy losses and K value losses from one policy forward and one critic forward.

        With R processes, ``idx`` is the global mini-batch and this process takes every R-th row; its
        token sums are divided by the global token count times R, so that the mean over processes (what
        the gradient engine averages) is exactly the 1-process token mean."""
        cfg = self.cfg
        scale = 1.0
        if self.world > 1:
            n_global = exp.batch.response_mask[idx].sum().clamp(min=1.0)
            idx = idx[self.rank::self.world]
            scale = float(exp.batch.response_mask[idx].sum().clamp(min=1.0) / n_global) * self.world
        mb = exp.batch.select(idx)
        with autocast(self.policy, self.precision):  # losses below are computed in float32
            logp, _ = sequence_logprobs(self.policy, mb)
        adv = exp.advantages[:, idx]
        if cfg.policy_loss == "apa":
            policy_losses = apa_loss(logp, exp.logp_ref[idx], adv, mb.response_mask, cfg.apa_lambda)
        else:
            policy_losses = ppo_loss(logp, exp.logp_old[idx], adv, mb.response_mask, cfg.ppo_clip)
        hidden = exp.ref_hidden[idx] if exp.ref_hidden is not None else None
        with autocast(self.critic, self.precision):
            values = self.critic(mb, hidden)
        value_losses = value_loss(values, exp.returns[:, idx], mb.response_mask)
        if scale != 1.0:
            policy_losses, value_losses = policy_losses * scale, value_losses * scale
        return policy_losses, value_losses, logp

    def update(self, exp: Experience, iteration: int) -> dict[str, float]:
        """Step 5: one gradient step per mini-batch, K gradients combined by the gradient engine."""
        cfg = self.cfg
        B = len(exp.prompts)
        gen = torch.Generator().manual_seed(cfg.seed * 104_729 + iteration)
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

    def _step(self, policy_losses: Tensor, value_losses: Tensor, logp: Tensor) -> dict[str, Any]:
        cfg = self.cfg
        stats: dict[str, Any] = {}
        labels = self.names if cfg.multi_objective else [cfg.algo]
        logged = torch.stack([policy_losses.detach(), value_losses.detach()])
        if self.world > 1:  # the global mini-batch's losses: mean of the processes' scaled ones
            logged = mdist.all_reduce_sum(logged) / self.world
        for k, label in enumerate(labels):
            stats[f"loss/policy/{label}"] = logged[0, k].item()
            stats[f"loss/value/{label}"] = logged[1, k].item()
        finite = bool(torch.isfinite(logged).all())
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            return self._skip("non-finite loss", stats)
        if not cfg.multi_objective:
            (policy_losses[0] + cfg.value_coef * value_losses[0]).backward()
            self._average_gradients(self.policy_params + self.critic_params)
            grads = [mdist.local(p.grad) for p in self.policy_params + self.critic_params if p.grad is not None]
            bad = not all(torch.isfinite(g).all() for g in grads)
            if self.sharded:  # each process checked only its shard: decide together
                bad = mdist.any_rank(bad, device=self.device)
            if bad:
                return self._skip("non-finite gradient", stats)
            if cfg.clip_norm is not None:  # policy and critic clipped apart, as on the multi-objective path
                stats["grad/norm"] = self._clip(self.policy_params)
                self._clip(self.critic_params)
        else:
            if cfg.modulate_critic:
                diag = self.engine.backward(list(policy_losses + cfg.value_coef * value_losses),
                                            importance=self.importance)
            else:
                rep = logp if cfg.gradient_mode == "fast" else None
                diag = self.engine.backward(list(policy_losses), representation=rep, importance=self.importance)
                if diag.get("skipped"):
                    return self._skip(str(diag["skipped"]), stats)
                (cfg.value_coef * value_losses.sum()).backward()
                self._average_gradients(self.critic_params)
                if cfg.clip_norm is not None:
                    self._clip(self.critic_params)
            if diag.get("skipped"):
                return self._skip(str(diag["skipped"]), stats)
            stats.update(_flatten_diagnostics(diag, self.names))
        self.optimizer.step()
        self.bad_updates = 0
        return stats

    def _clip(self, params: list[Tensor]) -> float:
        """Clip to ``clip_norm`` (global norm over processes when sharded); returns the norm before."""
        return float(full_tensor(torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_norm)))

    def _average_gradients(self, params: list[Tensor]) -> None:
        """Data parallel: average plain (unmodulated) gradients over processes, as DDP would (FSDP's
        backward already did)."""
        if self.world == 1 or self.sharded:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        mdist.average_([p.grad for p in params])

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
        metrics.update({f"time/{k}": round(v, 4) for k, v in times.items()})
        metrics["tokens_per_s"] = n_tokens / max(times["generation"], 1e-9)
        metrics.update(train_stats)
        metrics["sample"] = {"prompt": exp.prompts[0], "response": exp.responses[0]}
        return metrics

    # ------------------------------------------------------------------ persistence
    def _tensor_states(self) -> dict[str, dict[str, Tensor]]:
        """Trainable parameters, whole. Sharded: gathered to process 0's CPU (every process calls)."""
        if self.sharded:
            return {name: gathered_state_dict(module, trainable_only=True)
                    for name, module in (("policy", self.policy), ("critic", self.critic))}
        return {name: {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}
                for name, module in (("policy", self.policy), ("critic", self.critic))}

    @property
    def _modules(self) -> torch.nn.ModuleDict:
        """Policy and critic under one root, for torch.distributed.checkpoint's state-dict helpers."""
        return torch.nn.ModuleDict({"policy": self.policy, "critic": self.critic})

    def _optimizer_state(self) -> dict[str, Any]:
        """The whole optimizer state keyed by parameter name (gathered from the shards under FSDP), so a
        run resumes with any number of processes, sharded or not."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True) if self.sharded else None
        return get_optimizer_state_dict(self._modules, self.optimizer, options=options)

    def save_checkpoint(self, iteration: int) -> Path:
        """Written by process 0 (with FSDP after gathering the shards); the others wait for it."""
        root = self.out / "checkpoints"
        tensors, optimizer_state = self._tensor_states(), self._optimizer_state()
        if self.rank == 0:
            save_checkpoint(root, iteration, tensors, optimizer_state,
                            {"algo": self.cfg.algo, "bad_updates": self.bad_updates, "fsdp": self.sharded})
            prune_checkpoints(root, keep=2)
        parallel.barrier()
        return root / f"iter-{iteration:06d}"

    def resume(self) -> bool:
        """Load the latest intact checkpoint of ``out`` (verified; a damaged one falls back to the previous
        with a warning); none usable is a CheckpointError saying what was found."""
        path = latest_checkpoint(self.out / "checkpoints", required=True)
        if path is None:
            return False
        tensors, state, meta = load_checkpoint(path, ["policy", "critic"])
        with torch.no_grad():
            for group, module in (("policy", self.policy), ("critic", self.critic)):
                params = dict(module.named_parameters())
                missing = set(tensors[group]) - set(params)
                if missing:
                    raise ValueError(f"{path}: checkpoint has {group} parameters this model lacks: "
                                     f"{sorted(missing)[:3]}")
                for name, value in tensors[group].items():
                    params[name].copy_(placed_like(params[name], value))
        groups = state["optimizer"]["param_groups"]
        if groups and groups[0]["params"] and isinstance(groups[0]["params"][0], int):
            self.optimizer.load_state_dict(state["optimizer"])  # molma <= 0.2: keyed by position
        else:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True) if self.sharded else None
            set_optimizer_state_dict(self._modules, self.optimizer, state["optimizer"], options=options)
        set_rng_state(state["rng"])
        self.start_iteration = int(meta["iteration"]) + 1
        self.bad_updates = int(meta.get("bad_updates", 0))
        if self.rank == 0:
            _truncate_metrics(self.out / "metrics.jsonl", int(meta["iteration"]))
        log.info("resumed from %s (next iteration %d)", path, self.start_iteration)
        return True

    def save_final(self) -> Path:
        """``final/``: the adapter (LoRA) or the whole model, and the tokenizer; written by process 0."""
        final = self.out / "final"
        state = None
        if self.sharded:  # gather the shards (every process takes part); LoRA: the adapters only
            state = gathered_state_dict(self.policy, trainable_only=is_peft(self.policy))
        if self.rank != 0:
            return final
        final.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(final, safe_serialization=True,
                                    **({"state_dict": state} if state is not None else {}))
        self.tokenizer.save_pretrained(final)
        (final / "molma.json").write_text(json.dumps({"base_model": self.cfg.model, "lora": is_peft(self.policy)}))
        # loadable elsewhere: the adapter names the public base model; a model card describes the run
        from molma.models.cards import export_policy

        export_policy(final, self.cfg)
        return final

    def _log(self, metrics: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics, ensure_ascii=False) + "\n")
        if self.cfg.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out / "tensorboard"))
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "iteration":
                    self._writer.add_scalar(k, v, metrics["iteration"])
            self._writer.flush()

    # ------------------------------------------------------------------ main loop
    def train(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Run the configured iterations (from the latest checkpoint with ``resume``); ``stop_after``
        ends early after that iteration (used to simulate a killed run in tests)."""
        cfg = self.cfg
        main = self.rank == 0  # process 0 writes every file; with R processes all hold the same state
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg) | {"processes": self.world},
                                                                 sort_keys=False))
        parallel.barrier()
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
                   "finished": finished, "processes": self.world, "fsdp": self.sharded,
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
            (self.out / "run.json").write_text(json.dumps(summary, indent=2))
        parallel.barrier()
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


def load_policy(path: str | Path):
    """Load a trained policy folder (``final/``): a LoRA adapter on its base model, or a full model.
    Returns ``(model, tokenizer)``."""
    from molma.models import load_model, load_tokenizer

    path = Path(path)
    meta_file = path / "molma.json"
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = json.loads(meta_file.read_text())["base_model"] if meta_file.exists() else None
        if base is None:
            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model, _ = load_model(base)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        return model.eval(), load_tokenizer(str(path))
    model, tok = load_model(str(path))
    return model.eval(), tok
