"""Chat-template rendering: prompts (plain text or HH-style transcripts) to model input text.

HH-RLHF prompts are transcripts ``\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:``;
:func:`to_messages` turns them into chat messages so multi-turn context is kept. Any other text is one
user message. The same rendering is used for generation (RL, evaluation) and for reward-model scoring,
so the reward model sees exactly what the policy was conditioned on.
"""

from __future__ import annotations

import re

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def to_messages(prompt: str) -> list[dict[str, str]]:
    """Messages for ``prompt``; an HH transcript's trailing empty ``Assistant:`` turn is dropped (it is
    where the response goes)."""
    text = prompt if prompt.startswith("\n\n") else "\n\n" + prompt
    if not re.match(r"\n\n(Human|Assistant):", text):
        return [{"role": "user", "content": prompt.strip()}]
    parts = _TURN.split(text)
    messages = []
    # parts = ["", "Human", "text", "Assistant", "text", ...]
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _ROLE[role], "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def render_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """Chat-templated prompt text, ending where the assistant's reply starts."""
    messages = to_messages(prompt)
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_dialogue(tokenizer, prompt: str, response: str, system: str | None = None) -> str:
    """Chat-templated prompt followed by ``response`` as the assistant's reply (for reward scoring)."""
    messages = to_messages(prompt)
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    messages.append({"role": "assistant", "content": response.strip()})
    return tokenizer.apply_chat_template(messages, tokenize=False)
