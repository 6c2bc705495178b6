"""Training runs: one (task, method, seed) with a DQN agent behind a shield, and parallel batches.

Methods (all share the agent, the task and the step budget):

- ``none``: no oversight; the task reward only (a catastrophe ends the episode).
- ``shaping``: reward minus ``catastrophe_penalty`` on a catastrophe.
- ``hirl``: shaping + HIRL shield (human, then blocker); blocked proposals cost ``block_penalty``.
- ``mbhi``: shaping + MBHI shield (look-ahead in the dynamics ensemble, MPC fallback; the planner's
  reward and termination are learned, ``mpc.reward=privileged`` gives the simulator's as an ablation).
- ``mbhi_nohuman``: MBHI without the human: the blocker learns from the agent's own catastrophes.
- ``pets``: no DQN and no oversight: CEM-MPC in the learned model with the learned (shaped) reward.

Continuous-action tasks (a 1-D ``Box``) use a DQN over a grid of ``action_grid`` values
(:class:`~molma.mbhi.agents.GridAgent`); the shield, models and MPC act on the continuous value.

A run records cumulative catastrophes and human labels every ``log_every`` steps, every episode's task
return, and ends with ``eval_episodes`` greedy episodes behind the deployed shield (no human, no more
learning): the *final return*.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from molma.atomic import write_text_atomic
from molma.config import COUNT, NON_NEGATIVE, SEED, Range, check_ranges, to_dict
from molma.mbhi.actions import ActionSet
from molma.mbhi.agents import DQNAgent, DQNConfig, GridAgent
from molma.mbhi.blocker import BlockerConfig, BlockerEnsemble
from molma.mbhi.dynamics import DynamicsConfig, DynamicsEnsemble
from molma.mbhi.envs import CLIFF_CART_ID, register_envs, safety_env
from molma.mbhi.lookahead import LookaheadConfig
from molma.mbhi.mpc import MPCConfig
from molma.mbhi.nets import save_module
from molma.mbhi.overseer import OverseerConfig, SimulatedOverseer
from molma.mbhi.pets import PETSAgent
from molma.mbhi.shield import (
    HIRLShield,
    MBHIShield,
    NullShield,
    SelfLabelShield,
    Shield,
    ShieldWrapper,
    agent_transitions,
)

log = logging.getLogger(__name__)

Method = Literal["none", "shaping", "hirl", "mbhi", "mbhi_nohuman", "pets"]
METHODS: tuple[str, ...] = ("none", "shaping", "hirl", "mbhi", "mbhi_nohuman", "pets")


@dataclass
class RunConfig:
    """One training run; every nested part is configurable from YAML or ``a.b=value`` overrides."""

    env: str = CLIFF_CART_ID
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    method: Method = "mbhi"
    name: str | None = None  # result folder / label of a variant (default: the method)
    seed: int = 0
    total_steps: int = 10_000
    catastrophe_penalty: float = 20.0  # reward shaping (all methods except "none")
    block_penalty: float = 20.0  # virtual penalty for a blocked proposal (hirl, mbhi)
    eval_episodes: int = 10
    log_every: int = 100
    checkpoint_dir: str | None = None  # save agent/blocker/dynamics (safetensors) here
    action_grid: int = 5  # continuous tasks: DQN proposals and human/HIRL replacement candidates
    dqn: DQNConfig = field(default_factory=DQNConfig)
    overseer: OverseerConfig = field(default_factory=OverseerConfig)
    blocker: BlockerConfig = field(default_factory=BlockerConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)
    mpc: MPCConfig = field(default_factory=MPCConfig)

    # the valid range of every numeric field (each element of a tuple); NaN and inf never
    RANGES: ClassVar[dict[str, Range]] = {
        "seed": SEED, "total_steps": COUNT, "catastrophe_penalty": NON_NEGATIVE, "block_penalty": NON_NEGATIVE,
        "eval_episodes": Range(0), "log_every": COUNT, "action_grid": Range(2),
    }

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        check_ranges(self)

    @property
    def label(self) -> str:
        """The variant's name in results (``name`` or the method)."""
        return self.name or self.method


@dataclass
class RunResult:
    """Curves and summary of one run (JSON-serialisable)."""

    env: str
    method: str
    seed: int
    steps: list[int]  # logging grid
    catastrophes: list[int]  # cumulative training catastrophes at each grid step
    labels: list[int]  # cumulative human labels at each grid step
    episodes: list[dict[str, Any]]  # end_step, return, length, catastrophe, success
    summary: dict[str, Any]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (NaN as null)."""
        return write_text_atomic(path, json.dumps(json_safe(self.to_json()), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | Path) -> RunResult:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf by None (valid JSON) in nested dicts and lists."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def env_slug(env_id: str) -> str:
    """File-system name of a task id (``molma/CliffCart-v0`` -> ``CliffCart-v0``)."""
    return env_id.split("/")[-1]


def make_agent(cfg: RunConfig, env: gym.Env) -> DQNAgent | GridAgent | PETSAgent:
    """The learner of ``cfg.method``: a DQN (over an action grid for continuous tasks), or PETS."""
    space = env.observation_space
    actions = ActionSet.from_space(env.action_space, grid=cfg.action_grid)
    if cfg.method == "pets":
        model = DynamicsEnsemble(space.shape[0], actions, cfg.dynamics, seed=cfg.seed + 37)
        return PETSAgent(model, actions, cfg.mpc, seed=cfg.seed)
    dqn = DQNAgent(space.low, space.high, actions.n, cfg.dqn, seed=cfg.seed)
    return dqn if actions.discrete else GridAgent(dqn, actions)


def make_shield(cfg: RunConfig, env: gym.Env, agent: DQNAgent | GridAgent | PETSAgent) -> Shield:
    """The shield of ``cfg.method`` for ``env`` (its overseer, blocker and dynamics model)."""
    if cfg.method in ("none", "shaping", "pets"):
        return NullShield()
    sim = safety_env(env)
    obs_dim = env.observation_space.shape[0]
    actions = ActionSet.from_space(env.action_space, grid=cfg.action_grid)
    blocker = BlockerEnsemble(obs_dim, actions, cfg.blocker, seed=cfg.seed + 23)
    model = DynamicsEnsemble(obs_dim, actions, cfg.dynamics, seed=cfg.seed + 37)
    if cfg.method == "mbhi_nohuman":
        return SelfLabelShield(sim, actions, blocker, model, agent.policy, cfg.lookahead, cfg.mpc,
                               seed=cfg.seed)
    overseer = SimulatedOverseer(sim, cfg.overseer, seed=cfg.seed + 11)
    if cfg.method == "hirl":
        return HIRLShield(sim, actions, overseer, blocker, seed=cfg.seed)
    return MBHIShield(sim, actions, overseer, blocker, model, agent.policy, cfg.lookahead, cfg.mpc,
                      seed=cfg.seed)


def evaluate(agent: DQNAgent | GridAgent | PETSAgent, cfg: RunConfig, shield: Shield, episodes: int,
             seed: int) -> dict[str, float]:
    """Greedy episodes behind the deployed ``shield``: mean task return, catastrophes, successes."""
    shield.deploy()
    env = ShieldWrapper(gym.make(cfg.env, **cfg.env_kwargs), shield)
    returns, catastrophes, successes = [], 0, 0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            obs, _, terminated, truncated, info = env.step(agent.act(obs, explore=False))
            total += info["task_reward"]
            catastrophes += int(info["catastrophe"])
            successes += int(info.get("success", False))
            done = terminated or truncated
        returns.append(total)
    env.close()
    return {"return": float(np.mean(returns)) if returns else float("nan"),
            "return_std": float(np.std(returns)) if returns else float("nan"),
            "catastrophes": catastrophes, "successes": successes}


def run_experiment(cfg: RunConfig, progress: bool = False) -> RunResult:
    """Train a DQN agent on ``cfg.env`` under ``cfg.method``; return its curves and summary."""
    register_envs()
    start, cpu_start = time.perf_counter(), time.process_time()
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    base = gym.make(cfg.env, **cfg.env_kwargs)
    base.action_space.seed(cfg.seed)
    agent = make_agent(cfg, base)
    shield = make_shield(cfg, base, agent)
    penalty = 0.0 if cfg.method == "none" else cfg.catastrophe_penalty
    env = ShieldWrapper(base, shield, catastrophe_penalty=penalty, block_penalty=cfg.block_penalty)

    steps, cum_cat, labels, episodes = [], [], [], []
    n_cat, ep_ret, ep_len = 0, 0.0, 0
    obs, _ = env.reset(seed=cfg.seed)
    bar = tqdm(total=cfg.total_steps, desc=f"{env_slug(cfg.env)}/{cfg.label}/s{cfg.seed}",
               disable=not progress, mininterval=1.0, leave=False)
    for t in range(1, cfg.total_steps + 1):
        proposed = agent.act(obs)
        next_obs, reward, terminated, truncated, info = env.step(proposed)
        for tr in agent_transitions(obs, proposed, reward, next_obs, terminated, info):
            agent.observe(tr)
        agent.update()
        shield.on_step(t)
        n_cat += int(info["catastrophe"])
        ep_ret += info["task_reward"]
        ep_len += 1
        obs = next_obs
        if terminated or truncated:
            episodes.append({"end_step": t, "return": ep_ret, "length": ep_len,
                             "catastrophe": bool(info["catastrophe"]),
                             "success": bool(info.get("success", False))})
            obs, _ = env.reset()
            ep_ret, ep_len = 0.0, 0
        if t % cfg.log_every == 0 or t == cfg.total_steps:
            steps.append(t)
            cum_cat.append(n_cat)
            labels.append(shield.labels_used)
            bar.update(t - bar.n)
            bar.set_postfix(cat=n_cat, labels=shield.labels_used, eps=f"{agent.epsilon:.2f}")
    bar.close()
    train_time = time.perf_counter() - start
    final = evaluate(agent, cfg, shield, cfg.eval_episodes, seed=10_000 + cfg.seed)
    last = [e["return"] for e in episodes[-max(1, len(episodes) // 10):]]
    summary = {
        "catastrophes": n_cat,
        "labels_used": shield.labels_used,
        "final_return": final["return"],
        "final_return_std": final["return_std"],
        "eval_catastrophes": final["catastrophes"],
        "eval_successes": final["successes"],
        "train_return_last10pct": float(np.mean(last)) if last else float("nan"),
        "episodes": len(episodes),
        "train_seconds": train_time,
        "wall_seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        **shield.stats(),
    }
    if cfg.checkpoint_dir:
        save_checkpoints(Path(cfg.checkpoint_dir), agent, shield)
    if isinstance(agent, PETSAgent):
        summary["mpc_calls"] = agent.mpc.calls
    log.info("%s %s seed %d: %d catastrophes, %d labels, final return %.2f (%.0f s)", env_slug(cfg.env),
             cfg.label, cfg.seed, n_cat, shield.labels_used, final["return"], summary["wall_seconds"])
    return RunResult(cfg.env, cfg.label, cfg.seed, steps, cum_cat, labels, episodes, summary, to_dict(cfg))


def save_checkpoints(directory: Path, agent: DQNAgent | GridAgent | PETSAgent, shield: Shield) -> list[Path]:
    """Agent Q-network (PETS: its dynamics model), blocker and dynamics ensembles as safetensors files."""
    if isinstance(agent, PETSAgent):
        return [save_module(agent.model, directory / "dynamics.safetensors")]
    paths = [save_module(agent.q, directory / "agent_q.safetensors")]
    if isinstance(shield, HIRLShield):
        paths.append(save_module(shield.blocker, directory / "blocker.safetensors"))
    if isinstance(shield, MBHIShield) and isinstance(shield.model, DynamicsEnsemble):
        paths.append(save_module(shield.model, directory / "dynamics.safetensors"))
    return paths


def result_path(out_dir: str | Path, env_id: str, method: str, seed: int) -> Path:
    return Path(out_dir) / env_slug(env_id) / method / f"seed{seed}.json"


def _worker_init() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def _run_and_save(cfg: RunConfig, path: str) -> dict[str, Any]:
    result = run_experiment(cfg)
    result.save(path)
    return result.summary


def run_many(configs: Sequence[RunConfig], out_dir: str | Path, workers: int = 1,
             progress: bool = True, skip_existing: bool = False) -> list[RunResult]:
    """Run configs (in ``workers`` processes, one torch thread each), saving each result as it ends."""
    todo = []
    for cfg in configs:
        path = result_path(out_dir, cfg.env, cfg.label, cfg.seed)
        if not (skip_existing and path.exists()):
            todo.append((cfg, path))
    # the slowest (MBHI) first so the pool drains evenly
    todo.sort(key=lambda item: item[0].method not in ("mbhi", "mbhi_nohuman", "pets"))
    if workers <= 1:
        torch.set_num_threads(1)
        for cfg, path in tqdm(todo, desc="runs", disable=not progress or len(todo) < 2):
            run_experiment(cfg, progress=progress).save(path)
    else:
        ctx = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            jobs = {pool.submit(_run_and_save, cfg, str(path)): cfg for cfg, path in todo}
            for job in tqdm(futures.as_completed(jobs), total=len(jobs), desc="runs", disable=not progress):
                cfg = jobs[job]
                s = job.result()
                log.info("done %s %s seed %d: %d catastrophes, final return %.2f, %.0f s",
                         env_slug(cfg.env), cfg.label, cfg.seed, s["catastrophes"], s["final_return"],
                         s["wall_seconds"])
    return [RunResult.load(result_path(out_dir, c.env, c.label, c.seed)) for c in configs]
