"""Condense a follow-up question and its chat history into one standalone question.

The knowledge-base QA chain retrieves with the standalone question, so "他为什么鞭打督邮？"
after a turn about 张飞 searches for 张飞. The rewrite is streamed piece by piece (with a
``Progress`` event per piece) so that a consumer that stops iterating stops the model too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable

from chains.events import Event, Progress
from chains.history import format_history
from chains.stream_llm_chain import piece_text
from chains.token_budget import TokenCounter, trim_history
from llm.reasoning import thinking_off

__all__ = [
    "CONDENSE_STAGE",
    "CONDENSE_TAG",
    "QuestionCondenser",
    "astream_condensed",
    "cap_new_tokens",
    "clean_condensed",
    "stream_condensed",
]

CONDENSE_TAG = "condense_question"
"""Tag on the condense LLM run, so callback handlers can leave its tokens out of the chat."""
CONDENSE_STAGE = "condense"
"""``Progress.stage`` of the events yielded while the follow-up question is being condensed."""

_CONDENSE_PREFIX = re.compile(r"^\s*(独立问题|改写后的问题|问题)\s*[:：]\s*")


def clean_condensed(text: str, fallback: str) -> str:
    """The first non-empty line of the model's reply, without a ``独立问题：`` prefix."""
    for line in text.splitlines():
        line = _CONDENSE_PREFIX.sub("", line).strip().strip("\"'“”「」")
        if line:
            return line
    return fallback


def cap_new_tokens(llm: BaseLanguageModel, limit: int) -> Runnable:
    """``llm`` with its answer length capped at ``limit`` where it has such a knob, and a reasoning model's
    thinking off (``llm.reasoning.thinking_off``): a GLM-Z1 spent the whole cap thinking and the rewrite came
    back empty, so retrieval searched the bare follow-up question."""
    fields = getattr(type(llm), "model_fields", {})
    extra = thinking_off(llm)
    for knob in ("max_new_tokens", "max_tokens"):
        if knob in fields:
            current = getattr(llm, knob, None)
            return llm.bind(**{knob: limit if current is None else min(current, limit)}, **extra)
    return llm.bind(**extra) if extra else llm


def stream_condensed(
    model: Runnable, prompt: str, *, fallback: str, max_tokens: int, callbacks: Any
) -> Generator[Event, None, str]:
    """Stream the standalone question, yielding ``Progress(CONDENSE_STAGE, ...)`` per piece.

    Streaming (not one blocking call) lets a consumer that stops iterating, e.g. a UI
    Stop button, end the model's generation within a token; returns the question
    (``fallback`` when the model wrote nothing usable).
    """
    pieces: list[str] = []
    stream = model.stream(prompt, config={"callbacks": callbacks})
    try:
        for piece in stream:
            pieces.append(piece_text(piece))
            yield Progress(CONDENSE_STAGE, len(pieces), max_tokens)
    finally:
        stream.close()
    return clean_condensed("".join(pieces), fallback)


async def astream_condensed(
    model: Runnable, prompt: str, *, fallback: str, max_tokens: int, callbacks: Any
) -> AsyncIterator[Event | str]:
    """Async twin of ``stream_condensed``: ``Progress`` events, then the standalone question (a str)."""
    pieces: list[str] = []
    async for piece in model.astream(prompt, config={"callbacks": callbacks}):
        pieces.append(piece_text(piece))
        yield Progress(CONDENSE_STAGE, len(pieces), max_tokens)
    yield clean_condensed("".join(pieces), fallback)


@dataclass(frozen=True)
class QuestionCondenser:
    """The condense step of one chain: ``prompt`` (``chat_history`` and ``question`` variables) on
    ``llm``, history trimmed to ``max_input_tokens``, the rewrite capped at ``max_tokens``."""

    llm: BaseLanguageModel | None
    prompt: BasePromptTemplate
    max_input_tokens: int
    max_tokens: int
    count_tokens: TokenCounter

    def trim_history(self, messages: Sequence[BaseMessage], question: str) -> list[BaseMessage]:
        """The newest messages for which the condense prompt fits ``max_input_tokens``."""
        return trim_history(
            messages,
            render=lambda kept: self.prompt.format(chat_history=format_history(kept), question=question),
            max_tokens=self.max_input_tokens,
            count_tokens=self.count_tokens,
        )

    def inputs(self, question: str, messages: Sequence[BaseMessage]) -> dict[str, str] | None:
        """Inputs of the condense prompt, or None when there is nothing to condense."""
        if self.llm is None or not any(m.type in ("human", "ai") for m in messages):
            return None
        kept = self.trim_history(messages, question)
        if not kept:
            return None
        return {"chat_history": format_history(kept), "question": question}

    def model(self) -> Runnable:
        """The model with its answer length capped at ``max_tokens`` where it has such a knob."""
        return cap_new_tokens(self.llm, self.max_tokens)

    def stream(
        self, question: str, messages: Sequence[BaseMessage], *, callbacks: Any
    ) -> Generator[Event, None, str]:
        """``Progress`` events while rewriting; returns the standalone question (``question``
        itself when there is no history to condense)."""
        inputs = self.inputs(question, messages)
        if inputs is None:
            return question
        prompt = self.prompt.format(**inputs)
        return (
            yield from stream_condensed(
                self.model(), prompt, fallback=question, max_tokens=self.max_tokens, callbacks=callbacks
            )
        )

    async def astream(
        self, question: str, messages: Sequence[BaseMessage], *, callbacks: Any
    ) -> AsyncIterator[Event | str]:
        """Async twin of ``stream``: ``Progress`` events, then the standalone question (a str)."""
        # Counting tokens to trim the history runs the tokenizer: off the event loop.
        inputs = await asyncio.to_thread(self.inputs, question, messages)
        if inputs is None:
            yield question
            return
        prompt = self.prompt.format(**inputs)
        async for item in astream_condensed(
            self.model(), prompt, fallback=question, max_tokens=self.max_tokens, callbacks=callbacks
        ):
            yield item
