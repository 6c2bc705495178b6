"""The README's Python API snippet runs as written (on a tiny model standing in for the builtin SmolLM2,
with smaller sizes), and the API logs progress when the caller configured no logging."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.rewards.toy import save_tiny_base

#: README value -> test value (each must occur in the snippet, so a changed README fails here)
SMALLER = {"iterations=20": "iterations=2", "experience_size=16": "experience_size=4",
           "minibatch_size=8": "minibatch_size=4", "max_new_tokens=24": "max_new_tokens=4"}


def readme_snippet() -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick tour: the Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    import molma.models.loading as loading

    tiny = save_tiny_base(tmp_path / "tiny", seed=0, num_layers=2)
    monkeypatch.setattr(loading, "builtin_model_path", lambda name: tiny)  # "smollm2-135m-instruct" -> tiny
    code = readme_snippet()
    for old, new in SMALLER.items():
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    try:
        exec(compile(code, "README.md (Python API)", "exec"), namespace)
    finally:
        torch.set_num_threads(1)
    assert (tmp_path / "exp" / "rm" / "help" / "config.json").exists()
    assert namespace["summary"]["finished"] and (tmp_path / "exp" / "runs" / "molma" / "final").is_dir()
    assert set(namespace["result"].models) == {"ref", "molma"}
    assert namespace["report"].html.exists()
    diagnostics = namespace["diagnostics"]
    assert len(diagnostics["alpha"]) == 2
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in namespace["model"].parameters())


def test_api_logs_progress_unless_logging_is_configured(monkeypatch, capsys):
    from molma.logs import configure_logging, ensure_progress_logging

    root, molma_logger = logging.getLogger(), logging.getLogger("molma")
    monkeypatch.setattr(root, "handlers", [])  # as in a plain script
    monkeypatch.setattr(molma_logger, "handlers", [])
    monkeypatch.setattr(molma_logger, "level", logging.NOTSET)
    monkeypatch.setattr(molma_logger, "propagate", True)
    ensure_progress_logging()
    logging.getLogger("molma.rl.trainer").info("iteration 1 of 2")
    assert "INFO molma.rl.trainer: iteration 1 of 2" in capsys.readouterr().err
    ensure_progress_logging()  # idempotent
    assert len(molma_logger.handlers) == 1
    configure_logging(logging.WARNING)
    logging.getLogger("molma.eval").info("hidden")
    assert "hidden" not in capsys.readouterr().err

    monkeypatch.setattr(molma_logger, "handlers", [])
    monkeypatch.setattr(molma_logger, "level", logging.NOTSET)
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])  # the caller configured logging
    ensure_progress_logging()
    assert molma_logger.handlers == []
