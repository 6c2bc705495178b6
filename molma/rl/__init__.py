"""Multi-objective RL fine-tuning: rollout, reward shaping, critic, GAE, APA/PPO losses, trainer."""

from molma.models.loading import load_policy  # the one policy loader, for molma.rl users
from molma.rl.config import PRESET_ALGOS, SINGLE_OBJECTIVE_ALGOS, TrainConfig
from molma.rl.group_advantages import grpo_advantages, rloo_advantages, trl_multi_reward_advantages
from molma.rl.group_losses import group_policy_loss, k3_kl, sequence_kl_penalty
from molma.rl.lagrangian import LagrangeMultiplier, lagrangian_advantages, lagrangian_weights
from molma.rl.prompts import run_heldout_prompts
from molma.rl.trainer import MultiObjectiveTrainer, TrainingDivergedError

__all__ = ["PRESET_ALGOS", "SINGLE_OBJECTIVE_ALGOS", "MultiObjectiveTrainer", "TrainConfig",
           "TrainingDivergedError", "load_policy", "run_heldout_prompts"]
__all__ += ["LagrangeMultiplier", "group_policy_loss", "grpo_advantages", "k3_kl", "lagrangian_advantages",
            "lagrangian_weights", "rloo_advantages", "sequence_kl_penalty", "trl_multi_reward_advantages"]
