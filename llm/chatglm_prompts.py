"""``PromptRendering``: a ``ChatGLM``'s chat as the model reads it (a mixin).

The chat (system prompt, history, the prompt) as role/content messages with special-token strings
neutralised (``llm.chat_messages``), rendered through the tokenizer's chat template, and token
counts by the real tokenizer. ``llm.chatglm_chat.ChatGLMChat`` renders its messages here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage

from llm.chat_messages import prompt_messages
from llm.reasoning import close_reasoning

__all__ = ["History", "PromptRendering"]

History = Sequence[tuple[str, str] | BaseMessage]


class PromptRendering:
    """Chat messages, the chat template and tokens: the prompt half of ``ChatGLM``."""

    if TYPE_CHECKING:  # ChatGLM's fields this mixin reads
        tokenizer: Any
        enable_thinking: bool | None

    def chat_messages(
        self, prompt: str, *, history: History | None = None, system_prompt: str | None = None
    ) -> list[dict[str, str]]:
        """The chat as role/content messages: optional system prompt, history, the prompt.

        ``history`` holds ``(user, assistant)`` pairs or LangChain messages. Contents are plain
        text: special-token strings in them (``<|system|>`` in a document, say) are neutralised
        so they cannot forge turns once the template is tokenized.
        """
        return prompt_messages(prompt, history=history, system_prompt=system_prompt, tokenizer=self.tokenizer)

    def render_prompt(
        self,
        prompt: str,
        *,
        history: History | None = None,
        system_prompt: str | None = None,
        enable_thinking: bool | None = None,
    ) -> str:
        """The exact model input text: the chat rendered through the tokenizer's chat template."""
        messages = self.chat_messages(prompt, history=history, system_prompt=system_prompt)
        return self.render_messages(messages, enable_thinking=enable_thinking)

    def render_messages(self, messages: list[dict[str, str]], *, enable_thinking: bool | None = None) -> str:
        """Role/content messages through the chat template, ending in the assistant's turn.

        ``enable_thinking`` (default: the ``enable_thinking`` field) goes to the template, as Qwen3's and
        GLM-4.5's read it; False also closes a ``<think>`` block the template opens regardless (GLM-Z1),
        so a rewrite or a short answer is not spent on thinking."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; ChatGLM needs a chat model")
        thinking = self.enable_thinking if enable_thinking is None else enable_thinking
        extra = {} if thinking is None else {"enable_thinking": thinking}
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        return close_reasoning(text) if thinking is False else text

    def get_num_tokens(self, text: str) -> int:
        """Number of model tokens in ``text`` (the real tokenizer, no special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def get_token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))
