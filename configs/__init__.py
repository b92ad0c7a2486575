"""glmkb configuration: the settings model and its loader."""

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

__all__ = [
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
]
