"""MBHI: safe model-based RL that imitates human blocking, looks ahead in a learned model, and falls
back to MPC (after Xu et al., CoRL 2021), with the HIRL baseline (Saunders et al., 2017).

Reading order: :mod:`~molma.mbhi.envs` (tasks) -> :mod:`~molma.mbhi.overseer` (simulated human) ->
:mod:`~molma.mbhi.blocker` / :mod:`~molma.mbhi.dynamics` (learned ensembles) ->
:mod:`~molma.mbhi.lookahead` / :mod:`~molma.mbhi.mpc` (imagination, CEM) -> :mod:`~molma.mbhi.shield`
(HIRL and MBHI shields, gymnasium wrapper) -> :mod:`~molma.mbhi.agents` (DQN) ->
:mod:`~molma.mbhi.train` (runs) -> :mod:`~molma.mbhi.compare` (tables, plots). See ``docs/mbhi.md``.
"""

from molma.mbhi.actions import ActionSet
from molma.mbhi.agents import Agent, DQNAgent, DQNConfig, GridAgent, Transition
from molma.mbhi.blocker import BlockerConfig, BlockerEnsemble
from molma.mbhi.dynamics import DynamicsConfig, DynamicsEnsemble, SimulatorModel
from molma.mbhi.envs import (
    CLIFF_CART_ID,
    CLIFF_THROTTLE_ID,
    CLIFF_WALK_ID,
    TASK_IDS,
    CliffCartEnv,
    CliffThrottleEnv,
    CliffWalkEnv,
    SafetyEnv,
    register_envs,
)
from molma.mbhi.lookahead import Imagination, LookaheadConfig, NullBlocker
from molma.mbhi.mpc import MPCConfig, SafeMPC, categorical_cem, gaussian_cem, stratified_gaussian_cem
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
from molma.mbhi.train import METHODS, RunConfig, RunResult, run_experiment, run_many

register_envs()

__all__ = [
    "CLIFF_CART_ID", "CLIFF_THROTTLE_ID", "CLIFF_WALK_ID", "METHODS", "TASK_IDS", "ActionSet", "Agent",
    "BlockerConfig", "BlockerEnsemble", "CliffCartEnv", "CliffThrottleEnv", "CliffWalkEnv", "GridAgent",
    "NullBlocker", "PETSAgent", "SelfLabelShield", "stratified_gaussian_cem",
    "DQNAgent", "DQNConfig", "DynamicsConfig", "DynamicsEnsemble",
    "HIRLShield", "Imagination", "LookaheadConfig", "MBHIShield", "MPCConfig", "NullShield",
    "OverseerConfig", "RunConfig", "RunResult", "SafeMPC", "SafetyEnv", "Shield", "ShieldWrapper",
    "SimulatedOverseer", "SimulatorModel", "Transition", "agent_transitions", "categorical_cem",
    "gaussian_cem", "register_envs", "run_experiment", "run_many",
]
