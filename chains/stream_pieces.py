"""The pieces a streamed model call yields, for ``chains.StreamLLMChain``: their text and a reasoning model's
thinking, the callbacks a model run reports them to, and the results and output chunks built from them."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from langchain_classic.chains.llm import _get_language_model
from langchain_core.callbacks import AsyncCallbackManagerForChainRun, BaseCallbackHandler, CallbackManagerForChainRun
from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.load import dumpd
from langchain_core.messages import BaseMessage, BaseMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk, LLMResult
from langchain_core.runnables.utils import AddableDict

from llm.reasoning import Split

__all__ = [
    "AsyncReasoningTap", "ReasoningTap", "as_chunk", "drain", "llm_callbacks", "piece_reasoning", "piece_text",
    "reports_tokens",
    "rest_of_outputs", "result_from_batch", "result_from_pieces", "serialized", "tapped", "text_chunks",
]


def piece_text(piece: Any) -> str:
    """The text of one streamed piece: a ``str`` (LLMs) or a message chunk (chat models)."""
    if isinstance(piece, str):
        return piece
    if isinstance(piece, BaseMessage):
        return piece.text
    return str(piece)


def piece_reasoning(chunk: Any) -> str:
    """A reasoning model's thinking in a streamed chunk (``reasoning_content``, ``llm.reasoning``): in a
    ``GenerationChunk``'s ``generation_info`` (LLMs) or a message chunk's ``additional_kwargs``."""
    message = getattr(chunk, "message", chunk)
    if isinstance(message, BaseMessage):
        return str(message.additional_kwargs.get("reasoning_content") or "")
    return str((getattr(chunk, "generation_info", None) or {}).get("reasoning_content") or "")


class ReasoningTap(BaseCallbackHandler):
    """Collects the thinking of the chunks a model reports as it streams: an LLM's ``stream`` yields
    only text, so the thinking is read from the chunk its ``on_llm_new_token`` carries."""

    run_inline = True  # sync runs; async runs take AsyncReasoningTap

    def __init__(self) -> None:
        self.pending: list[str] = []

    def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:
        if text := piece_reasoning(chunk):
            self.pending.append(text)

    def take(self) -> str:
        text, self.pending = "".join(self.pending), []
        return text


class AsyncReasoningTap(ReasoningTap):
    """``ReasoningTap`` for async runs. Not ``run_inline``: LangChain's ``AsyncCallbackManager.on_llm_start``
    skips every non-inline handler once one inline handler is present, so an inline tap hid the LLM run from
    ``astream_events`` and async handlers. Its coroutine is still awaited before the piece is yielded."""

    run_inline = False

    async def on_llm_new_token(self, token: str, *, chunk: Any = None, **kwargs: Any) -> None:  # type: ignore[override]
        super().on_llm_new_token(token, chunk=chunk, **kwargs)


def tapped(callbacks: Any, tap: ReasoningTap, *, manager: type) -> Any:
    """``callbacks`` (a child manager or None) with ``tap`` added."""
    if callbacks is None:
        return manager(handlers=[tap])
    callbacks.add_handler(tap, inherit=False)
    return callbacks


def reports_tokens(llm: Any) -> bool:
    """Whether ``llm.stream`` itself fires ``on_llm_new_token`` for each chunk.

    Chat models do so in ``BaseChatModel.stream`` when they implement ``_stream``; LLMs do so
    from their ``_stream`` (the LangChain convention). Models that override ``stream`` (e.g.
    ``FakeStreamingListLLM``) or cannot stream do not, and the chain reports for them.
    """
    try:
        model = _get_language_model(llm)
    except ValueError:
        return True  # an arbitrary Runnable: its inner models report their own tokens
    kind = type(model)
    if isinstance(model, BaseChatModel):
        return (
            kind.stream is BaseChatModel.stream
            and kind._stream is not BaseChatModel._stream
            and getattr(model, "disable_streaming", False) is not True
        )
    if isinstance(model, BaseLLM):
        return kind.stream is BaseLLM.stream and kind._stream is not BaseLLM._stream
    return True


def serialized(llm: Any) -> dict[str, Any]:
    try:
        return dumpd(llm)
    except Exception:  # noqa: BLE001 - a name is enough for handlers that look at it
        return {"name": type(llm).__name__}


def as_chunk(piece: Any) -> GenerationChunk | ChatGenerationChunk:
    if isinstance(piece, BaseMessageChunk):
        return ChatGenerationChunk(message=piece)
    return GenerationChunk(text=piece_text(piece))


def result_from_pieces(pieces: list[Any]) -> LLMResult:
    """One ``LLMResult`` from the streamed pieces, as ``generate`` would have returned it."""
    if pieces and all(isinstance(p, BaseMessageChunk) for p in pieces):
        message = pieces[0]
        for p in pieces[1:]:
            message = message + p
        return LLMResult(generations=[[ChatGeneration(message=message)]])
    return LLMResult(generations=[[Generation(text="".join(piece_text(p) for p in pieces))]])


def result_from_batch(results: list[Any]) -> LLMResult:
    generations: list[list[Generation]] = []
    for res in results:
        if isinstance(res, BaseMessage):
            generations.append([ChatGeneration(message=res)])
        else:
            generations.append([Generation(text=piece_text(res))])
    return LLMResult(generations=generations)


def llm_callbacks(
    run_manager: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun | None,
    tags: list[str] | None,
) -> Any:
    """Callbacks for the model run: the run's children plus the chain's own handlers and tags.

    LangChain passes a chain's constructor callbacks and tags to the chain's run only, not to
    its children; they are added here so the chain's handlers see the tokens, and handlers
    can tell streams apart by the chain's tags (e.g. the final reduce of a summary).
    """
    if run_manager is None:
        return None
    child = run_manager.get_child()
    for handler in run_manager.handlers:
        if handler not in child.handlers:
            child.add_handler(handler, inherit=False)
    if tags:
        child.add_tags(tags, inherit=False)
    return child


def text_chunks(
    run: Generator[Split, None, dict[str, Any]], key: str
) -> Generator[AddableDict, None, dict[str, Any]]:
    """``{key: text}`` for each answer piece of ``run``; returns ``run``'s outputs."""
    try:
        while True:
            try:
                piece = next(run)
            except StopIteration as stop:
                return stop.value
            if piece.answer:
                yield AddableDict({key: piece.answer})
    finally:
        run.close()


def drain(run: Generator[Split, None, dict[str, Any]]) -> dict[str, Any]:
    """Run ``run`` to its end (its pieces unused); returns its outputs."""
    while True:
        try:
            next(run)
        except StopIteration as stop:
            return stop.value


def rest_of_outputs(outputs: dict[str, Any], output_key: str, *, streamed: bool) -> Iterator[AddableDict]:
    """The output chunk that follows the streamed text: every other key (all of them when the
    text was not streamed); an empty streamed answer still yields its (empty) text key."""
    rest = {k: v for k, v in outputs.items() if k != output_key or not streamed}
    if streamed and not outputs.get(output_key):
        rest[output_key] = outputs.get(output_key, "")
    if rest:
        yield AddableDict(rest)
