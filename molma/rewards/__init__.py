"""Reward models and objectives (section 3.2): one reward model per objective, trained with the binary
ranking loss of eq. 3.2, served through the :class:`Objective` protocol next to rule-based rewards.

Training (:func:`train_reward_model`, :class:`RewardTrainConfig`) imports trl lazily, so importing this
package stays cheap for code that only scores.
"""

from molma.rewards.data import data_label, load_pairs, parse_data_spec, validate_pairs
from molma.rewards.evaluate import evaluate_many, evaluate_reward_model, format_table, write_results
from molma.rewards.metrics import pairwise_accuracy, preference_loss, score_stats
from molma.rewards.model import METADATA_FILE, RewardModel, encode_dialogues, render_for_scoring
from molma.rewards.objective import (
    DEFAULT_BANNED_WORDS,
    RULES,
    NonFiniteRewardError,
    Objective,
    RewardFunction,
    banned_words_reward,
    check_finite,
    check_objective_spec,
    length_reward,
    load_objective,
    register_rule,
)
from molma.rewards.train import RewardTrainConfig, build_reward_model, train_reward_model

__all__ = [
    "DEFAULT_BANNED_WORDS", "METADATA_FILE", "RULES", "NonFiniteRewardError", "Objective", "RewardFunction",
    "RewardModel", "RewardTrainConfig", "banned_words_reward", "build_reward_model", "check_finite",
    "check_objective_spec", "data_label", "encode_dialogues", "evaluate_many", "evaluate_reward_model", "format_table",
    "length_reward", "load_objective", "load_pairs", "pairwise_accuracy", "parse_data_spec",
    "preference_loss", "register_rule", "render_for_scoring", "score_stats", "train_reward_model",
    "validate_pairs", "write_results",
]
