"""glmkb configuration: the settings model and its loader."""

from configs.settings import (
    ChunkingSettings,
    EmbeddingSettings,
    GenerationSettings,
    LLMSettings,
    RetrievalSettings,
    Settings,
    SettingsError,
    UISettings,
    load_settings,
)

__all__ = [
    "ChunkingSettings",
    "EmbeddingSettings",
    "GenerationSettings",
    "LLMSettings",
    "RetrievalSettings",
    "Settings",
    "SettingsError",
    "UISettings",
    "load_settings",
]
