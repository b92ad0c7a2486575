"""``load_llm(settings)``: the chat model ``llm.backend`` asks for, ready for the chains.

``local`` loads ``llm.model_path`` into this process (``ChatGLM``); ``openai`` talks to an
OpenAI-compatible server at ``llm.base_url`` (``OpenAICompatibleChat``), counting tokens with
the tokenizer in ``llm.model_path`` when that is set (only the tokenizer files are read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseLanguageModel

from configs.settings import Settings
from llm.errors import ModelLoadError

__all__ = ["llm_configured", "load_counting_tokenizer", "load_llm"]


def llm_configured(settings: Settings) -> bool:
    """Whether the settings name a chat model at all (UIs fall back to retrieval-only when not)."""
    if settings.llm.backend == "openai":
        return bool(settings.llm.base_url)
    return bool(settings.llm.model_path)


def load_llm(settings: Settings) -> BaseLanguageModel:
    """The chat model of ``settings.llm``; raises ``ModelLoadError`` with the fix when it cannot."""
    llm = settings.llm
    if llm.backend == "openai":
        from llm.openai_compatible_chat import OpenAICompatibleChat

        tokenizer = load_counting_tokenizer(llm.model_path, trust_remote_code=llm.trust_remote_code) if llm.model_path else None
        return OpenAICompatibleChat.from_settings(llm, tokenizer=tokenizer)
    from llm.chatglm import ChatGLM

    return ChatGLM.from_settings(llm)


def load_counting_tokenizer(path: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model folder, without its weights (original ChatGLM2/3 folders included)."""
    from llm.loading import find_model_folder

    folder = find_model_folder(path, download=False)  # a tokenizer alone never downloads a whole model
    config = _read_config(folder)
    try:
        if config.get("model_type") == "chatglm":
            from llm.chatglm_tokenizer import detect_variant, load_chatglm_tokenizer

            return load_chatglm_tokenizer(folder, variant=detect_variant(folder, config))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load a tokenizer from {folder} for counting tokens ({' '.join(str(e).split())}); "
            "point llm.model_path at the served model's folder, or leave it empty to estimate"
        ) from e


def _read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` if the folder has one (a tokenizer-only folder may not)."""
    from llm.loading import read_model_config

    if not (folder / "config.json").is_file():
        return {}
    return read_model_config(folder)
