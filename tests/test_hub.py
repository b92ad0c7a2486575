"""Models by hub id (llm.hub): cache first, a resumable safetensors-first download, and the
offline message. No network: the cache is written by hand in the hub's own layout, and the
download is checked through huggingface_hub's functions replaced by recorders."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm import hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(cache: Path, repo_id: str) -> Path:
    """A hub cache entry exactly as huggingface_hub lays it out (refs/main -> snapshots/COMMIT)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    return snap


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_cached_model_resolves_offline(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = fake_cache(hub_cache, "THUDM/chatglm3-6b")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert hub.resolve_model("THUDM/chatglm3-6b") == snap


def test_offline_miss_names_repo_cache_and_fix(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubModelUnavailable) as info:
        hub.resolve_model("THUDM/chatglm3-6b")
    text = str(info.value)
    assert "THUDM/chatglm3-6b" in text and str(hub_cache) in text and "--model-path" in text and "\n" not in text


def test_download_prefers_safetensors(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ChatGLM3-6B's repository holds .bin and .safetensors shards: only the latter are fetched."""
    calls: dict[str, object] = {}

    def list_repo_files(self: object, repo_id: str, revision: str | None = None) -> list[str]:
        return ["config.json", "model-00001-of-00007.safetensors", "pytorch_model-00001-of-00007.bin", "tokenizer.model"]

    def snapshot_download(repo_id: str, **kwargs: object) -> str:
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        calls.update(kwargs, repo_id=repo_id)
        return str(hub_cache / "done")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", list_repo_files)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    assert hub.resolve_model("THUDM/chatglm3-6b") == hub_cache / "done"
    assert calls["repo_id"] == "THUDM/chatglm3-6b" and "*.bin" in calls["ignore_patterns"]  # type: ignore[operator]
    assert hub.ignore_patterns(["pytorch_model.bin"]) and "*.bin" not in hub.ignore_patterns(["pytorch_model.bin"])


def test_unreachable_hub_is_one_unavailable_line(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def list_repo_files(self: object, repo_id: str, revision: str | None = None) -> list[str]:
        raise OSError("Name or service not known")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", list_repo_files)
    with pytest.raises(hub.HubModelUnavailable, match="cannot be reached"):
        hub.resolve_model("THUDM/chatglm3-6b")


def test_hub_ids_are_not_paths(tmp_path: Path) -> None:
    assert hub.is_hub_id("THUDM/chatglm3-6b")
    assert not hub.is_hub_id(str(tmp_path))
    assert not hub.is_hub_id("/abs/path")
