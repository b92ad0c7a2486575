"""glmkb's OpenAI-compatible HTTP API (``glmkb-api`` / ``python -m app.api``).

Endpoints (all under ``/v1``; with an API key configured they need ``Authorization: Bearer KEY``):

- ``GET /v1/models``: the served chat model (``api.served_model_name``) and the embedding
  model, when it loads.
- ``POST /v1/chat/completions``: OpenAI chat completions over the configured model; ``stream``
  true answers ``text/event-stream`` with ``chat.completion.chunk`` events ending in
  ``data: [DONE]``; ``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``,
  ``stop``, ``stream_options.include_usage``; ``usage`` counts real tokens.
- ``POST /v1/embeddings``: the configured embedding model (``encoding_format`` float/base64).
- ``GET /v1/kb``: knowledge bases with document and chunk counts.
- ``POST /v1/kb/{name}/query``: ``{"query", "k", "mode"}`` -> passages with their sources.
- ``POST /v1/kb/{name}/chat/completions``: a chat completion answered from the knowledge base
  (the last user message is the question, earlier turns the history, plus optional ``k`` and
  ``mode``); streamed like chat completions, the final chunk (the one with ``finish_reason``)
  carries ``sources``, ``refused`` and ``standalone_question``; non-streaming answers have
  them at the top level of the ``chat.completion``.
- ``GET /health`` (and ``HEAD``): liveness, never needs a key.

Modules: ``app`` (``create_app``), ``routes`` (the endpoints), ``schemas`` (request bodies),
``chat_jobs`` (one completion on a LangChain chat model, local or remote), ``kb_chat`` (KB chat's
prompt budget and usage), ``wire`` (OpenAI's response and
SSE format), ``streaming`` (blocking generators from async code), ``errors`` (the error
edge), ``cli`` (``glmkb-api``).

Errors are JSON in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; a
failure after a stream has started arrives as one ``data: {"error": ...}`` event before
``[DONE]``. Generation runs on worker threads (never on the event loop), one generation at a
time per model; a client that disconnects mid-stream stops its generation.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROG", "command", "create_app", "main", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from app.api.app import create_app

        return create_app
    if name in ("PROG", "command", "main", "serve"):
        from app.api import cli

        return getattr(cli, name)
    raise AttributeError(f"module 'app.api' has no attribute {name!r}")
