"""``report_to`` (TensorBoard, W&B when installed, none) for RL and reward-model training, the deprecated
``tensorboard`` switch, and ``push_to_hub`` with the Hub upload mocked (no token, no network here)."""

from __future__ import annotations

import copy
import sys
import types
import warnings

import pytest
import torch

from molma.cli.main import main
from molma.config import ConfigError, from_dict, load_config
from molma.hub import HubError, push_folder
from molma.rl import MultiObjectiveTrainer, TrainConfig
from molma.tracking import Tracker, check_available, normalize_report_to
from tests.rl import toy

RULES = ["objectives.help=rule:length", "objectives.safe=rule:banned_words"]


def test_report_to_values():
    assert normalize_report_to("none") == [] and normalize_report_to(None) == [] and normalize_report_to([]) == []
    assert normalize_report_to("TensorBoard") == ["tensorboard"]
    assert normalize_report_to(["wandb", "tensorboard", "wandb"]) == ["wandb", "tensorboard"]
    with pytest.raises(ValueError, match="report_to: expected tensorboard | wandb | none"):
        normalize_report_to("mlflow")
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        normalize_report_to(["none", "wandb"])
    with pytest.raises(ConfigError, match="command line: report_to: expected"):
        load_config(TrainConfig, overrides=["report_to=comet"])
    assert load_config(TrainConfig, overrides=["report_to=[tensorboard, wandb]"]).report_to == ["tensorboard", "wandb"]


def test_tensorboard_is_a_deprecated_alias():
    assert TrainConfig().report_to == "tensorboard" and TrainConfig().tensorboard is None
    with pytest.warns(FutureWarning, match="'tensorboard' is deprecated, use report_to"):
        cfg = from_dict(TrainConfig, {"tensorboard": False})
    assert normalize_report_to(cfg.report_to) == []
    with pytest.warns(FutureWarning):
        cfg = from_dict(TrainConfig, {"tensorboard": True, "report_to": "wandb"})
    assert normalize_report_to(cfg.report_to) == ["wandb", "tensorboard"]


def test_wandb_missing_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match="report_to: 'wandb' needs the wandb package"):
        check_available(["tensorboard", "wandb"])


@pytest.fixture()
def fake_wandb(monkeypatch):
    calls = []

    class Run:
        def log(self, values, step=None):
            calls.append(("log", values, step))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module = types.ModuleType("wandb")
    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    return calls


def test_tracker_writes_tensorboard_and_wandb(tmp_path, fake_wandb):
    tracker = Tracker(["tensorboard", "wandb"], tmp_path / "run" / "tensorboard", run_name="run", config={"lr": 1})
    assert not (tmp_path / "run").exists()  # nothing before the first log
    tracker.log({"kl": 0.5, "reward/raw/help": 1, "sample": "text", "bad": float("nan"), "flag": True}, step=3)
    tracker.close()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    init = fake_wandb[0]
    assert init[0] == "init" and init[1]["name"] == "run" and init[1]["dir"] == str(tmp_path / "run")
    assert fake_wandb[1] == ("log", {"kl": 0.5, "reward/raw/help": 1.0}, 3) and fake_wandb[2] == ("finish",)
    none = Tracker("none", tmp_path / "none")
    none.log({"kl": 1.0}, 1)
    none.close()
    assert not bool(none) and not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def policy():
    return toy.toy_policy(steps=10)


def _trainer(policy, out, **kw):
    model, tok = policy
    base = dict(algo="molma", objectives={"long": "rule:length", "clean": "rule:banned_words"},
                help_objective="long", safe_objective="clean", iterations=1, experience_size=4, minibatch_size=4,
                max_new_tokens=4, critic_backbone="frozen", prompt_mix={"help": 0.5, "safe": 0.5}, out=str(out),
                progress=False, save_every=0)
    base.update(kw)
    return MultiObjectiveTrainer(TrainConfig(**base), policy=copy.deepcopy(model), tokenizer=tok,
                                 objectives=toy.objectives(), prompt_pools=toy.pools())


def test_rl_training_reports_to_the_chosen_backends(policy, tmp_path, fake_wandb):
    _trainer(policy, tmp_path / "tb").train()
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    _trainer(policy, tmp_path / "none", report_to="none").train()
    assert not (tmp_path / "none" / "tensorboard").exists()
    _trainer(policy, tmp_path / "wb", report_to="wandb").train()
    assert not (tmp_path / "wb" / "tensorboard").exists()
    logged = [c for c in fake_wandb if c[0] == "log"]
    assert len(logged) == 1 and logged[0][2] == 1 and "kl" in logged[0][1] and "iteration" not in logged[0][1]
    assert fake_wandb[-1] == ("finish",)


@pytest.fixture()
def hub(monkeypatch):
    """A mocked Hub: a token, and create_repo / upload_folder that record their calls."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hf.co/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(("upload", kw)))
    return calls


def test_push_to_hub_uploads_the_final_policy(policy, tmp_path, hub):
    _trainer(policy, tmp_path / "run", push_to_hub="me/tiny-molma", report_to="none").train()
    assert hub[0][:2] == ("create", "me/tiny-molma") and hub[0][2]["exist_ok"] is True
    upload = hub[1][1]
    assert upload["repo_id"] == "me/tiny-molma" and upload["folder_path"] == str(tmp_path / "run" / "final")
    assert (tmp_path / "run" / "final" / "README.md").exists()


def test_push_to_hub_errors_name_the_problem(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match=r"push_to_hub=me/x: no Hugging Face token; run 'hf auth login' or set HF_TOKEN"):
        push_folder(tmp_path, "me/x")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")

    def offline(self, *a, **kw):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(HubError, match=rf"upload of {tmp_path} failed \(ConnectionError: .*the model is saved in"):
        push_folder(tmp_path, "me/x")
    with pytest.raises(ValueError, match="push_to_hub: expected a Hub repository id"):
        TrainConfig(push_to_hub="not a repo id")


def test_cli_checks_token_and_backends_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    import molma.rl

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(molma.rl, "MultiObjectiveTrainer", lambda *a, **k: pytest.fail("a trainer was built"))
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["train", "--push-to-hub", "me/x", *RULES]) == 2
    assert "push_to_hub=me/x: no Hugging Face token" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
        assert main(["train", "report_to=wandb", *RULES]) == 2
    assert "report_to: 'wandb' needs the wandb package (pip install wandb)" in capsys.readouterr().err
    import molma.rewards.train as rm_train

    monkeypatch.setattr(rm_train, "build_reward_model", lambda *a, **k: pytest.fail("a model was built"))
    assert main(["rm", "train", "--push-to-hub", "me/rm", "--out", str(tmp_path / "rm")]) == 2
    assert "molma rm train: error: push_to_hub=me/rm: no Hugging Face token" in capsys.readouterr().err


def test_reward_model_training_reports_and_pushes(tmp_path, hub):
    from molma.rewards import RewardTrainConfig, train_reward_model
    from tests.rewards.toy import save_tiny_base

    base = save_tiny_base(tmp_path / "base", seed=0, num_layers=2)
    config = RewardTrainConfig(objective="safe", data="builtin", base=str(base), output_dir=str(tmp_path / "rm"),
                               batch_size=32, epochs=1.0, learning_rate=1e-3, max_length=64, logging_steps=2,
                               limit=96, report_to="tensorboard", push_to_hub="me/rm-safe", precision="fp32")
    out = train_reward_model(config)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "eval/accuracy"} <= set(acc.Tags()["scalars"])
    assert [c[1] for c in hub if c[0] == "create"] == ["me/rm-safe"]
    assert [c[1]["folder_path"] for c in hub if c[0] == "upload"] == [str(out)]
    torch.set_num_threads(1)


def test_api_training_checks_backend_and_token_before_the_first_iteration(policy, tmp_path, monkeypatch):
    import importlib.util

    import huggingface_hub

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ImportError, match="report_to: 'wandb' needs the wandb package"):
        _trainer(policy, tmp_path / "wb", report_to="wandb").train()
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="no Hugging Face token"):
        _trainer(policy, tmp_path / "hub", report_to="none", push_to_hub="me/x").train()
    assert not (tmp_path / "wb" / "metrics.jsonl").exists() and not (tmp_path / "hub" / "metrics.jsonl").exists()
