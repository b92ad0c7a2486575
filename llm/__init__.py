"""glmkb llm package: a LangChain LLM over local ChatGLM-family (and other chat) models, and a
client for OpenAI-compatible model servers (``llm.backend: openai``).

Exports load lazily: ``from llm import ChatGLM`` does not import the OpenAI client (or torch
for ``from llm import OpenAICompatibleChat``).
"""

from __future__ import annotations

from configs.lazy import lazy_exports

_EXPORTS = {
    "ChatGLM": "llm.chatglm",
    "ChatGLMChat": "llm.chatglm_chat",
    "cancel_scope": "llm.cancellation",
    "cancellable_stream": "llm.cancellation",
    "ModelLoadError": "llm.errors",
    "llm_configured": "llm.factory",
    "load_llm": "llm.factory",
    "load_model_and_tokenizer": "llm.loading",
    "LLMServerError": "llm.openai_compatible_chat",
    "OpenAICompatibleChat": "llm.openai_compatible_chat",
    "estimate_tokens": "llm.openai_compatible_chat",
    "load_chatglm_legacy": "llm.chatglm_legacy",
    "convert_checkpoint": "llm.chatglm_legacy",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
