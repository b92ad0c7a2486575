"""OpenAI's wire format for completions: ``chat.completion`` bodies and ``chat.completion.chunk``
server-sent events, for plain chat jobs and knowledge-base answers."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.api.chat_jobs import LocalChat, RemoteChat
from app.api.errors import error_event as error_payload
from chains.events import Answer, Sources, Token

__all__ = ["CompletionIds", "chat_completion_body", "chat_sse", "kb_answer_sse", "kb_completion_body"]

log = logging.getLogger(__name__)

DONE_EVENT = "data: [DONE]\n\n"


@dataclass
class CompletionIds:
    """``id``/``created``/``model`` shared by every chunk of one completion."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            **extra,
        }

    def completion(self, text: str, finish_reason: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                    "logprobs": None,
                }
            ],
            **extra,
        }


def sse(data: dict[str, Any]) -> str:
    """One server-sent event carrying ``data`` as JSON (non-ASCII kept as is)."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def error_event(error: BaseException) -> str:
    """The in-stream error event OpenAI clients raise on (the HTTP status is already 200)."""
    return sse(error_payload(error))


def chat_sse(job: LocalChat | RemoteChat, *, model: str, include_usage: bool) -> Iterator[str]:
    """The ``chat.completion.chunk`` events of ``job``, ending in ``data: [DONE]``.

    Chunks: the assistant role, one per text piece, the ``finish_reason``, then (when
    ``stream_options.include_usage``) one with empty ``choices`` and the ``usage``.
    """
    ids = CompletionIds(model)
    extra = {"usage": None} if include_usage else {}
    pieces = job.pieces()
    try:
        yield sse(ids.chunk({"role": "assistant", "content": ""}, **extra))
        for text in pieces:
            yield sse(ids.chunk({"content": text}, **extra))
        yield sse(ids.chunk({}, job.outcome.finish_reason, **extra))
        if include_usage:
            yield sse({**ids.chunk({}), "choices": [], "usage": job.outcome.usage()})
    except Exception as e:  # noqa: BLE001 - reported in the stream; the status line is sent already
        log.exception("chat completion failed mid-stream")
        yield error_event(e)
    finally:
        pieces.close()
    yield DONE_EVENT


def chat_completion_body(job: LocalChat | RemoteChat, *, model: str) -> dict[str, Any]:
    """The whole ``chat.completion`` of ``job`` (runs the model to the end)."""
    ids = CompletionIds(model)
    text = "".join(job.pieces())
    return ids.completion(text, job.outcome.finish_reason, usage=job.outcome.usage())


def kb_answer_sse(events: Iterator[Any], *, model: str) -> Iterator[str]:
    """A knowledge-base answer as ``chat.completion.chunk`` events.

    Text pieces arrive as ``delta.content``; the final chunk (``finish_reason: "stop"``)
    carries ``sources`` (the passages the answer is based on), ``refused`` and
    ``standalone_question`` at its top level; then ``data: [DONE]``.
    """
    ids = CompletionIds(model)
    try:
        yield sse(ids.chunk({"role": "assistant", "content": ""}))
        for event in events:
            if isinstance(event, Token) and event.text:
                yield sse(ids.chunk({"content": event.text}))
            elif isinstance(event, Answer):
                yield sse(ids.chunk({}, "stop", **answer_fields(event)))
            elif not isinstance(event, (Sources, Token)):
                log.debug("ignoring event %r", event)
    except Exception as e:  # noqa: BLE001
        log.exception("knowledge-base answer failed mid-stream")
        yield error_event(e)
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()
    yield DONE_EVENT


def kb_completion_body(events: Iterator[Any], *, model: str) -> dict[str, Any]:
    """A knowledge-base answer as one ``chat.completion`` with top-level ``sources``."""
    answer = next(e for e in list(events) if isinstance(e, Answer))
    return CompletionIds(model).completion(answer.text, "stop", **answer_fields(answer))


def answer_fields(answer: Answer) -> dict[str, Any]:
    return {
        "sources": [source.to_dict() for source in answer.sources],
        "refused": answer.refused,
        "standalone_question": answer.question,
    }
