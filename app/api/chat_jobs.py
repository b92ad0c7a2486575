"""Chat-completion jobs for the API: OpenAI messages in, text pieces and usage out.

``LocalChat`` runs one completion on a ``ChatGLM`` (real token counts, ``finish_reason`` from
what the model generated); ``RemoteChat`` runs it on any LangChain chat model (e.g. an
``OpenAICompatibleChat`` when glmkb's API fronts a vLLM server). Both expose ``pieces()``, a
generator of text whose closing stops generation, and ``outcome`` once it is exhausted.
Everything here is synchronous; the API drives it from worker threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from app.api.schemas import ChatCompletionRequest, ChatMessage
from llm import ChatGLM
from llm.streaming import GenerationStats

__all__ = [
    "ChatOutcome",
    "Conversation",
    "GenerationCounter",
    "LocalChat",
    "RemoteChat",
]

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the model cannot serve as asked (e.g. too long); the API answers 400."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Conversation:
    """OpenAI messages as ChatGLM takes them: system prompt, (user, assistant) pairs, question."""

    system: str | None
    history: list[tuple[str, str]]
    prompt: str

    @classmethod
    def from_messages(cls, messages: Sequence[ChatMessage]) -> Conversation:
        """System/developer messages join into the system prompt; consecutive messages of one
        role are joined; an assistant message with no user message before it pairs with an
        empty question. The last message must be the user's (checked by the request model)."""
        system = [m.text() for m in messages if m.role in ("system", "developer")]
        turns: list[list[str]] = []  # [role, text]
        for message in messages:
            if message.role in ("system", "developer"):
                continue
            if turns and turns[-1][0] == message.role:
                turns[-1][1] += "\n\n" + message.text()
            else:
                turns.append([message.role, message.text()])
        history: list[tuple[str, str]] = []
        pending: str | None = None
        for role, text in turns[:-1]:
            if role == "user":
                pending = text
            else:
                history.append((pending or "", text))
                pending = None
        return cls("\n\n".join(system) if system else None, history, turns[-1][1])

    def langchain_messages(self) -> list[BaseMessage]:
        """The same conversation as LangChain messages (for chat-model backends)."""
        out: list[BaseMessage] = [SystemMessage(self.system)] if self.system else []
        for user, assistant in self.history:
            out += [HumanMessage(user), AIMessage(assistant)]
        return [*out, HumanMessage(self.prompt)]

    def chars(self) -> int:
        """Characters of every message (a bound checked before anything is tokenized)."""
        return len(self.system or "") + len(self.prompt) + sum(len(u) + len(a) for u, a in self.history)

    def history_messages(self) -> list[BaseMessage]:
        """Earlier turns as LangChain messages (``KnowledgeBaseQAChain``'s history, ``chains.history``)."""
        out: list[BaseMessage] = []
        for user, assistant in self.history:
            out += [HumanMessage(user), AIMessage(assistant)]
        return out


@dataclass
class ChatOutcome:
    """How a completion ended; filled in when its pieces are exhausted."""

    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


# --------------------------------------------------------------------------- local model


class GenerationCounter(GenerationStats):
    """The ids a streamed generation produced (eos included), to count and inspect them.

    A ``GenerationStats`` (``ChatGLM``'s ``stats``), not a stopping criterion: a call with its own
    stopping criteria could take neither the decode graph nor a batch with other requests.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[int] = []

    def add(self, token_id: int) -> None:
        super().add(token_id)
        self.ids.append(token_id)

    def generated(self) -> list[int]:
        return list(self.ids)


@dataclass
class LocalChat:
    """One chat completion on a local ``ChatGLM`` (see the module docstring)."""

    llm: ChatGLM
    conversation: Conversation
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    outcome: ChatOutcome = field(default_factory=ChatOutcome)

    def __post_init__(self) -> None:
        from app.api.kb_chat import check_prompt_chars

        check_prompt_chars(self.conversation.chars(), context_length(self.llm))
        self.outcome.prompt_tokens = self.count_prompt_tokens()
        self.max_new_tokens = self.fit_new_tokens()

    @classmethod
    def from_request(cls, llm: ChatGLM, request: ChatCompletionRequest) -> LocalChat:
        return cls(
            llm,
            Conversation.from_messages(request.messages),
            max_new_tokens=request.new_tokens(),
            temperature=request.temperature,
            top_p=request.top_p,
            repetition_penalty=request.repetition_penalty,
            stop=request.stop_list(),
        )

    def count_prompt_tokens(self) -> int:
        """Tokens of the prompt exactly as the model gets it (chat template applied)."""
        text = self.llm.render_prompt(
            self.conversation.prompt, history=self.conversation.history, system_prompt=self._system_prompt()
        )
        return len(self.llm.tokenizer.encode(text, add_special_tokens=False))

    def fit_new_tokens(self) -> int:
        """``max_tokens`` (default: the model's), refused when the prompt leaves no room for it."""
        limit = context_length(self.llm)
        asked = self.max_new_tokens
        budget = asked or self.llm.max_new_tokens
        if limit is None:
            return budget
        room = limit - self.outcome.prompt_tokens
        if room <= 0 or (asked is not None and asked > room):
            raise RequestError(
                f"the prompt has {self.outcome.prompt_tokens} tokens and max_tokens is {budget}, but the "
                f"model's context holds {limit} tokens; shorten the messages or lower max_tokens",
                param="messages",
                code="context_length_exceeded",
            )
        return min(budget, room)

    def _system_prompt(self) -> str | None:
        return self.conversation.system if self.conversation.system is not None else self.llm.system_prompt

    def _kwargs(self, counter: GenerationCounter) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "history": self.conversation.history,
            "system_prompt": self._system_prompt(),
            "max_new_tokens": self.max_new_tokens,
            "stats": counter,
        }
        for name in ("temperature", "top_p", "repetition_penalty"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def pieces(self) -> Iterator[str]:
        """Text as it is generated; closing this generator stops the model within a token."""
        counter = GenerationCounter()
        stream = self.llm.stream(self.conversation.prompt, stop=self.stop, **self._kwargs(counter))
        try:
            for text in stream:
                if text:
                    yield text
        finally:
            stream.close()
        ids = counter.generated()
        self.outcome.completion_tokens = len(ids)
        self.outcome.finish_reason = self.finish_reason(ids)

    def finish_reason(self, ids: list[int]) -> str:
        """``length`` when ``max_tokens`` ran out (no eos, no stop sequence), else ``stop``."""
        if len(ids) < (self.max_new_tokens or 0) or (ids and ids[-1] in eos_ids(self.llm)):
            return "stop"
        if self.stop:
            text = self.llm.tokenizer.decode(ids, skip_special_tokens=True)
            if any(s in text for s in self.stop):
                return "stop"
        return "length"


def context_length(llm: ChatGLM) -> int | None:
    """Positions the model can attend to (``max_position_embeddings``/``seq_length``), if known."""
    config = getattr(llm.model, "config", None)
    for name in ("max_position_embeddings", "seq_length", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def eos_ids(llm: ChatGLM) -> set[int]:
    config = getattr(llm.model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = llm.tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


# --------------------------------------------------------------------------- chat-model backends


@dataclass
class RemoteChat:
    """One chat completion on a LangChain chat model (e.g. ``OpenAICompatibleChat``)."""

    llm: BaseChatModel
    conversation: Conversation
    params: dict[str, Any] = field(default_factory=dict)
    stop: list[str] | None = None
    outcome: ChatOutcome = field(default_factory=ChatOutcome)

    @classmethod
    def from_request(cls, llm: BaseChatModel, request: ChatCompletionRequest) -> RemoteChat:
        params: dict[str, Any] = {}
        if request.new_tokens() is not None:
            params["max_tokens"] = request.new_tokens()
        for name in ("temperature", "top_p"):
            if getattr(request, name) is not None:
                params[name] = getattr(request, name)
        return cls(llm, Conversation.from_messages(request.messages), params, request.stop_list())

    def pieces(self) -> Iterator[str]:
        messages = self.conversation.langchain_messages()
        stream = self.llm.stream(messages, stop=self.stop, **self.params)
        texts: list[str] = []
        try:
            for chunk in stream:
                usage = getattr(chunk, "usage_metadata", None)
                if usage:
                    self.outcome.prompt_tokens = usage.get("input_tokens", 0)
                    self.outcome.completion_tokens = usage.get("output_tokens", 0)
                reason = (getattr(chunk, "response_metadata", None) or {}).get("finish_reason")
                if reason:
                    self.outcome.finish_reason = reason
                if chunk.text:
                    texts.append(chunk.text)
                    yield chunk.text
        finally:
            stream.close()
        if not self.outcome.completion_tokens:  # the server sent no usage: count locally
            self.outcome.prompt_tokens = self.llm.get_num_tokens_from_messages(messages)
            self.outcome.completion_tokens = self.llm.get_num_tokens("".join(texts))
