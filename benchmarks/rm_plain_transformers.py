"""Benchmark: a molma reward model's scores under plain transformers vs ``RewardModel.score``.

Plain transformers = what a transformers user writes with the checkpoint folder alone:
``tokenizer.apply_chat_template(messages, return_dict=True, return_tensors="pt")`` and
``AutoModelForSequenceClassification(...).logits[0, 0]``, one dialogue at a time. Dialogues: the first 6
builtin safety pairs (chosen and rejected: 12). For each folder the JSON gives both score lists, the largest
difference and the pairwise accuracy of each route; ``--upgrade`` also scores a copy upgraded with
``make_checkpoint_plain_compatible`` (and checks molma's scores stay bit-identical).

    .venv/bin/python benchmarks/rm_plain_transformers.py runs/rm-safe [more folders] [--upgrade]

Writes ``benchmarks/results/rm_plain_transformers.json`` (``--out`` to change). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "rm_plain_transformers.json"


def plain_scores(path: Path, prompts: list[str], responses: list[str]) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from molma.data.chat import to_messages

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses):
            messages = [*to_messages(prompt), {"role": "assistant", "content": response.strip()}]
            inputs = tok.apply_chat_template(messages, return_dict=True, return_tensors="pt")
            out.append(model(**inputs).logits[0, 0].item())
    return out


def compare(path: Path, prompts: list[str], responses: list[str]) -> dict:
    from molma.rewards import RewardModel

    n = len(prompts) // 2
    ours = RewardModel.from_pretrained(path).score(prompts, responses).tolist()
    plain = plain_scores(path, prompts, responses)
    meta_file = path / "molma_rm.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return {
        "folder": str(path), "scoring_record": meta.get("scoring"),
        "molma": [round(x, 4) for x in ours], "plain_transformers": [round(x, 4) for x in plain],
        "max_abs_difference": max(abs(a - b) for a, b in zip(ours, plain)),
        "accuracy_molma": sum(ours[i] > ours[n + i] for i in range(n)) / n,
        "accuracy_plain": sum(plain[i] > plain[n + i] for i in range(n)) / n,
        "_scores": ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--upgrade", action="store_true", help="also score an upgraded copy of each folder")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from molma.data import load_builtin_preferences
    from molma.rewards.model import make_checkpoint_plain_compatible

    pairs = load_builtin_preferences("safe")[:6]
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    results = []
    for folder in args.folders:
        row = compare(folder, prompts, responses)
        if args.upgrade:
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / folder.name
                shutil.copytree(folder, copy)
                make_checkpoint_plain_compatible(copy)
                upgraded = compare(copy, prompts, responses)
            row["upgraded"] = {"molma_bit_identical": upgraded.pop("_scores") == row["_scores"],
                               **{k: v for k, v in upgraded.items() if k != "folder"}}
        row.pop("_scores")
        results.append(row)
        print(json.dumps(row, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dialogues": "builtin:safe pairs 0-5, chosen then rejected",
                                    "plain_transformers": "apply_chat_template(return_dict=True) + "
                                                          "AutoModelForSequenceClassification, one at a time",
                                    "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
