"""A toy RL problem with two conflicting rule-based objectives on a tiny model.

The tiny random Llama is first taught (a few seconds of supervised training) to answer with 2-8 words
from a small vocabulary, then EOS. Objective ``long`` rewards more words; objective ``clean`` penalises
the word "bad". Words are drawn uniformly, so a longer answer carries more "bad": optimising length
alone (SO) lowers ``clean``; a multi-objective method can raise both by growing answers without "bad".
"""

from __future__ import annotations

import random

import torch

from molma.data import Prompt
from molma.data.chat import render_prompt
from molma.models import tiny_llama
from molma.rewards import RewardFunction

WORDS = ["apple", "river", "bad", "music"]
PROMPTS = ["Say some words.", "List a few things.", "Name some objects.", "Tell me words."]


def long_reward(prompts: list[str], responses: list[str]) -> list[float]:
    return [min(len(r.split()), 14) / 14 for r in responses]


def clean_reward(prompts: list[str], responses: list[str]) -> list[float]:
    return [-float(sum(w.strip(".,") == "bad" for w in r.split())) / 2 for r in responses]


def objectives() -> list[RewardFunction]:
    return [RewardFunction(long_reward, "long"), RewardFunction(clean_reward, "clean")]


def pools() -> tuple[dict[str, list[Prompt]], dict[str, list[Prompt]]]:
    train = {"help": [Prompt(p, "help") for p in PROMPTS[:2]], "safe": [Prompt(p, "safe") for p in PROMPTS[2:]]}
    return train, train


def toy_policy(steps: int = 80, seed: int = 0):
    """Tiny Llama fine-tuned to answer with a few random words from WORDS (loss on the answers only;
    sequences are left-padded so the answers line up at the end and only their logits are computed)."""
    model, tok = tiny_llama(seed=seed, hidden_size=64, intermediate_size=128)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    tok.padding_side = "left"
    for _ in range(steps):
        texts, answer_lens = [], []
        for _ in range(16):
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) + tok.eos_token
            texts.append(render_prompt(tok, rng.choice(PROMPTS)) + answer)
            answer_lens.append(len(tok(answer, add_special_tokens=False)["input_ids"]))
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        n = max(answer_lens)
        positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**enc, position_ids=positions, logits_to_keep=n + 1).logits[:, :-1]
        targets = enc["input_ids"][:, -n:].clone()
        for i, k in enumerate(answer_lens):
            targets[i, : n - k] = -100
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok


@torch.no_grad()
def mean_rewards(model, tok, n: int = 128, seed: int = 123, max_new_tokens: int = 16) -> dict[str, float]:
    from molma.rl.rollout import GenerationSettings, generate

    texts = [render_prompt(tok, PROMPTS[i % len(PROMPTS)]) for i in range(n)]
    batch, _ = generate(model, tok, texts, GenerationSettings(max_new_tokens=max_new_tokens), seed=seed)
    ids = batch.response_ids.masked_fill(batch.response_mask == 0, tok.pad_token_id)
    responses = tok.batch_decode(ids, skip_special_tokens=True)
    return {o.name: o.score(texts, responses).mean().item() for o in objectives()}
