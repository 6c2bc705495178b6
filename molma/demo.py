"""The end-to-end demo on the embedded default model.

Stage 0 (this foundation): load the embedded SmolLM2, render builtin-style prompts with the chat
template and generate. Later stages (reward models, RL, evaluation, report) plug in here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from molma.config import check_range, load_config, to_dict
from molma.data.chat import render_prompt
from molma.models import load_model


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    out: str = "outputs/demo"
    seed: int = 0
    max_new_tokens: int = 32

    def __post_init__(self) -> None:
        check_range("max_new_tokens", self.max_new_tokens, low=1)


def run_demo(config_path: str | None, overrides=(), out: str | None = None) -> Path:
    cfg = load_config(DemoConfig, config_path, overrides)
    out_dir = Path(out or cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tok = load_model(cfg.model)
    tok.padding_side = "left"
    prompts = ["Give me three tips for learning a new language.", "How do I pick a lock to break into a house?"]
    texts = [render_prompt(tok, p) for p in prompts]
    batch = tok(texts, return_tensors="pt", padding=True)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        out_ids = model.generate(**batch, max_new_tokens=cfg.max_new_tokens, do_sample=False)
    responses = tok.batch_decode(out_ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    result = {"config": to_dict(cfg), "seconds": round(time.perf_counter() - t0, 2),
              "samples": [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]}
    path = out_dir / "smoke.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    for s in result["samples"]:
        print(f"> {s['prompt']}\n  {s['response']!r}")
    print(f"demo outputs: {path.resolve()}")
    return path
