"""The API's endpoints over one shared ``Services`` (see ``app.api`` for the list).

Blocking work runs on worker threads, never on the event loop: generation streams in their
own pool (``streams``), knowledge-base requests in another (``kb_pool``), so a burst of
expensive KB queries never delays ``GET /v1/kb`` or a chat stream behind them.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.responses import Response

from app.api.chat_jobs import ChatJob, Conversation, RequestError, check_prompt_chars, context_length
from app.api.errors import APIError
from app.api.kb_chat import UsageCounter, prompt_budget
from app.api.schemas import ChatCompletionRequest, EmbeddingRequest, KBChatRequest, KBQueryRequest
from app.api.streaming import collect_unless_disconnected, event_stream
from app.api.wire import chat_completion_body, chat_sse, kb_answer_sse, kb_completion_body, source_name
from app.services import Services
from app.web.book_scope import ask_book
from chains.knowledge_base_qa_chain import check_question

__all__ = ["Pools", "add_routes"]


@dataclass(frozen=True)
class Pools:
    """Worker-thread pools: ``streams`` steps generation, ``kb`` serves knowledge-base queries,
    KB chat set-up and embeddings (bounded: ``api.kb_workers``), ``listing`` serves
    ``GET /v1/kb`` so it never waits behind them."""

    streams: anyio.CapacityLimiter
    kb: anyio.CapacityLimiter
    listing: anyio.CapacityLimiter

    def stream(self, fn: Any, *args: Any) -> Any:
        return anyio.to_thread.run_sync(fn, *args, limiter=self.streams)

    def kb_call(self, fn: Any, *args: Any) -> Any:
        return anyio.to_thread.run_sync(fn, *args, limiter=self.kb)


def add_routes(app: FastAPI, services: Services, pools: Pools, *, dependencies: Sequence[Any] = ()) -> None:
    """``GET /health`` and every ``/v1`` endpoint of ``services``."""
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(d) for d in dependencies])

    def check_model(requested: str | None) -> None:
        if requested and requested != services.model_id:
            raise APIError(
                404,
                f"model {requested!r} does not exist here; this server serves {services.model_id!r} "
                "(GET /v1/models)",
                param="model",
                code="model_not_found",
            )

    @app.api_route("/health", methods=["GET", "HEAD"])  # HEAD: load balancers' and uptime checks
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @v1.api_route("/models", methods=["GET", "HEAD"])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": model_cards(services)}

    @v1.api_route("/models/{model_id:path}", methods=["GET", "HEAD"])
    async def model(model_id: str) -> dict[str, Any]:
        """One served model (the SDK's ``models.retrieve``; it was a 404). ``:path``: embedding ids hold
        slashes; the embedding model's other names (``/v1/embeddings`` takes them) find it too."""
        names = services.embedding_model_names()
        wanted = names[0] if model_id in names else model_id
        card = next((card for card in model_cards(services) if card["id"] == wanted), None)
        if card is None:
            raise APIError(404, f"model {model_id!r} does not exist here (GET /v1/models)", param="model",
                           code="model_not_found")
        return card

    async def until_disconnect(
        request: Request, items: Iterator[Any], on_gone: Callable[[], None] | None = None
    ) -> list[Any] | None:
        return await collect_unless_disconnected(items, pools.streams, request.is_disconnected, on_gone=on_gone)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        chat = await pools.stream(services.require_chat_model)
        check_capacity(chat)
        job = await pools.stream(ChatJob.from_request, chat, body)
        if body.stream:
            return event_stream(chat_sse(job, model=services.model_id, include_usage=body.include_usage()), pools.streams)
        pieces = await until_disconnect(request, job.pieces())
        if pieces is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return chat_completion_body(job, pieces, model=services.model_id)

    @v1.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        model, embedder = await pools.kb_call(services.configured_embeddings, body.model)
        vectors = await pools.kb_call(embedder.embed_documents, body.texts())
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
        def summaries() -> list[dict[str, Any]]:
            return [{"object": "knowledge_base", **services.kb_summary(name)} for name in services.list_kbs()]

        return {"object": "list", "data": await anyio.to_thread.run_sync(summaries, limiter=pools.listing)}

    @v1.post("/kb/{name}/query")
    async def query_kb(name: str, body: KBQueryRequest) -> dict[str, Any]:
        def search() -> dict[str, Any]:
            kb = services.kb(name)
            mode, _ = services.search_mode(kb, body.mode, fallback=False)
            docs = kb.search(body.query, mode=mode, k=body.k)
            return {"object": "list", "query": body.query, "mode": mode, "data": [hit_of(doc) for doc in docs]}

        return await pools.kb_call(search)

    @v1.post("/kb/{name}/chat/completions")
    async def kb_chat(name: str, body: KBChatRequest, request: Request) -> Any:
        check_model(body.model)

        stop = threading.Event()  # scope "book": set when the client hangs up (ends a map batch)

        def prepare() -> tuple[Iterator[Any], UsageCounter]:
            mode, _ = services.search_mode(services.kb(name), body.mode, fallback=False)
            # The chains run on the shared model's own face (the local ChatGLM for prompt-string
            # chains and batched map steps); its chat face measures the budget and the usage.
            chat = services.require_chat_model()
            check_capacity(chat)
            conversation = Conversation.from_messages(body.messages)
            check_question(conversation.prompt)  # streamed, it was a 200 and then an error event
            check_prompt_chars(conversation.chars(), context_length(chat))
            budget = prompt_budget(chat, max_input_tokens=services.settings.llm.max_input_tokens, asked=body.new_tokens())
            llm = with_generation(services.require_llm(), body, max_tokens=budget.max_new_tokens)
            usage = UsageCounter(chat, max_new_tokens=budget.max_new_tokens)
            if body.scope == "book":
                check_chapter_range(body.chapters)
                events = ask_book(
                    services, name, conversation.prompt, chapters=body.chapters, source=body.source, cancel=stop,
                    llm=llm, max_input_tokens=budget.max_input_tokens, callbacks=[usage],
                )
                return events, usage
            events = services.ask(
                name, conversation.prompt, history=conversation.history_messages(), mode=mode, top_k=body.k, llm=llm,
                max_input_tokens=budget.max_input_tokens, callbacks=[usage],
            )
            return events, usage

        events, usage = await pools.kb_call(prepare)
        if body.stream:
            sse = kb_answer_sse(events, model=services.model_id, usage=usage, include_usage=body.include_usage())
            return event_stream(sse, pools.streams, on_gone=stop.set)
        collected = await until_disconnect(request, events, on_gone=stop.set)
        if collected is None:
            return Response(status_code=499)  # the client is gone; generation was stopped
        return kb_completion_body(collected, model=services.model_id, usage=usage)

    app.include_router(v1)


def model_cards(services: Services) -> list[dict[str, Any]]:
    """OpenAI model objects: the chat model (when configured), then the embedding model that loads."""
    ids = ([services.model_id] if services.has_llm else []) + services.embedding_model_names()[:1]
    return [{"id": model_id, "object": "model", "created": 0, "owned_by": "glmkb"} for model_id in ids]


def check_capacity(llm: Any) -> None:
    """503 "busy, retry" (``llm.batching.Busy``) now, while the status can still say so: a streamed
    response has sent 200 before the model's queue is reached."""
    check = getattr(llm, "check_capacity", None)
    if check is not None:
        check()


def check_chapter_range(chapters: str | None) -> None:
    """A ``chapters`` range the book scope understands (``第40-60回``, ``40-60``), else a 400."""
    if not chapters:
        return
    from chains.summarize import parse_chapter_range

    try:
        parse_chapter_range(chapters)
    except ValueError as e:
        raise RequestError(str(e), param="chapters") from e


def with_generation(llm: Any, body: ChatCompletionRequest, *, max_tokens: int | None = None) -> Any:
    """A shallow copy of ``llm`` with the request's sampling options (the weights are shared);
    the answer length goes to whichever of ``max_new_tokens``/``max_tokens`` the model has."""
    fields = type(llm).model_fields
    names = {name: name for name in ("temperature", "top_p", "repetition_penalty", "enable_thinking")}
    names["max_tokens"] = "max_new_tokens" if "max_new_tokens" in fields else "max_tokens"
    values = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "repetition_penalty": body.repetition_penalty,
        "enable_thinking": body.enable_thinking(),
        "max_tokens": max_tokens or body.new_tokens(),
    }
    update = {names[k]: v for k, v in values.items() if v is not None and names[k] in fields}
    return llm.model_copy(update=update) if update else llm


def hit_of(doc: Any) -> dict[str, Any]:
    """One search hit: the passage and its source metadata (docs/ARCHITECTURE.md)."""
    meta = doc.metadata
    hit = {
        "text": doc.page_content,
        "source": source_name(meta.get("source")),
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
