"""Shared pytest set-up. Fixture modules live in tests/fixtures/ and are loaded here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach for a model hub in tests: everything is built locally in fixtures.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.corpus",
    "tests.fixtures.models",
    "tests.fixtures.kb",
    "tests.fixtures.chatglm_legacy",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_glmkb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests away from the user's config and knowledge bases."""
    for name in list(os.environ):
        if name.startswith("GLMKB_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLMKB_KB_ROOT", str(tmp_path / "kb_root"))
