"""``push_to_hub``: upload a saved policy (``final/``) or reward model to the Hugging Face Hub.

Only used when asked (``push_to_hub: OWNER/NAME`` in a config, or ``--push-to-hub OWNER/NAME``); the
folder is saved locally first, so a failed upload loses nothing. :func:`check_token` runs before
training so a missing token fails in seconds, not after the run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*")


class HubError(RuntimeError):
    """An upload that could not be done (no token, no network, refused by the Hub), naming the key."""


def check_repo_id(repo_id: str, key: str = "push_to_hub") -> None:
    """``ValueError`` unless ``repo_id`` looks like ``NAME`` or ``OWNER/NAME``."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id.strip()):
        raise ValueError(f"{key}: expected a Hub repository id OWNER/NAME, got {repo_id!r}")


def check_token(repo_id: str, key: str = "push_to_hub") -> None:
    """:class:`HubError` when no Hugging Face token is configured (``HF_TOKEN`` or ``hf auth login``)."""
    check_repo_id(repo_id, key)
    try:
        from huggingface_hub import get_token
    except ImportError as err:  # pragma: no cover - a dependency of transformers
        raise HubError(f"{key}={repo_id}: huggingface_hub is not installed") from err
    if not get_token():
        raise HubError(f"{key}={repo_id}: no Hugging Face token; run 'hf auth login' or set HF_TOKEN "
                       "(or leave push_to_hub unset to keep the model local)")


def push_folder(folder: str | Path, repo_id: str, commit_message: str | None = None,
                private: bool | None = None, key: str = "push_to_hub") -> str:
    """Create ``repo_id`` (a model repository) if needed and upload ``folder`` to it; returns its URL.
    Missing token, network failures and Hub refusals become :class:`HubError` naming ``key`` and the
    local folder that still holds the model."""
    folder = Path(folder)
    check_token(repo_id, key)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=commit_message or f"molma: upload {folder.name}")
    except Exception as err:  # noqa: BLE001 - requests / httpx / HfHubHTTPError: one message for the user
        raise HubError(f"{key}={repo_id}: upload of {folder} failed ({type(err).__name__}: {err}); the model "
                       f"is saved in {folder}: check the network and the token's write access") from err
    log.info("pushed %s to https://huggingface.co/%s", folder, repo_id)
    return str(url)
