"""Step 2 of a bundle: the chat model, embedding model and adapters, copied as folders.

A hub id (``THUDM/chatglm3-6b``) is fetched with ``huggingface_hub.snapshot_download`` first
(the local cache answers when it already has it); the copy follows symlinks so the bundle
holds real files, not links into this machine's cache.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from app.bundle.errors import BundleError, DownloadError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Hub caches and git checkouts carry these; the model never reads them.
SKIP = shutil.ignore_patterns(".git", ".cache", ".huggingface", "__pycache__", "*.lock")


def resolve_model(ref: str) -> Path:
    """A local folder for ``ref``: the folder itself, or the hub snapshot of a repo id."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise BundleError(f"{ref} is a file; give the model's folder")
    if not _HUB_ID.match(ref):
        raise BundleError(f"model {ref!r} is neither a folder nor a hub id like THUDM/chatglm3-6b")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref))
    except Exception as e:  # offline, unknown repo, gated repo: all "could not fetch it"
        raise DownloadError(f"could not download {ref} from the model hub ({type(e).__name__}); "
                            "download it on a connected machine and pass its folder") from e


def copy_model(ref: str, dest: Path) -> Path:
    """Copy the model ``ref`` (folder or hub id) to ``dest``; returns ``dest``."""
    source = resolve_model(ref)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, symlinks=False, ignore=skip_for(source))
    log.info("copied %s to %s", source, dest)
    return dest


def skip_for(source: Path):  # noqa: ANN201 - shutil's ignore callable
    """What not to copy from ``source``: hub/git clutter, and the ``.bin`` copy of the weights
    when safetensors are there too (THUDM/chatglm3-6b ships both: 2 x 12.5 GB; glmkb's
    loaders read the safetensors first)."""
    has_safetensors = any(source.glob("model*.safetensors"))

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(SKIP(folder, names))
        if has_safetensors and Path(folder) == source:
            skipped |= {n for n in names if n.startswith("pytorch_model") and (n.endswith(".bin") or n.endswith(".bin.index.json"))}
        return skipped

    return ignore


def model_card_licence(folder: Path) -> str:
    """The licence a model card (README.md front matter) declares, else a LICENSE file's first line."""
    card = folder / "README.md"
    if card.is_file():
        licence = _front_matter_licence(card.read_text(encoding="utf-8", errors="replace"))
        if licence:
            return licence
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "MODEL_LICENSE"):
        if (folder / name).is_file():
            first = next((ln.strip() for ln in (folder / name).read_text(errors="replace").splitlines() if ln.strip()), "")
            return f"{first[:80]} (file {name})"
    return "not stated (no model card licence): check the model's page before use"


def _front_matter_licence(text: str) -> str | None:
    if not text.startswith("---"):
        return None
    import yaml

    head = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict) or not meta.get("license"):
        return None
    licence = str(meta["license"])
    if meta.get("license_name"):
        licence += f" ({meta['license_name']})"
    return licence
