"""Multi-objective RL fine-tuning: rollout, reward shaping, critic, GAE, APA/PPO losses, trainer."""

from molma.rl.config import PRESET_ALGOS, SINGLE_OBJECTIVE_ALGOS, TrainConfig
from molma.rl.trainer import MultiObjectiveTrainer, TrainingDivergedError, load_policy

__all__ = ["PRESET_ALGOS", "SINGLE_OBJECTIVE_ALGOS", "MultiObjectiveTrainer", "TrainConfig",
           "TrainingDivergedError", "load_policy"]
