"""glmkb configuration: the settings model and its loader.

Names import on first use (``configs.lazy``), so ``kb`` and ``llm`` can use ``configs.lazy``
and ``configs.errors`` without loading the settings model, which imports ``kb.types``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from configs.lazy import lazy_exports

_EXPORTS = {
    name: "configs.settings"
    for name in (
        "APISettings",
        "ChunkingSettings",
        "EmbeddingSettings",
        "GenerationSettings",
        "KBSettings",
        "LLMSettings",
        "RetrievalSettings",
        "Settings",
        "SettingsError",
        "UISettings",
        "load_settings",
    )
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from configs.settings import (
        APISettings,
        ChunkingSettings,
        EmbeddingSettings,
        GenerationSettings,
        KBSettings,
        LLMSettings,
        RetrievalSettings,
        Settings,
        SettingsError,
        UISettings,
        load_settings,
    )
