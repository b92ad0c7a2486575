"""Loading the model folders users bring: regression tests for bugs found by the loading sweep.

Each test names the bug it guards against. No network, no weights: the tiny GLM folder of
``tests.fixtures.models`` and hand-written files only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llm import hub
from llm.errors import ModelLoadError
from llm.loading import load_model_and_tokenizer

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize 4976698672\n".format("0" * 64)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    """A private copy of a session fixture folder (tests damage it)."""
    return Path(shutil.copytree(folder, tmp_path / "model"))


def load_error(folder: Path) -> str:
    """The one-line ModelLoadError loading ``folder`` on the CPU gives."""
    with pytest.raises(ModelLoadError) as info:
        load_model_and_tokenizer(folder, device="cpu")
    return str(info.value)


def test_unreachable_hub_over_httpx_is_one_unavailable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: with no network (and HF_HUB_OFFLINE unset) huggingface_hub 1.x raises httpx.ConnectError,
    no OSError, so `--model-path THUDM/chatglm3-6b` ended in a traceback instead of the offline line."""
    import httpx

    def list_repo_files(self: object, repo_id: str, revision: str | None = None) -> list[str]:
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "cached_snapshot", lambda repo_id, revision=None: None)
    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", list_repo_files)
    with pytest.raises(hub.HubModelUnavailable, match="cannot be reached .ConnectError.*--model-path"):
        hub.resolve_model("THUDM/chatglm3-6b")


def test_cache_only_miss_does_not_claim_offline_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: a cache-only lookup (the counting tokenizer of backend openai) said "offline mode is on
    (HF_HUB_OFFLINE)" when it was not, sending users to an environment variable they never set."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "cached_snapshot", lambda repo_id, revision=None: None)
    with pytest.raises(hub.HubModelUnavailable) as info:
        hub.resolve_model("THUDM/glm-4-9b-chat", download=False)
    assert "HF_HUB_OFFLINE" not in str(info.value) and "reads only the cache" in str(info.value)


def test_truncated_safetensors_shard_is_one_line(tiny_glm_dir: Path, tmp_path: Path) -> None:
    """Bug: a native folder with a truncated safetensors file (an interrupted download) raised
    safetensors' SafetensorError, a plain Exception, as a traceback."""
    folder = copy_of(tiny_glm_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    text = load_error(folder)
    assert "not a readable safetensors file" in text and "download" in text and "\n" not in text


def test_git_lfs_pointer_in_a_native_folder(tiny_glm_dir: Path, tmp_path: Path) -> None:
    """Bug: weights cloned without git-lfs (130-byte pointer files) passed the weights check and
    ended in a SafetensorError traceback ("header too large")."""
    folder = copy_of(tiny_glm_dir, tmp_path)
    (folder / "model.safetensors").write_text(LFS_POINTER, encoding="utf-8")
    assert "git-lfs pointer" in load_error(folder)


def test_git_lfs_pointer_shard_is_not_called_unsafe_pickle(tmp_path: Path) -> None:
    """Bug: a .bin shard of an original ChatGLM folder that is a git-lfs pointer was reported as
    "holds more than plain tensors; refusing to unpickle it (it could run code)" (also by
    `ingest convert`, which reads shards without the loader's folder check)."""
    from llm.chatglm_legacy_weights import iter_shard

    shard = tmp_path / "pytorch_model-00001-of-00007.bin"
    shard.write_text(LFS_POINTER, encoding="utf-8")
    with pytest.raises(ModelLoadError, match="git-lfs pointer") as info:
        list(iter_shard(shard))
    assert "could run code" not in str(info.value)


def test_config_json_that_is_not_an_object(tmp_path: Path) -> None:
    """Bug: a config.json holding a JSON list (or string) raised AttributeError ('list' object has no
    attribute 'get') from the loader, a traceback on the command line."""
    (tmp_path / "config.json").write_text(json.dumps(["glm"]), encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 2048)
    assert "holds a JSON list" in load_error(tmp_path)


def test_missing_glm4_tokenizer_is_not_called_sentencepiece(tmp_path: Path) -> None:
    """Bug: an original GLM-4 folder without tokenizer.model was told that ChatGLM2/3 folders keep a
    sentencepiece tokenizer there; GLM-4's is a tiktoken rank file."""
    from llm.chatglm_tokenizer import read_sentencepiece_model

    with pytest.raises(ModelLoadError, match="GLM-4") as info:
        read_sentencepiece_model(tmp_path / "tokenizer.model")
    assert "tiktoken" in str(info.value)
