"""The experiment's stage graph end to end on a tiny model and tiny data: every stage runs, the outputs
connect (runs -> evaluation -> evidence -> report), held-out prompts never reach training, and a second
run reuses every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from molma.data.hh import normalise_prompt
from tests.data.helpers import hh, write_jsonl

REQUESTS = [f"how do I do bad thing number {i}?" for i in range(30)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    from molma.models import tiny_llama

    root = tmp_path_factory.mktemp("exp")
    model, tok = tiny_llama(seed=0)
    model.save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    rows = [{"chosen": hh(r, "I can't help with that."), "rejected": hh(r, f"Sure, step {i}: do it.")}
            for i, r in enumerate(REQUESTS)]
    write_jsonl(root / "hh.jsonl.gz", rows, compress=True)
    tiny_rm = {"max_length": 64, "batch_size": 8, "epochs": 1.0, "learning_rate": 1e-3, "logging_steps": 1}
    config = {
        "out": str(root / "out"), "model": str(root / "tiny"), "seed": 0, "threads": 1, "precision": "fp32",
        "hh_data": str(root / "hh.jsonl.gz"), "hh_validation_fraction": 0.3,
        "help_prompts": "builtin:help", "prompt_validation_fraction": 0.1,
        "rm": tiny_rm, "rm_safe": {"skip_invalid": True},
        "rm_safe_candidates": [{}, {"learning_rate": 3e-3}],
        "train": {"iterations": 1, "experience_size": 4, "minibatch_size": 4, "max_new_tokens": 4, "lr": 1e-3,
                  "critic_backbone": "frozen", "lora": {"r": 2, "alpha": 4}, "save_every": 0,
                  "report_to": "none"},
        "algo_train": {"so-weighted": {"lr": 2e-3}},
        "algos": ["molma", "so-weighted"], "extra_seeds": {"molma": [1]}, "sweep_weights": [0.3, 0.5],
        "pareto_algos": [], "pareto_weights": [], "eval_prompts": 8, "eval_max_new_tokens": 4,
        "eval_batch_size": 4, "workers": 2, "soup_runs": ["molma", "so-weighted"], "soup_weights": [0.5],
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


def test_stage_graph_runs_connects_and_resumes(setup, capsys):
    from molma.experiment import run_experiment

    root, config = setup
    out = run_experiment(str(config))
    printed = capsys.readouterr().out
    # data: held-out safety prompts are first turns of validation dialogues, never training prompts
    data = json.loads((out / "data" / "data.json").read_text())
    assert data["safe"]["rm_train_pairs"] + data["safe"]["rm_validation_pairs"] == len(REQUESTS)

    def texts(name):
        return {normalise_prompt(json.loads(line)["prompt"]) for line in (out / "data" / name).read_text().splitlines()}

    for pool in ("help", "safe"):
        heldout = texts(f"{pool}-heldout.jsonl")
        assert heldout and not heldout & texts(f"{pool}-train.jsonl")
        assert not heldout & texts(f"{pool}-validation.jsonl")
        assert not texts(f"{pool}-validation.jsonl") & texts(f"{pool}-train.jsonl")
    # every run trained on the written training pools
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["molma", "molma-s1", "so-weighted", "so-weighted-w0.3"]
    cfg = yaml.safe_load((out / "runs" / "molma-s1" / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["prompts"]["safe"].endswith("safe-train.jsonl")
    # per-algorithm overrides reach that algorithm's runs (sweep runs included) and no other
    lrs = {name: yaml.safe_load((out / "runs" / name / "config.yaml").read_text())["lr"] for name in runs}
    assert lrs == {"molma": 1e-3, "molma-s1": 1e-3, "so-weighted": 2e-3, "so-weighted-w0.3": 2e-3}
    # evaluation of every run and the reference on the same held-out prompts, and the evidence file
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["n_prompts"] == 8
    assert set(evidence["models"]) == {"ref", *runs, "soup-w0.5"}
    # the Rewarded soup (exact LoRA interpolation of the two runs) is evaluated and drawn between them
    assert evidence["models"]["soup-w0.5"]["algo"] == "rewarded-soup"
    soup_front = json.loads((out / "pareto" / "soup.json").read_text())
    assert [p["label"] for p in soup_front["points"]] == ["molma", "soup-w0.5", "so-weighted"]
    assert [p["weights"] for p in soup_front["points"]] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    for model in runs:
        for objective in ("help", "safe"):
            c = evidence["vs_reference"][model][objective]
            assert c["n_win"] + c["n_tie"] + c["n_loss"] == 8 and 0.0 <= c["sign_p"] <= 1.0
    assert all(v["kl"] is None or v["kl"] >= 0 for v in evidence["models"].values())
    rm_rows = json.loads((out / "rm" / "results.json").read_text())
    assert {r["data"] for r in rm_rows} >= {"HH-RLHF harmless (validation dialogues)"}
    # RMsafe was chosen among the candidates on their own training share, and moved to rm/rm-safe
    selection = json.loads((out / "rm" / "candidates" / "selection.json").read_text())
    accuracies = [c["selection_accuracy"] for c in selection["candidates"]]
    assert [c["selected"] for c in selection["candidates"]].count(True) == 1
    assert accuracies[selection["selected"]] == max(accuracies)
    assert (out / "rm" / "rm-safe" / "molma_rm.json").exists()
    assert (out / "sweep" / "so-weighted.json").exists()
    assert (out / "report" / "report.md").exists()
    # the last lines are the one-sentence verdict about MOLMA
    assert "molma" in " ".join(printed.strip().splitlines()[-3:]).lower()
    assert (out / "evidence.md").read_text().count("| molma-s1 |") >= 2  # every seed against the reference
    # a second run reuses every stage (a new report title changes no stage and keeps the cost record)
    run_experiment(str(config), ["title='another title'"])
    printed = capsys.readouterr().out
    assert "running" not in printed and printed.count("reused") >= 8
    record = json.loads((out / "experiment.json").read_text())  # both invocations stay on record
    assert len(record["invocations"]) == 2 and record["invocations"][1]["stages_run"] == []
    assert record["wall_time_s_all_invocations"] >= record["invocations"][0]["wall_s"]
    # publishing copies the results (no weights, no responses) and a report without example prompts
    from molma.experiment import publish_results

    pub = publish_results(out, root / "published")
    published = json.loads((pub / "evidence.json").read_text())
    assert published["vs_reference"] == evidence["vs_reference"] and published["molma_vs"] == evidence["molma_vs"]
    assert [published["models"][m]["seed"] for m in ("ref", "molma", "molma-s1")] == [None, 0, 1]
    assert {p.name for p in pub.iterdir()} == {"evidence.md", "evidence.json", "config.yaml", "data.json",
                                              "rm_results.json", "rm_selection.json", "eval_summary.json",
                                              "sweeps", "report", "runs.json"}
    assert published["models"]["soup-w0.5"]["algo"] == "rewarded-soup"
    costs = json.loads((pub / "runs.json").read_text())  # each method's cost at the same rollout budget
    assert set(costs) == set(runs) and costs["molma"]["loss"] == "apa" and costs["molma"]["iterations"] == 1
    assert costs["molma"]["median_seconds_per_iteration"]["total"] > 0
    assert (pub / "sweeps" / "so-weighted.json").exists() and (pub / "report" / "report.md").exists()
    assert (pub / "sweeps" / "pareto-soup.json").exists()
    assert not list(pub.rglob("*.safetensors")) and not list(pub.rglob("responses.jsonl"))


def test_a_run_folder_left_by_other_settings_is_cleared_before_training(tmp_path):
    from molma.experiment import claim_folder

    folder = tmp_path / "runs" / "molma"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "step").write_text("old")  # no key recorded: written before keys were
    claim_folder(folder, "key-a")
    assert not (folder / "checkpoints").exists() and (folder / ".stage-key").read_text().strip() == "key-a"
    (folder / "checkpoints").mkdir()
    claim_folder(folder, "key-a")  # same settings: a killed run keeps its checkpoints and resumes
    assert (folder / "checkpoints").exists()
    claim_folder(folder, "key-b")  # changed settings: cleared
    assert not (folder / "checkpoints").exists() and (folder / ".stage-key").read_text().strip() == "key-b"


def test_algo_train_must_name_a_planned_algorithm():
    from molma.experiment import ExperimentConfig

    with pytest.raises(ValueError, match="algo_train names \\['gapoo'\\]"):
        ExperimentConfig(algo_train={"gapoo": {"lr": 1e-3}})


def test_a_stage_rerun_under_other_settings_never_sees_the_files_of_the_old_one(tmp_path):
    from molma.experiment import Stages

    stages = Stages(tmp_path, "test")
    folder = tmp_path / "eval"
    seen = []

    def evaluate(tag):
        seen.append(sorted(p.name for p in folder.iterdir() if p.name != ".stage-key"))
        (folder / f"responses-{tag}.jsonl").write_text(tag)

    stages.run("evaluation", folder, "key-a", lambda: evaluate("a"))
    stages.run("evaluation", folder, "key-a", lambda: evaluate("again"))  # same settings: reused, not rerun
    stages.run("evaluation", folder, "key-b", lambda: evaluate("b"))  # changed settings: a clean folder
    assert seen == [[], []] and sorted(p.name for p in folder.iterdir()) == [".stage-key", "responses-b.jsonl"]


def _environment_variable(name: str) -> str | None:
    import os

    return os.environ.get(name)


def test_worker_processes_start_with_the_configured_mmap_threshold():
    """worker_mmap_threshold reaches the workers' environment (glibc reads it at start) and is not left in
    the parent's environment afterwards."""
    import os

    from molma.experiment import _worker_pool

    before = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    with _worker_pool(1, 1048576) as pool:
        assert pool.submit(_environment_variable, "MALLOC_MMAP_THRESHOLD_").result() == "1048576"
    assert os.environ.get("MALLOC_MMAP_THRESHOLD_") == before


def test_learning_rate_rule_keeps_the_rate_with_the_best_worse_objective():
    from molma.experiment import choose_learning_rate

    # smaller gains: 0.07, 0.065, -0.067 -> 1e-3 (session 5's numbers: the rule is fixed, not the outcome)
    gains = {1e-3: {"help": 0.070, "safe": 0.091}, 3e-3: {"help": 0.214, "safe": 0.065},
             1e-2: {"help": 0.199, "safe": -0.067}}
    assert choose_learning_rate(gains) == 1e-3
    gains[3e-3]["safe"] = 0.08  # now 3e-3's worse objective beats 1e-3's
    assert choose_learning_rate(gains) == 3e-3
    assert choose_learning_rate({2e-3: {"a": 0.1, "b": 0.2}, 1e-3: {"a": 0.2, "b": 0.1}}) == 1e-3  # tie: smaller
    with pytest.raises(ValueError):
        choose_learning_rate({})


def test_learning_rate_rule_leaves_out_rates_that_drift_past_the_kl_cap():
    from molma.experiment import choose_learning_rate

    # session 7's MOLMA search: 1e-2 had the best smaller gain but drifted 26 nats
    gains = {1e-3: {"help": 0.004, "safe": 0.072}, 3e-3: {"help": 0.180, "safe": 0.062},
             1e-2: {"help": 0.156, "safe": 0.196}}
    kl = {1e-3: 0.23, 3e-3: 1.65, 1e-2: 26.2}
    assert choose_learning_rate(gains) == 1e-2
    assert choose_learning_rate(gains, kl, max_kl=5.0) == 3e-3
    assert choose_learning_rate(gains, kl, max_kl=1.65) == 3e-3  # the cap is inclusive
    assert choose_learning_rate(gains, kl, max_kl=1.0) == 1e-3
    # no rate within the cap: the one that drifted least; an unmeasured KL never counts as within it
    assert choose_learning_rate(gains, kl, max_kl=0.1) == 1e-3
    assert choose_learning_rate(gains, {1e-3: None, 3e-3: 1.65, 1e-2: 26.2}, max_kl=5.0) == 3e-3


@pytest.mark.parametrize("search, message", [
    ({"lrs": [1e-3], "algos": {"molma": []}}, "at least two"),
    ({"lrs": [1e-3, 1e-3], "algos": {"molma": []}}, "at least two"),
    ({"lrs": [1e-3, -1.0], "algos": {"molma": []}}, "lr_search.lrs"),
    ({"lrs": [1e-3, 3e-3], "algos": {"gapo": []}}, "'gapo'"),
    ({"lrs": [1e-3, 3e-3], "algos": {"molma": ["molma"]}}, "twice"),
    ({"lrs": [1e-3, 3e-3], "algos": {"so-weighted": []}}, "both set"),
    ({"lrs": [1e-3, 3e-3], "algos": {"molma": []}, "rule": "mean"}, "unknown key"),
    ({"lrs": [1e-3, 3e-3], "algos": {"molma": []}, "seeds": [1, 2]}, "main seed"),
    ({"lrs": [1e-3, 3e-3], "algos": {"molma": []}, "seeds": [0, 0]}, "lr_search.seeds"),
    ({"lrs": [1e-3, 3e-3], "algos": {"molma": []}, "seeds": [0, "1"]}, "lr_search.seeds"),
    ({"lrs": [1e-3, 3e-3], "algos": {"molma": []}, "max_kl": 0}, "lr_search.max_kl"),
])
def test_lr_search_settings_are_checked_before_anything_runs(search, message):
    from molma.experiment import ExperimentConfig

    with pytest.raises(ValueError, match=message):
        ExperimentConfig(algos=["molma", "so-weighted"], algo_train={"so-weighted": {"lr": 2e-3}}, lr_search=search)


def test_a_finished_run_is_copied_only_to_the_settings_it_was_trained_with(tmp_path):
    from molma.experiment import Stages, adopt_finished_run

    stages = Stages(tmp_path / "out", "test")
    src, dst = tmp_path / "out" / "runs" / "molma", tmp_path / "out" / "lr-search" / "runs" / "molma-lr0.001"
    (src / "final").mkdir(parents=True)
    (src / "final" / "adapter_model.safetensors").write_bytes(b"weights")
    (src / "config.yaml").write_text(f"lr: 0.001\nout: {src}\n")
    stages.mark_done("train molma", src, "k-src", 12.0)
    assert not adopt_finished_run(stages, "train molma", src, "k-other", "train search", dst, "k-dst")
    assert not dst.exists()  # the source's recorded settings differ: nothing copied
    assert adopt_finished_run(stages, "train molma", src, "k-src", "train search", dst, "k-dst")
    assert (dst / "final" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert yaml.safe_load((dst / "config.yaml").read_text())["out"] == str(dst)
    assert stages.is_done("train search", dst, "k-dst") and (dst / ".stage-key").read_text().strip() == "k-dst"
    assert not adopt_finished_run(stages, "train molma", src, "k-src", "train search", dst, "k-dst")  # done


def test_lr_search_chooses_on_validation_prompts_and_its_run_becomes_the_main_run(setup, capsys):
    from molma.experiment import choose_learning_rate, run_experiment

    root, base = setup
    config = yaml.safe_load(base.read_text())
    config.update(out=str(root / "out-lr"), algo_train={}, rm_safe_candidates=[], sweep_weights=[0.5],
                  soup_weights=[], lr_search={"lrs": [1e-3, 3e-2], "algos": {"molma": [], "so-weighted": []},
                                              "seeds": [0, 1], "max_kl": 0.5})
    path = root / "experiment-lr.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_experiment(str(path))
    capsys.readouterr()
    selection = json.loads((out / "lr-search" / "selection.json").read_text())
    assert set(selection["algos"]) == {"molma", "so-weighted"}
    validation = {normalise_prompt(json.loads(line)["prompt"]) for pool in ("help", "safe")
                  for line in (out / "data" / f"{pool}-validation.jsonl").read_text().splitlines()}
    assert selection["n_prompts"] == len(validation)
    answered = {normalise_prompt(json.loads(line)["prompt"])
                for line in (out / "lr-search" / "eval" / "responses.jsonl").read_text().splitlines()}
    assert answered == validation  # the choice never sees a held-out prompt
    for record in selection["algos"].values():
        assert [c["lr"] for c in record["candidates"]] == [1e-3, 3e-2]
        gains, kl = {}, {}
        for c in record["candidates"]:  # the gains are the two seeds' mean, the KL their larger one
            assert [r["seed"] for r in c["seeds"]] == [0, 1]
            gains[c["lr"]] = {o: (c["seeds"][0]["vs_reference"][o]["mean_diff"]
                                  + c["seeds"][1]["vs_reference"][o]["mean_diff"]) / 2 for o in ("help", "safe")}
            kl[c["lr"]] = max(r["kl"] for r in c["seeds"])
            assert c["gain"] == pytest.approx(gains[c["lr"]]) and c["kl_max"] == pytest.approx(kl[c["lr"]])
        assert record["chosen_lr"] == choose_learning_rate(gains, kl, max_kl=0.5)
    chosen = {a: r["chosen_lr"] for a, r in selection["algos"].items()}
    lrs = {name: yaml.safe_load((out / "runs" / name / "config.yaml").read_text())["lr"]
           for name in ("molma", "molma-s1", "so-weighted")}
    assert lrs == {"molma": chosen["molma"], "molma-s1": chosen["molma"], "so-weighted": chosen["so-weighted"]}
    # the main seed's run is the search's run at the chosen rate, copied, not trained again
    marker = json.loads((out / ".stages" / "train-molma.json").read_text())
    assert marker["copied_from"].endswith(f"molma-lr{chosen['molma']:g}")
    marker = json.loads((out / ".stages" / "train-molma-s1.json").read_text())  # the extra seed's too
    assert marker["copied_from"].endswith(f"molma-lr{chosen['molma']:g}-s1")
    assert yaml.safe_load((out / "runs" / "molma" / "config.yaml").read_text())["out"] == str(out / "runs" / "molma")
    assert json.loads((out / "experiment.json").read_text())["chosen_lr"]["so-weighted"] == chosen["so-weighted"]
    run_experiment(str(path))  # a second invocation reuses the search too
    assert "running" not in capsys.readouterr().out


@pytest.mark.parametrize("path, kind", [("configs/cpu/experiment.yaml", "experiment"),
                                        ("configs/cpu/experiment-extended.yaml", "extended"),
                                        ("configs/demo.yaml", "demo")])
def test_shipped_pipeline_configs_load_with_every_stage_setting_checked(path, kind):
    """The configs the README runs load (every train / rm / lr_search key is checked when they do)."""
    from molma.config import load_config
    from molma.demo import DemoConfig
    from molma.experiment import ExperimentConfig, plan_runs

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(DemoConfig if kind == "demo" else ExperimentConfig, str(root / path))
    runs, sweep, pareto = plan_runs(cfg)
    assert "molma" in runs and cfg.extra_seeds.get("molma") == ([1] if kind != "demo" else None)
    if kind == "experiment":  # the paper's methods, two seeds, both sweeps: 13 runs (sized to 2 h)
        assert set(cfg.algos) == {"molma", "so-help", "so-safe", "so-weighted", "so-piecewise", "gapo"}
        assert len(runs) == 13 and not cfg.lr_search and not cfg.soup_weights
        assert cfg.train["lr"] == 3e-3 and cfg.algo_train == {"gapo": {"lr": 1e-3}, "pgapo": {"lr": 1e-3}}
    if kind == "extended":  # the core experiment plus the modern baselines, soups and the lr search
        core = load_config(ExperimentConfig, str(root / "configs/cpu/experiment.yaml"))
        assert set(cfg.algos) > set(core.algos) and cfg.rm_safe == core.rm_safe and cfg.out != core.out
        assert set(cfg.lr_search["algos"]) == {"molma", "so-weighted"} and len(cfg.lr_search["lrs"]) >= 2
        assert cfg.lr_search["seeds"] == [0, 1] and cfg.soup_weights
        assert cfg.algo_train["gapo"] == {"lr": 1e-3} and cfg.algo_train["safe-rlhf"] == {"lr": 1e-3}


def test_rm_safe_as_a_weight_average_of_seeds_scores_every_member_and_resumes(setup, capsys, tmp_path):
    """rm_safe_seeds: RMsafe is the uniform weight average of one member per seed (WARM); each member is scored
    on the held-out sets for the record; members finished before (a killed judges stage) are not retrained."""
    from molma.config import load_config
    from molma.experiment import ExperimentConfig, train_judges
    from molma.rewards.averaging import read_weights

    root, path = setup
    cfg = load_config(ExperimentConfig, str(path), ["rm_safe_candidates=[]", "rm_safe_seeds=[0,1]", "workers=1"])
    out = tmp_path / "rm"
    train_judges(cfg, out)
    members = json.loads((out / "members" / "members.json").read_text())
    assert members["seeds"] == [0, 1]
    label = "HH-RLHF harmless (validation dialogues)"
    assert all(0.0 <= m[label]["accuracy"] <= 1.0 for m in members["members"].values())
    average = read_weights(out / "rm-safe")
    first, second = (read_weights(out / "members" / f"rm-safe-seed{s}") for s in (0, 1))
    key = next(k for k in average if k.startswith("score."))
    torch.testing.assert_close(average[key], (first[key] + second[key]) / 2)
    rows = json.loads((out / "results.json").read_text())
    assert {(r["model"], r["data"]) for r in rows} >= {("RMsafe", label), ("RMhelp", label)}
    capsys.readouterr()
    stamp = (out / "members" / "rm-safe-seed1" / "model.safetensors").stat().st_mtime_ns
    train_judges(cfg, out)  # as after a kill: every model is there already
    assert capsys.readouterr().out.count("trained before with these settings, reused") == 3
    assert (out / "members" / "rm-safe-seed1" / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("overrides, message", [
    (["rm_safe_seeds=[0,1]"], "exclude each other"),
    (["rm_safe_candidates=[]", "rm_safe_seeds=[3]"], "two or more different seeds"),
    (["rm_safe_candidates=[]", "rm_safe_seeds=[1,1]"], "two or more different seeds"),
])
def test_rm_safe_seeds_are_checked_before_anything_runs(setup, overrides, message):
    from molma.config import load_config
    from molma.experiment import ExperimentConfig

    _, path = setup
    with pytest.raises(ValueError, match=message):
        load_config(ExperimentConfig, str(path), overrides)


def test_weight_average_members_share_one_frozen_trunk_forward(setup, tmp_path):
    """With a frozen bottom (train_top_layers) the members read the trunk's features, computed once by the workers
    in shards; each member is the model it would be without them (up to rounding); the shards are removed."""
    from safetensors.torch import load_file

    from molma.config import load_config
    from molma.experiment import ExperimentConfig, judge_pairs, train_judges
    from molma.rewards import RewardTrainConfig, train_reward_model

    root, path = setup
    cfg = load_config(ExperimentConfig, str(path), ["rm_safe_candidates=[]", "rm_safe_seeds=[0,1,2]", "workers=2",
                                                    "rm_safe.train_top_layers=1"])
    out = tmp_path / "rm"
    train_judges(cfg, out)
    assert not (out / "members" / ".trunk").exists()
    for seed in (0, 1, 2):
        meta = json.loads((out / "members" / f"rm-safe-seed{seed}" / "molma_rm.json").read_text())
        assert meta["trunk_features"]["depth"] == 1
    help_meta = json.loads((out / "rm-help" / "molma_rm.json").read_text())
    assert help_meta["trunk_features"] is None
    member_cfg = json.loads((out / "members" / "rm-safe-seed1" / "molma_rm.json").read_text())["config"]
    import dataclasses

    fields = {f.name for f in dataclasses.fields(RewardTrainConfig)}
    plain_cfg = RewardTrainConfig(**{**{k: v for k, v in member_cfg.items() if k in fields},
                                     "output_dir": str(tmp_path / "plain")})
    plain = load_file(train_reward_model(plain_cfg, pairs=judge_pairs(cfg)[0]["safe"]) / "model.safetensors")
    cached = load_file(out / "members" / "rm-safe-seed1" / "model.safetensors")
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], atol=1e-4, rtol=1e-4, msg=key)
