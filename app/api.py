"""glmkb's OpenAI-compatible HTTP API (``glmkb-api`` / ``python -m app.api``).

Endpoints (all under ``/v1``; with an API key configured they need ``Authorization: Bearer KEY``):

- ``GET /v1/models``: the served chat model (``api.served_model_name``) and embedding model.
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
- ``GET /health``: liveness, never needs a key.

Errors are JSON in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; a
failure after a stream has started arrives as one ``data: {"error": ...}`` event before
``[DONE]``. Generation runs on worker threads (never on the event loop), one generation at a
time per model; a client that disconnects mid-stream stops its generation.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import logging
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.language_models import BaseChatModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from app.api_chat import (
    Conversation,
    LocalChat,
    RemoteChat,
    RequestError,
    chat_completion_body,
    chat_sse,
    kb_answer_sse,
    kb_completion_body,
)
from app.api_schemas import (
    ChatCompletionRequest,
    EmbeddingRequest,
    KBChatRequest,
    KBQueryRequest,
)
from app.api_service import APIError, APIService, resolve_api_key
from app.common import add_model_flags, model_overrides
from chains import KnowledgeBaseQAChain
from configs import Settings, load_settings
from configs.cli import run_command
from kb import EmbeddingModelError, KnowledgeBaseError
from llm import ChatGLM, LLMServerError

__all__ = ["PROG", "build_parser", "create_app", "main", "serve", "settings_from_args"]

log = logging.getLogger(__name__)

PROG = "glmkb-api"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = object()
# Threads that step generation streams. Streams waiting for a busy model each hold one, so they
# get their own pool: they never starve the default pool that serves the other endpoints.
STREAM_THREADS = 64


# ----------------------------------------------------------------------------- streaming


async def iterate_in_thread(items: Iterator[str], limiter: anyio.CapacityLimiter) -> AsyncIterator[str]:
    """Step a blocking generator on worker threads; closing this (or cancelling) closes it there."""
    try:
        while True:
            item = await anyio.to_thread.run_sync(next, items, _DONE, limiter=limiter)
            if item is _DONE:
                return
            yield item
    finally:
        # No thread is inside the generator now (run_sync waits for it even when cancelled);
        # closing it stops the model within a token. Shielded: runs even on cancellation.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(items.close, limiter=limiter)  # type: ignore[attr-defined]


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that always closes its body iterator, however the response ends
    (finished, client gone, server shutting down), so generation never outlives its client."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def event_stream(items: Iterator[str], limiter: anyio.CapacityLimiter) -> ClosingStreamingResponse:
    return ClosingStreamingResponse(
        iterate_in_thread(items, limiter), media_type="text/event-stream", headers=SSE_HEADERS
    )


# ----------------------------------------------------------------------------- errors


def error_response(status: int, message: str, **fields: Any) -> JSONResponse:
    return JSONResponse(APIError(status, message, **fields).body(), status_code=status)


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """``("messages: Field required; ...", "messages")`` from pydantic's errors."""
    parts: list[str] = []
    first_param: str | None = None
    for item in error.errors():
        if item.get("type") == "json_invalid":
            reason = (item.get("ctx") or {}).get("error", "")
            return f"the request body is not valid JSON ({reason})".replace(" ()", ""), None
        loc = [str(p) for p in item.get("loc", ()) if p != "body"]
        if not loc and item.get("type") in ("model_attributes_type", "dict_type", "missing"):
            return "the request body must be a JSON object", None
        param = ".".join(loc) or None
        first_param = first_param or param
        msg = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{param}: {msg}" if param else msg)
    return "; ".join(parts) or "invalid request", first_param


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers in OpenAI's JSON shape; unexpected ones say only 'internal error'."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path} (the API lives under /v1; see /docs)"
        return JSONResponse(
            APIError(exc.status_code, message, type=kind).body(),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestError)
    async def _request(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(400, str(exc), param=exc.param, code=exc.code)

    @app.exception_handler(KnowledgeBaseError)
    async def _kb(request: Request, exc: KnowledgeBaseError) -> JSONResponse:
        return error_response(400, " ".join(str(exc).split()))

    @app.exception_handler(EmbeddingModelError)
    async def _embedding(request: Request, exc: EmbeddingModelError) -> JSONResponse:
        return error_response(503, " ".join(str(exc).split()), type="server_error", code="embedding_unavailable")

    @app.exception_handler(LLMServerError)
    async def _upstream(request: Request, exc: LLMServerError) -> JSONResponse:
        return error_response(502, str(exc), type="server_error", code="upstream_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error; see the server log", type="server_error")


# ----------------------------------------------------------------------------- the app


def create_app(service: APIService) -> FastAPI:
    """The FastAPI application serving ``service`` (see the module docstring)."""
    app = FastAPI(title="glmkb API", version="1", docs_url="/docs", redoc_url=None)
    app.state.service = service
    limiter = anyio.CapacityLimiter(STREAM_THREADS)
    install_error_handlers(app)

    async def require_key(request: Request) -> None:
        expected = service.api_key
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise APIError(
                401,
                "missing or invalid API key: send 'Authorization: Bearer KEY' with the key the "
                f"server reads from ${service.settings.api.api_key_env}",
                code="invalid_api_key",
            )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    def in_thread(fn: Any, *args: Any) -> Any:
        return anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    def check_model(requested: str | None) -> None:
        if requested and requested != service.model_id:
            raise APIError(
                404,
                f"model {requested!r} does not exist here; this server serves {service.model_id!r} "
                "(GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        data = []
        if service.has_llm:
            data.append({"id": service.model_id, "object": "model", "created": 0, "owned_by": "glmkb"})
        for name in service.embedding_model_names()[:1]:
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "glmkb"})
        return {"object": "list", "data": data}

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        check_model(body.model)
        llm = await in_thread(service.get_llm)
        job = await in_thread(chat_job, llm, body)
        if body.stream:
            return event_stream(chat_sse(job, model=service.model_id, include_usage=body.include_usage()), limiter)
        return await in_thread(lambda: chat_completion_body(job, model=service.model_id))

    @v1.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        model, embedder = await asyncio.to_thread(service.configured_embeddings, body.model)
        vectors = await asyncio.to_thread(embedder.embed_documents, body.texts())
        if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
            raise APIError(
                400,
                f"this embedding model gives {len(vectors[0])}-dimensional vectors; omit dimensions or "
                f"send {len(vectors[0])}",
                param="dimensions",
            )
        tokens = sum(count_embedding_tokens(embedder, text) for text in body.texts())
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @v1.get("/kb")
    async def list_kbs() -> dict[str, Any]:
        names = await asyncio.to_thread(service.kb_names)
        data = [await asyncio.to_thread(service.kb_summary, name) for name in names]
        return {"object": "list", "data": data}

    @v1.post("/kb/{name}/query")
    async def query_kb(name: str, body: KBQueryRequest) -> dict[str, Any]:
        def search() -> dict[str, Any]:
            kb = service.open_kb(name)
            mode = service.check_mode(kb, body.mode)
            docs = kb.search(body.query, mode=mode, k=body.k)
            return {
                "object": "list",
                "query": body.query,
                "mode": mode,
                "data": [hit_of(doc) for doc in docs],
            }

        return await asyncio.to_thread(search)

    @v1.post("/kb/{name}/chat/completions")
    async def kb_chat(name: str, body: KBChatRequest) -> Any:
        check_model(body.model)

        def prepare() -> Iterator[Any]:
            kb = service.open_kb(name)
            mode = service.check_mode(kb, body.mode)
            llm = with_generation(service.get_llm(), body)
            chain = KnowledgeBaseQAChain.from_settings(kb.as_retriever(mode=mode, k=body.k), llm, service.settings)
            conversation = Conversation.from_messages(body.messages)
            return chain.stream_answer(conversation.prompt, history=conversation.history_messages())

        events = await in_thread(prepare)
        if body.stream:
            return event_stream(kb_answer_sse(events, model=service.model_id), limiter)
        return await in_thread(lambda: kb_completion_body(events, model=service.model_id))

    app.include_router(v1)
    return app


def chat_job(llm: Any, body: ChatCompletionRequest) -> LocalChat | RemoteChat:
    """The completion job for the configured model: local ChatGLM or a LangChain chat model."""
    if isinstance(llm, ChatGLM):
        return LocalChat.from_request(llm, body)
    if isinstance(llm, BaseChatModel):
        return RemoteChat.from_request(llm, body)
    raise APIError(
        501, f"chat completions are not supported for a {type(llm).__name__} model", type="server_error"
    )


def with_generation(llm: Any, body: ChatCompletionRequest) -> Any:
    """A shallow copy of ``llm`` with the request's sampling options (the weights are shared)."""
    names = {"temperature": "temperature", "top_p": "top_p"}
    names["max_tokens"] = "max_new_tokens" if isinstance(llm, ChatGLM) else "max_tokens"
    values = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": body.new_tokens()}
    update = {names[k]: v for k, v in values.items() if v is not None and names[k] in type(llm).model_fields}
    return llm.model_copy(update=update) if update else llm


def hit_of(doc: Any) -> dict[str, Any]:
    """One search hit: the passage and its source metadata (docs/ARCHITECTURE.md)."""
    meta = doc.metadata
    hit = {
        "text": doc.page_content,
        "source": meta.get("source"),
        "doc_id": meta.get("doc_id"),
        "chapter": meta.get("chapter"),
        "chapter_title": meta.get("chapter_title"),
        "page": meta.get("page"),
        "page_end": meta.get("page_end"),
        "section": meta.get("section"),
        "start": meta.get("start"),
        "end": meta.get("end"),
        "score": float(meta["score"]) if meta.get("score") is not None else None,
        "chunk_id": meta.get("chunk_id"),
    }
    for extra in ("dense_score", "bm25_score"):
        if meta.get(extra) is not None:
            hit[extra] = float(meta[extra])
    return hit


def encode_vector(vector: Sequence[float], encoding_format: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def count_embedding_tokens(embedder: Any, text: str) -> int:
    """Tokens of ``text`` for the embedding model's own tokenizer (characters if it has none)."""
    tokenizer = getattr(getattr(embedder, "_client", None), "tokenizer", None)
    if tokenizer is None:
        return len(text)
    return len(tokenizer.encode(text, add_special_tokens=False))


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Flags mirror the settings keys; anything not given falls back to YAML/env/defaults."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="glmkb OpenAI-compatible API: chat completions, embeddings and knowledge-base "
        "search/chat over the configured model.",
    )
    p.add_argument("--config", help="YAML settings file (default: $GLMKB_CONFIG)")
    p.add_argument("--host", help="bind address (api.host, default 127.0.0.1; others need an API key)")
    p.add_argument("--port", type=int, help="TCP port (api.port, default 8000)")
    p.add_argument("--allow-no-auth", action="store_true", default=None,
                   help="allow a non-loopback --host without an API key (api.allow_no_auth)")
    p.add_argument("--served-model-name", help="model id clients use (api.served_model_name, default glmkb)")
    add_model_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """``configs.load_settings`` with the flags as the top layer (unset flags are None)."""
    overrides: dict[str, Any] = {
        **model_overrides(args),
        "api": {
            "host": args.host,
            "port": args.port,
            "allow_no_auth": args.allow_no_auth,
            "served_model_name": args.served_model_name,
        },
    }
    return load_settings(args.config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; configuration errors are one line on stderr and exit 2."""
    args = build_parser().parse_args(argv)
    verbose = args.verbose
    return run_command(PROG, lambda: serve(settings_from_args(args), verbose=verbose), verbose=verbose)


def serve(settings: Settings, *, verbose: bool = False) -> int:
    """Check the key policy before loading anything, load the model in the background, serve."""
    import threading

    import uvicorn

    api_key = resolve_api_key(settings.api)
    service = APIService.from_settings(settings, api_key=api_key)
    app = create_app(service)
    threading.Thread(target=service.warm_up, name="glmkb-warm-up", daemon=True).start()
    print(
        f"{PROG}: serving http://{settings.api.host}:{settings.api.port}/v1 (model "
        f"{service.model_id!r}, API key {'required' if api_key else 'off'})",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_level="info" if verbose else "warning",
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
