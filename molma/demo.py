"""The end-to-end demo (``molma demo`` / ``make demo``): the experiment pipeline of
:mod:`molma.experiment` at demo size on the embedded SmolLM2 (``configs/demo.yaml``).

Stages (cached under ``OUT/`` and keyed by a hash of their settings, so a second run reuses finished
stages): prompt pools (the real HH-RLHF red-teaming first turns when ``hh_data`` is set), RMhelp and
RMsafe, the RL runs, evaluation on held-out prompts, the report; the last lines printed are the win-rate
table with paired tests and a one-sentence verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from molma.experiment import ExperimentConfig, Stages, _hash

__all__ = ["DemoConfig", "Stages", "_hash", "run_demo"]


@dataclass
class DemoConfig(ExperimentConfig):
    out: str = "outputs/demo"
    title: str = "molma demo: MOLMA vs baselines on SmolLM2-135M-Instruct (CPU)"


def run_demo(config_path: str | None, overrides=(), out: str | None = None) -> Path:
    from molma.experiment import run_experiment

    return run_experiment(config_path, overrides, out=out, config_class=DemoConfig, label="demo")
