"""Models named by hub id (``THUDM/chatglm3-6b``): the local cache first, else a download.

``snapshot_download`` resumes interrupted downloads (its ``.incomplete`` files) and shows a
progress bar per file. When a repository has safetensors weights, the ``.bin`` copies are not
fetched (ChatGLM3-6B ships both: 12.5 GB saved). Offline (``HF_HUB_OFFLINE=1``, or the hub
cannot be reached) the error names the repository, the cache folder looked in, and how to pass
a local folder instead.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from configs.errors import Unavailable

log = logging.getLogger(__name__)

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Pickled weights are only fetched when a repository has no safetensors.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx*", "*.gguf")


class HubModelUnavailable(Unavailable):
    """A hub id is neither cached nor downloadable from here."""


def is_hub_id(text: str) -> bool:
    """``org/name`` that is not an existing path."""
    return bool(HUB_ID_RE.match(text)) and not Path(text).expanduser().exists()


def cached_snapshot(repo_id: str, *, revision: str | None = None) -> Path | None:
    """The cached folder of ``repo_id``, or None; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached, or a partial cache: the caller downloads or explains
        return None


def ignore_patterns(files: list[str]) -> list[str]:
    """What not to download from a repository holding ``files``: pickles when safetensors exist."""
    if any(name.endswith(".safetensors") for name in files):
        return list(PICKLE_PATTERNS)
    return ["*.h5", "*.msgpack", "*.onnx*", "*.gguf"]


def download_snapshot(repo_id: str, *, revision: str | None = None) -> Path:
    """Download ``repo_id`` into the HF cache (resuming a partial download) and return its folder."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
        log.warning("downloading %s from the Hugging Face hub (resumable; set llm.model_path to a folder to skip)", repo_id)
        return Path(snapshot_download(repo_id, revision=revision, ignore_patterns=ignore_patterns(files)))
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError, *transport_errors()) as e:
        raise HubModelUnavailable(offline_message(repo_id, reason=e)) from e


def transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection errors: huggingface_hub 1.x talks through httpx, whose
    ``ConnectError`` (no network, DNS failure) is no ``OSError``, so it went up as a traceback."""
    try:
        import httpx
    except ImportError:  # huggingface_hub 0.x: requests, whose errors are OSErrors
        return ()
    return (httpx.HTTPError,)


def resolve_model(repo_id: str, *, revision: str | None = None, download: bool = True) -> Path:
    """The local folder for hub id ``repo_id``: cached, else downloaded when allowed and reachable."""
    cached = cached_snapshot(repo_id, revision=revision)
    if cached is not None:
        return cached
    if hub_offline():
        raise HubModelUnavailable(offline_message(repo_id, reason=None))
    if not download:
        raise HubModelUnavailable(offline_message(repo_id, reason=None, why="this use reads only the cache"))
    return download_snapshot(repo_id, revision=revision)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: never reach for the network."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def offline_message(repo_id: str, *, reason: BaseException | None, why: str | None = None) -> str:
    """One line: what was looked for, where, why it was not fetched, and how to pass a local folder.
    ``why`` overrides the cause (else: the hub unreachable when ``reason``, else offline mode)."""
    from huggingface_hub import constants

    if why is None and reason is None:
        why = "offline mode is on (HF_HUB_OFFLINE)"
    elif why is None:
        why = f"the hub cannot be reached ({type(reason).__name__})"
    return (
        f"model {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
        f"download it where the hub is reachable (`hf download {repo_id} --local-dir DIR`), copy DIR here "
        "and set llm.model_path (--model-path) to DIR"
    )
