"""Where training metrics go besides ``metrics.jsonl``: the ``report_to`` setting of RL and
reward-model training, as in Hugging Face's ``TrainingArguments``.

``report_to`` is ``"tensorboard"``, ``"wandb"``, ``"none"`` or a list of the first two. TensorBoard
writes event files through ``torch.utils.tensorboard`` into the run's ``tensorboard/`` folder;
Weights & Biases logs to the project in ``$WANDB_PROJECT`` (default ``molma``) and needs the ``wandb``
package (``pip install wandb``; ``wandb login`` or ``$WANDB_API_KEY``, or ``WANDB_MODE=offline``).

    tracker = Tracker(["tensorboard"], log_dir="runs/x/tensorboard", run_name="x", config={...})
    tracker.log({"kl": 0.1, "reward/raw/help": 0.3}, step=1)   # numbers only; others are skipped
    tracker.close()

Backends start on the first :meth:`Tracker.log`, so a run that logs nothing leaves no files behind.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BACKENDS = ("tensorboard", "wandb")
#: The values ``report_to`` accepts (alone or, the backends, in a list).
CHOICES = (*BACKENDS, "none")


def normalize_report_to(value: str | Sequence[str] | None, key: str = "report_to") -> list[str]:
    """The backends named by a ``report_to`` value: ``"none"`` / ``None`` / ``[]`` -> ``[]``; a name or a
    list of names (duplicates dropped, order kept). Unknown names raise ``ValueError`` naming ``key``."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or name.strip().lower() not in CHOICES:
            raise ValueError(f"{key}: expected {' | '.join(CHOICES)} or a list of {', '.join(BACKENDS)}, "
                             f"got {name!r}")
        name = name.strip().lower()
        if name == "none":
            if len(names) > 1:
                raise ValueError(f"{key}: 'none' cannot be combined with other backends, got {list(names)}")
            return []
        if name not in out:
            out.append(name)
    return out


def check_available(value: str | Sequence[str] | None, key: str = "report_to") -> list[str]:
    """:func:`normalize_report_to`, plus an ``ImportError`` naming ``key`` when a chosen backend's package
    is missing (so a run fails before any model loads rather than at its first log line)."""
    backends = normalize_report_to(value, key)
    if "wandb" in backends and importlib.util.find_spec("wandb") is None:
        raise ImportError(f"{key}: 'wandb' needs the wandb package (pip install wandb), which is not "
                          f"installed; use report_to=tensorboard or report_to=none")
    if "tensorboard" in backends and importlib.util.find_spec("tensorboard") is None:
        raise ImportError(f"{key}: 'tensorboard' needs the tensorboard package (pip install tensorboard), "
                          "which is not installed; use report_to=none")
    return backends


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))}


class Tracker:
    """Logs scalar metrics to the chosen backends (see the module docstring). ``log_dir`` is where
    TensorBoard writes (W&B keeps its local files in ``log_dir``'s parent, as ``wandb/``); ``run_name``
    and ``config`` name and describe the run in W&B."""

    def __init__(self, report_to: str | Sequence[str] | None, log_dir: str | Path,
                 run_name: str | None = None, config: Mapping[str, Any] | None = None,
                 key: str = "report_to") -> None:
        self.backends = check_available(report_to, key)
        self.log_dir = Path(log_dir)
        self.run_name = run_name
        self.config = dict(config or {})
        self._tensorboard = None
        self._wandb = None

    def __bool__(self) -> bool:
        return bool(self.backends)

    def _start(self) -> None:
        if "tensorboard" in self.backends and self._tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.log_dir))
        if "wandb" in self.backends and self._wandb is None:
            import wandb

            self.log_dir.parent.mkdir(parents=True, exist_ok=True)  # W&B keeps its files in ../wandb
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "molma"), name=self.run_name,
                                     dir=str(self.log_dir.parent), config=self.config)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the finite numbers of ``metrics`` at ``step`` (strings, lists, NaN and inf are skipped)."""
        if not self.backends:
            return
        values = _numbers(metrics)
        if not values:
            return
        self._start()
        if self._tensorboard is not None:
            for k, v in values.items():
                self._tensorboard.add_scalar(k, v, step)
            self._tensorboard.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
