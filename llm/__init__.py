"""glmkb llm package: a LangChain LLM over local ChatGLM-family (and other chat) models."""

from llm.chatglm import ChatGLM
from llm.errors import ModelLoadError
from llm.loading import load_model_and_tokenizer

__all__ = ["ChatGLM", "ModelLoadError", "load_model_and_tokenizer"]
