"""Chat-completion jobs for the API: OpenAI messages in, text pieces and usage out.

``ChatJob`` runs one completion on any LangChain chat model: ``llm.ChatGLMChat`` over the
local model (``Services.require_chat_model``) or ``OpenAICompatibleChat`` when glmkb's API
fronts a vLLM server. The model reports ``usage_metadata`` and ``finish_reason`` on its last
chunk (where a server sends no usage, the job counts with the model's tokenizer). Where the
model's context is known (the local model), the job refuses prompts that cannot fit and bounds
``max_tokens`` by the room the prompt leaves. ``pieces()`` is a generator of (thinking, answer) text
pieces (``llm.reasoning``: a reasoning model's thinking is a chunk's ``reasoning_content``) whose closing
stops generation; ``outcome`` is filled in once it is exhausted. Everything here is
synchronous; the API drives it from worker threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, BaseMessageChunk, HumanMessage, SystemMessage

from app.api.schemas import ChatCompletionRequest, ChatMessage
from llm.reasoning import Split

__all__ = [
    "MAX_CHARS_PER_TOKEN",
    "ChatJob",
    "ChatOutcome",
    "Conversation",
    "RequestError",
    "check_prompt_chars",
    "context_length",
    "default_max_tokens",
    "openai_usage",
]

# No tokenizer glmkb serves packs more characters than this into one token (GLM-4's ~1 char
# per CJK token, ~4 per English word piece); text longer than context × this cannot fit and is
# refused before tokenizing (issue 20 #6: a 30 MB message took 54 s of CPU and +3.6 GiB).
MAX_CHARS_PER_TOKEN = 8


class RequestError(ValueError):
    """A request the model cannot serve as asked (e.g. too long); the API answers 400."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Conversation:
    """OpenAI messages as one system prompt, (user, assistant) pairs and the question."""

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
        """The whole conversation as LangChain messages (no system message: the model's own
        ``system_prompt`` applies)."""
        out: list[BaseMessage] = [SystemMessage(self.system)] if self.system else []
        return [*out, *self.history_messages(), HumanMessage(self.prompt)]

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
        return openai_usage(self.prompt_tokens, self.completion_tokens)


def openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# --------------------------------------------------------------------------- the model's limits


def context_length(chat: Any) -> int | None:
    """Positions the model can attend to (``max_position_embeddings``/``seq_length``), if known:
    the local model's config (``ChatGLMChat.llm`` or a ``ChatGLM``); None for a remote server."""
    config = getattr(getattr(getattr(chat, "llm", chat), "model", None), "config", None)
    for name in ("max_position_embeddings", "seq_length", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_max_tokens(chat: Any) -> int | None:
    """The answer length the model uses when a request names none (its ``max_tokens``, else
    the local model's ``max_new_tokens``)."""
    for model in (chat, getattr(chat, "llm", None)):
        for name in ("max_tokens", "max_new_tokens"):
            value = getattr(model, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def check_prompt_chars(chars: int, context: int | None) -> None:
    """Refuse text that cannot fit ``context`` tokens, by length alone (no tokenizing)."""
    if context is not None and chars > context * MAX_CHARS_PER_TOKEN:
        raise RequestError(
            f"the messages have {chars} characters, more than a {context}-token context can hold; "
            "shorten the messages",
            param="messages",
            code="context_length_exceeded",
        )


def sampling_params(chat: BaseChatModel, request: ChatCompletionRequest) -> dict[str, Any]:
    """The request's generation options as per-call keywords of ``chat``. ``repetition_penalty`` and
    ``enable_thinking`` (vLLM's extensions) go only to a model that has them (``ChatGLMChat``, and the
    ``OpenAICompatibleChat`` of a glmkb in front of another server, which forwards them); plain ``ChatOpenAI``
    would refuse them."""
    params: dict[str, Any] = {}
    if request.new_tokens() is not None:
        params["max_tokens"] = request.new_tokens()
    values = {name: getattr(request, name) for name in ("temperature", "top_p", "repetition_penalty")}
    values["enable_thinking"] = request.enable_thinking()
    for name, value in values.items():
        if value is not None and (name in ("temperature", "top_p") or name in type(chat).model_fields):
            params[name] = value
    return params


# --------------------------------------------------------------------------- the job


@dataclass
class ChatJob:
    """One chat completion on a LangChain chat model (see the module docstring)."""

    chat: BaseChatModel
    messages: list[BaseMessage]
    params: dict[str, Any] = field(default_factory=dict)
    stop: list[str] | None = None
    outcome: ChatOutcome = field(default_factory=ChatOutcome)

    @classmethod
    def from_request(cls, chat: BaseChatModel, request: ChatCompletionRequest) -> ChatJob:
        """The job for ``request``; ``RequestError`` (400) when it cannot fit the model's context."""
        conversation = Conversation.from_messages(request.messages)
        context = context_length(chat)
        check_prompt_chars(conversation.chars(), context)
        job = cls(chat, conversation.langchain_messages(), sampling_params(chat, request), request.stop_list())
        if context is not None:
            job.fit_max_tokens(context)
        return job

    def fit_max_tokens(self, context: int) -> None:
        """``max_tokens`` (default: the model's) bounded by the room the prompt leaves in
        ``context``; refused when an explicit one does not fit or no room is left."""
        self.outcome.prompt_tokens = prompt = self.chat.get_num_tokens_from_messages(self.messages)
        asked = self.params.get("max_tokens")
        budget = asked or default_max_tokens(self.chat)
        room = context - prompt
        if room <= 0 or (asked is not None and asked > room):
            raise RequestError(
                f"the prompt has {prompt} tokens and max_tokens is {budget}, but the model's context "
                f"holds {context} tokens; shorten the messages or lower max_tokens",
                param="messages",
                code="context_length_exceeded",
            )
        self.params["max_tokens"] = min(budget, room) if budget else room

    def pieces(self) -> Iterator[Split]:
        """Thinking and answer text as it is generated; closing this generator stops the model within a token."""
        stream = self.chat.stream(self.messages, stop=self.stop, **self.params)
        texts: list[str] = []
        counted = False
        try:
            for chunk in stream:
                counted = self.read_metadata(chunk) or counted
                piece = Split(str(chunk.additional_kwargs.get("reasoning_content") or ""), chunk.text)
                if piece.reasoning or piece.answer:
                    texts.append(piece.reasoning + piece.answer)
                    yield piece
        finally:
            stream.close()  # type: ignore[attr-defined]
        if not counted:  # a server that sends no usage: count with the model's tokenizer
            self.outcome.prompt_tokens = self.chat.get_num_tokens_from_messages(self.messages)
            self.outcome.completion_tokens = self.chat.get_num_tokens("".join(texts))

    def read_metadata(self, chunk: BaseMessageChunk) -> bool:
        """Take ``finish_reason`` and usage from a chunk; True when it carried usage."""
        reason = (chunk.response_metadata or {}).get("finish_reason")
        if reason:
            self.outcome.finish_reason = reason
        usage = getattr(chunk, "usage_metadata", None)
        if not usage:
            return False
        self.outcome.prompt_tokens = usage.get("input_tokens", 0)
        self.outcome.completion_tokens = usage.get("output_tokens", 0)
        return True
