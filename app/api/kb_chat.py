"""Knowledge-base chat for the API: the prompt budget the model's context allows, and the
``usage``/``finish_reason`` of an answer the QA chain generated.

Both are measured through the shared model's chat face (``Services.require_chat_model``:
``ChatGLMChat`` over the local model, the remote chat model itself), whatever face the chain
runs on: prompts as the chat template renders them, exact ``usage_metadata`` where the model
reports it. Issue 17 (API conformance) and issue 20 #8: KB chat sent a 6,150-token prompt to
a 1,024-position model, let ``max_tokens`` run past the context (2,528 tokens), answered no
``usage`` and always ``finish_reason: "stop"``.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import LLMResult

from app.api.chat_jobs import RequestError, context_length, default_max_tokens, openai_usage

__all__ = ["KBBudget", "UsageCounter", "prompt_budget"]

MIN_PROMPT_TOKENS = 16


class KBBudget:
    """``max_new_tokens`` and the chain's ``max_input_tokens`` for one KB chat request."""

    def __init__(self, chat: BaseChatModel, *, max_input_tokens: int, asked: int | None) -> None:
        context = context_length(chat)
        self.context = context
        self.max_new_tokens = int(asked or default_max_tokens(chat) or 0)
        self.max_input_tokens = max_input_tokens
        if context is None:
            return
        # Tokens the chat template adds around a prompt (the system prompt included).
        template = chat.get_num_tokens_from_messages([HumanMessage("")])
        room = context - template - MIN_PROMPT_TOKENS
        if asked is not None:
            if asked > room:
                raise RequestError(
                    f"max_tokens is {asked}, but the model's context holds {context} tokens with the prompt; "
                    f"lower max_tokens (at most {max(room, 0)})",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            self.max_input_tokens = max(MIN_PROMPT_TOKENS, min(max_input_tokens, context - template - asked))
            return
        # No max_tokens asked: the prompt keeps its budget, leaving at least a quarter of the
        # context (or the model's default, if smaller) to the answer, which gets what is left.
        answer_floor = min(self.max_new_tokens, context // 4)
        self.max_input_tokens = max(MIN_PROMPT_TOKENS, min(max_input_tokens, context - template - answer_floor))
        self.max_new_tokens = max(1, min(self.max_new_tokens, context - template - self.max_input_tokens))


class UsageCounter(BaseCallbackHandler):
    """Token counts of every model call in one KB answer (condense + answer, or a whole book's
    map and reduce), and how the last one ended.

    A call whose result carries ``usage_metadata`` (a chat model) counts exactly that; other
    calls (a prompt-string LLM) are counted through ``chat``: each prompt as the chat template
    renders it, the answer re-tokenized, ``finish_reason`` "length" when it used all of
    ``max_new_tokens``.
    """

    def __init__(self, chat: BaseChatModel, *, max_new_tokens: int) -> None:
        self.chat = chat
        self.max_new_tokens = max_new_tokens
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason = "stop"
        self._prompts: dict[UUID, list[list[BaseMessage]]] = {}

    def on_llm_start(self, serialized: Any, prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        self._prompts[run_id] = [[HumanMessage(prompt)] for prompt in prompts]

    def on_chat_model_start(
        self, serialized: Any, messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._prompts[run_id] = messages

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        prompts = self._prompts.pop(run_id, [])
        generations = [g for batch in response.generations for g in batch]
        usages = [u for g in generations if (u := getattr(getattr(g, "message", None), "usage_metadata", None))]
        if usages:
            self.prompt_tokens += sum(u.get("input_tokens", 0) for u in usages)
            last = sum(u.get("output_tokens", 0) for u in usages)
        else:
            self.prompt_tokens += sum(self.chat.get_num_tokens_from_messages(m) for m in prompts)
            last = sum(self.chat.get_num_tokens(g.text) for g in generations)
        self.completion_tokens += last
        reported = [r for g in generations if (r := finish_reason_of(g))]
        cut = bool(self.max_new_tokens) and last >= self.max_new_tokens
        self.finish_reason = reported[-1] if reported else ("length" if cut else "stop")

    def usage(self) -> dict[str, int]:
        return openai_usage(self.prompt_tokens, self.completion_tokens)


def finish_reason_of(generation: Any) -> str | None:
    """The ``finish_reason`` a model reported for one generation, if any."""
    message = getattr(generation, "message", None)
    reason = (generation.generation_info or {}).get("finish_reason")
    return reason or (getattr(message, "response_metadata", None) or {}).get("finish_reason")


def prompt_budget(chat: BaseChatModel, *, max_input_tokens: int, asked: int | None) -> KBBudget:
    return KBBudget(chat, max_input_tokens=max_input_tokens, asked=asked)
