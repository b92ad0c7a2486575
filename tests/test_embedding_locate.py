"""Where embedding models come from: local folder, HF cache, then (only if allowed) a download."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from kb.embedding import locate_model
from kb.errors import EmbeddingModelError


def test_offline_missing_model_names_cache_and_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(EmbeddingModelError) as info:
        locate_model("glmkb-test-org/no-such-embedding-model")
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and constants.HF_HUB_CACHE in msg
    assert "--embedding none" in msg and "--embedding PATH" in msg


def test_online_missing_model_tries_download_then_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's networked machine downloads the default model on first use; when that fails
    (no network here, or no such repo) the error is immediate and says how to fix it."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls: list[dict] = []
    import huggingface_hub

    real = huggingface_hub.snapshot_download

    def spy(repo_id: str, **kwargs: object) -> str:
        calls.append(kwargs)
        if not kwargs.get("local_files_only"):
            raise OSError("Name or service not known")  # what an unreachable hub answers
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    with pytest.raises(EmbeddingModelError, match="could not be downloaded.*--embedding none"):
        locate_model("glmkb-test-org/no-such-embedding-model")
    assert [c.get("local_files_only", False) for c in calls] == [True, False]


def test_local_folder_wins(tmp_path) -> None:
    assert locate_model(str(tmp_path)) == str(tmp_path.resolve())
