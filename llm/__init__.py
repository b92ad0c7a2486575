"""glmkb llm package: a LangChain LLM over local ChatGLM-family (and other chat) models, and a
client for OpenAI-compatible model servers (``llm.backend: openai``)."""

from llm.chatglm import ChatGLM
from llm.errors import ModelLoadError
from llm.factory import llm_configured, load_llm
from llm.loading import load_model_and_tokenizer
from llm.openai_compatible_chat import LLMServerError, OpenAICompatibleChat, estimate_tokens

__all__ = [
    "ChatGLM",
    "LLMServerError",
    "ModelLoadError",
    "OpenAICompatibleChat",
    "estimate_tokens",
    "llm_configured",
    "load_llm",
    "load_model_and_tokenizer",
]
