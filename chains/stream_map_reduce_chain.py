"""``StreamMapReduceChain``: a map-reduce summarizer that batches the map and streams the reduce.

Stages, each a small generator function that yields events and returns its result:

- ``map_summaries``: one prompt per document, run as ``llm.batch`` calls of ``batch_size``;
  yields ``Progress("map", done, total)`` after each batch.
- ``collapse_summaries``: while the combine prompt would exceed ``token_max`` (measured with
  the model's tokenizer, ``llm.get_num_tokens``), merge groups of summaries with the collapse
  prompt; yields ``Progress("collapse", done, total)`` per group.
- ``reduce_summaries``: the final combine prompt through a ``StreamLLMChain``; yields
  ``Token`` pieces as they are generated.

``StreamMapReduceChain.stream_summary`` chains them for UIs; ``invoke``/``run`` and
``combine_docs`` drain the same generator, so callbacks get the same progress (custom event
``PROGRESS_EVENT``, see ``chains.ProgressCallbackHandler``) and the reduce tokens
(``on_llm_new_token`` with tag ``REDUCE_TAG``). The async twins (``ainvoke``, ``astream_summary``) run
it on a worker thread with ``llm.cancellation.run_cancellable``: cancelling the awaiting task stops the
model within a token, also in a batched map step, and ``scoped_stage`` ends the pipeline there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import Any, TypeVar

from langchain_classic.chains.combine_documents.base import BaseCombineDocumentsChain
from langchain_classic.chains.combine_documents.map_reduce import MapReduceDocumentsChain
from langchain_classic.chains.combine_documents.reduce import (
    ReduceDocumentsChain,
    collapse_docs,
    split_list_of_docs,
)
from langchain_classic.chains.combine_documents.stuff import StuffDocumentsChain
from langchain_classic.chains.llm import LLMChain
from langchain_core._api import suppress_langchain_deprecation_warning
from langchain_core.callbacks import CallbackManager, Callbacks
from langchain_core.callbacks.base import BaseCallbackManager
from langchain_core.callbacks.manager import dispatch_custom_event
from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from langchain_core.prompts import BasePromptTemplate, format_document
from pydantic import Field
from typing_extensions import override

from chains.events import Event, Progress, Summary, Token, piece_events
from chains.prompts import COLLAPSE_PROMPT, COMBINE_PROMPT, MAP_PROMPT
from chains.stream_llm_chain import StreamLLMChain, result_from_batch
from llm.cancellation import cancel_scope, run_cancellable
from llm.reasoning import thinking_off

__all__ = [
    "COLLAPSE_TAG",
    "MAP_TAG",
    "PROGRESS_EVENT",
    "REDUCE_TAG",
    "StageCancelled",
    "StreamMapReduceChain",
    "collapse_summaries",
    "load_stream_summarize_chain",
    "map_summaries",
    "reduce_summaries",
    "scoped_stage",
]

PROGRESS_EVENT = "glmkb_summary_progress"
"""Name of the custom callback event carrying ``{"stage", "done", "total"}``."""
MAP_TAG = "summary_map"
COLLAPSE_TAG = "summary_collapse"
REDUCE_TAG = "summary_reduce"
"""Tag on the LLM runs of each stage; the final summary's tokens carry ``REDUCE_TAG``."""

T = TypeVar("T")
Stage = Generator[Event, None, T]


def report_progress(callbacks: Callbacks, progress: Progress) -> Progress:
    """Send ``progress`` to the callbacks as the ``PROGRESS_EVENT`` custom event."""
    if isinstance(callbacks, BaseCallbackManager) and callbacks.parent_run_id is not None:
        data = {"stage": progress.stage, "done": progress.done, "total": progress.total}
        dispatch_custom_event(PROGRESS_EVENT, data, config={"callbacks": callbacks})
    return progress


def _batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def map_summaries(
    llm_chain: LLMChain,
    docs: Sequence[Document],
    *,
    document_variable_name: str,
    batch_size: int = 4,
    callbacks: Callbacks = None,
    **kwargs: Any,
) -> Stage[list[Document]]:
    """Summarize each document with ``llm_chain``'s prompt, ``batch_size`` prompts per ``llm.batch``, a
    reasoning model's thinking off (``llm.reasoning.thinking_off``: it counted against each note's cap).

    Yields ``Progress("map", done, total)`` (also sent to ``callbacks``) before the first and
    after every batch; returns one summary Document per input, metadata kept.
    """
    if batch_size < 1:
        msg = f"batch_size must be at least 1, got {batch_size}"
        raise ValueError(msg)
    total = len(docs)
    yield report_progress(callbacks, Progress("map", 0, total))
    model = llm_chain.llm
    call_kwargs = {**thinking_off(model), **llm_chain.llm_kwargs}  # notes: the thinking would be dropped anyway
    summaries: list[Document] = []
    for batch in _batched(docs, batch_size):
        inputs = [{document_variable_name: d.page_content, **kwargs} for d in batch]
        prompts, stop = llm_chain.prep_prompts(inputs)
        bound = model.bind(stop=stop, **call_kwargs) if stop or call_kwargs else model
        config: dict[str, Any] = {"callbacks": callbacks, "tags": [MAP_TAG]}
        results = bound.batch(prompts, config)
        outputs = llm_chain.create_outputs(result_from_batch(results))
        for doc, out in zip(batch, outputs, strict=True):
            text = str(out[llm_chain.output_key]).strip()
            summaries.append(Document(page_content=text, metadata=dict(doc.metadata)))
        yield report_progress(callbacks, Progress("map", len(summaries), total))
    return summaries


def _collapse_chain(reduce_chain: ReduceDocumentsChain) -> BaseCombineDocumentsChain:
    return reduce_chain.collapse_documents_chain or reduce_chain.combine_documents_chain


def collapse_summaries(
    reduce_chain: ReduceDocumentsChain,
    docs: Sequence[Document],
    *,
    token_max: int | None = None,
    callbacks: Callbacks = None,
    **kwargs: Any,
) -> Stage[list[Document]]:
    """Merge summaries with the collapse prompt until the combine prompt fits ``token_max``.

    Lengths are the combine prompt's ``prompt_length`` (the model's tokenizer). Each round
    groups consecutive summaries that fit together and collapses each group, yielding
    ``Progress("collapse", done, total)`` per group. Stops with a clear error when a round
    no longer shrinks the text or ``collapse_max_retries`` rounds did not suffice.
    """
    token_max = token_max or reduce_chain.token_max
    length = reduce_chain.combine_documents_chain.prompt_length
    collapse_chain = _collapse_chain(reduce_chain)
    max_rounds = reduce_chain.collapse_max_retries or 8
    result = list(docs)
    num_tokens = length(result, **kwargs)
    rounds = 0
    while num_tokens is not None and num_tokens > token_max:
        try:
            groups = split_list_of_docs(result, length, token_max, **kwargs)
        except ValueError as e:
            msg = (
                f"one summary alone makes a combine prompt over token_max={token_max} tokens; "
                "raise token_max (llm.max_input_tokens) or lower the generation length"
            )
            raise ValueError(msg) from e
        yield report_progress(callbacks, Progress("collapse", 0, len(groups)))
        collapsed = []
        for i, group in enumerate(groups, 1):
            collapsed.append(
                collapse_docs(
                    group,
                    lambda ds, **kw: collapse_chain.combine_docs(ds, callbacks=callbacks, **kw)[0],
                    **kwargs,
                )
            )
            yield report_progress(callbacks, Progress("collapse", i, len(groups)))
        new_tokens = length(collapsed, **kwargs)
        rounds += 1
        if new_tokens is not None and new_tokens >= num_tokens:
            msg = (
                f"collapsing the summaries did not shorten them ({num_tokens} -> {new_tokens} "
                f"tokens, token_max={token_max}); raise token_max or shorten the generation"
            )
            raise ValueError(msg)
        if rounds >= max_rounds and new_tokens is not None and new_tokens > token_max:
            msg = f"the summaries still exceed token_max={token_max} after {rounds} collapse rounds"
            raise ValueError(msg)
        result, num_tokens = collapsed, new_tokens
    return result


def combine_inputs(combine_chain: StuffDocumentsChain, docs: Sequence[Document], **kwargs: Any) -> dict[str, Any]:
    """The combine prompt's inputs: documents formatted and joined, plus other prompt variables."""
    texts = [format_document(doc, combine_chain.document_prompt) for doc in docs]
    variables = combine_chain.llm_chain.prompt.input_variables
    inputs = {k: v for k, v in kwargs.items() if k in variables}
    inputs[combine_chain.document_variable_name] = combine_chain.document_separator.join(texts)
    return inputs


def reduce_summaries(
    combine_chain: BaseCombineDocumentsChain,
    docs: Sequence[Document],
    *,
    callbacks: Callbacks = None,
    **kwargs: Any,
) -> Stage[str]:
    """Write the final summary from ``docs``, yielding ``Token`` pieces as they are generated (after a
    reasoning model's ``Reasoning`` pieces)."""
    if isinstance(combine_chain, StuffDocumentsChain) and isinstance(
        combine_chain.llm_chain, StreamLLMChain
    ):
        pieces: list[str] = []
        inputs = combine_inputs(combine_chain, docs, **kwargs)
        for piece in combine_chain.llm_chain.stream_predict_split(callbacks=callbacks, **inputs):
            yield from piece_events(piece, pieces)
        return "".join(pieces)
    # Any other combine chain: no token stream, one piece.
    text, _ = combine_chain.combine_docs(list(docs), callbacks=callbacks, **kwargs)
    yield Token(text)
    return text


class StageCancelled(Exception):
    """A stage's cancel event was set (``scoped_stage``): the run ends without a result."""


def scoped_stage(stage: Stage[T], cancel: threading.Event | None) -> Stage[T]:
    """Run ``stage`` with every step inside ``llm.cancel_scope(cancel)`` (a generation ends within a token
    once it is set); between steps, close it and raise ``StageCancelled`` once ``cancel`` is set."""
    while True:
        if cancel is not None and cancel.is_set():
            stage.close()
            raise StageCancelled
        try:
            if cancel is None:
                event = next(stage)
            else:
                with cancel_scope(cancel):
                    event = next(stage)
        except StopIteration as stop:
            return stop.value
        yield event


def drain(stage: Generator[Any, None, T]) -> T:
    """Run a stage generator to its end and return its result."""
    while True:
        try:
            next(stage)
        except StopIteration as stop:
            return stop.value


class StreamMapReduceChain(MapReduceDocumentsChain):
    """Map-reduce over documents with batched map, token-budgeted collapse and a streamed reduce.

    A drop-in ``MapReduceDocumentsChain`` (build one with ``load_stream_summarize_chain``):
    ``invoke({"input_documents": docs})`` returns ``{"output_text": ...}`` while callbacks
    receive map/collapse progress (custom event ``PROGRESS_EVENT``) and the final summary's
    tokens live. For UIs, ``stream_summary(docs)`` yields ``Progress`` events, then ``Token``
    pieces of the final summary, then one ``Summary``.
    """

    batch_size: int = Field(4, ge=1)
    """Prompts per ``llm.batch`` call in the map stage."""

    @override
    def combine_docs(
        self,
        docs: list[Document],
        token_max: int | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> tuple[str, dict]:
        """Map, collapse and reduce ``docs`` (the path of ``invoke``/``run``)."""
        return self._combine(docs, token_max, callbacks, None, **kwargs)

    @override
    async def acombine_docs(
        self,
        docs: list[Document],
        token_max: int | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> tuple[str, dict]:
        """The same pipeline on a worker thread (local models generate in threads anyway); cancelling the
        awaiting task stops it within a token and waits until the model is free (``run_cancellable``)."""
        return await run_cancellable(lambda cancel: self._combine(docs, token_max, callbacks, cancel, **kwargs))

    def _combine(
        self,
        docs: list[Document],
        token_max: int | None,
        callbacks: Callbacks,
        cancel: threading.Event | None,
        **kwargs: Any,
    ) -> tuple[str, dict]:
        """``combine_docs``, ended (``StageCancelled``) between steps once ``cancel`` is set."""
        events = self.summary_events(docs, token_max=token_max, callbacks=callbacks, **kwargs)
        summary = drain(scoped_stage(events, cancel))
        extra: dict[str, Any] = {}
        if self.return_intermediate_steps:
            extra["intermediate_steps"] = list(summary.intermediate)
        return summary.text, extra

    def summary_events(
        self,
        docs: Sequence[Document],
        *,
        token_max: int | None = None,
        callbacks: Callbacks = None,
        **kwargs: Any,
    ) -> Stage[Summary]:
        """The pipeline as one generator of events (returns and yields the ``Summary``)."""
        if not docs:
            msg = "nothing to summarize: no documents were given"
            raise ValueError(msg)
        mapped = yield from map_summaries(
            self.llm_chain,
            docs,
            document_variable_name=self.document_variable_name,
            batch_size=self.batch_size,
            callbacks=callbacks,
            **kwargs,
        )
        reduce_chain = self.reduce_documents_chain
        if isinstance(reduce_chain, ReduceDocumentsChain):
            collapsed = yield from collapse_summaries(
                reduce_chain, mapped, token_max=token_max, callbacks=callbacks, **kwargs
            )
            combine_chain = reduce_chain.combine_documents_chain
        else:
            collapsed, combine_chain = mapped, reduce_chain
        text = yield from reduce_summaries(combine_chain, collapsed, callbacks=callbacks, **kwargs)
        summary = Summary(text.strip(), tuple(d.page_content for d in mapped))
        yield summary
        return summary

    def stream_summary(
        self,
        docs: Sequence[Document],
        *,
        token_max: int | None = None,
        callbacks: Callbacks = None,
    ) -> Iterator[Event]:
        """Yield ``Progress`` (map, collapse), then ``Token`` pieces, then one ``Summary``.

        Runs as one chain run like ``invoke``: callbacks see the same events.
        """
        manager = CallbackManager.configure(
            callbacks, self.callbacks, self.verbose, None, self.tags, None, self.metadata
        )
        run_manager = manager.on_chain_start(None, {self.input_key: list(docs)}, name=self.get_name())
        try:
            summary = yield from self.summary_events(
                docs, token_max=token_max, callbacks=run_manager.get_child()
            )
        except BaseException as e:
            run_manager.on_chain_error(e)
            raise
        run_manager.on_chain_end({self.output_key: summary.text})

    async def astream_summary(
        self,
        docs: Sequence[Document],
        *,
        token_max: int | None = None,
        callbacks: Callbacks = None,
    ) -> AsyncIterator[Event]:
        """Async twin of ``stream_summary`` (the pipeline runs on a worker thread). Cancelling the consuming
        task stops the model within a token (each step runs with ``run_cancellable`` under one cancel event)
        and closes the pipeline once its step has ended."""
        events = self.stream_summary(docs, token_max=token_max, callbacks=callbacks)
        done = object()
        cancel = threading.Event()
        try:
            while (event := await run_cancellable(lambda _: next(events, done), cancel=cancel)) is not done:
                yield event
        finally:
            await asyncio.to_thread(events.close)

    @property
    def _chain_type(self) -> str:
        return "stream_map_reduce_documents_chain"


def load_stream_summarize_chain(
    llm: BaseLanguageModel,
    *,
    map_prompt: BasePromptTemplate = MAP_PROMPT,
    combine_prompt: BasePromptTemplate = COMBINE_PROMPT,
    collapse_prompt: BasePromptTemplate | None = COLLAPSE_PROMPT,
    combine_document_variable_name: str = "text",
    map_reduce_document_variable_name: str = "text",
    reduce_llm: BaseLanguageModel | None = None,
    collapse_llm: BaseLanguageModel | None = None,
    token_max: int = 3000,
    batch_size: int = 4,
    collapse_max_retries: int | None = None,
    verbose: bool | None = None,
    callbacks: Callbacks = None,
    **kwargs: Any,
) -> StreamMapReduceChain:
    """Like ``load_summarize_chain(llm, chain_type="map_reduce")``, with Chinese prompts and streaming.

    The map, combine and collapse ``llm_chain``s are ``StreamLLMChain``s (the final reduce
    streams its tokens, a reasoning model's thinking before them; map and collapse run without
    thinking); collapse runs when the combine prompt would exceed ``token_max`` tokens of the
    model's tokenizer. ``collapse_prompt=None`` collapses with the combine
    prompt. ``batch_size`` prompts go to each ``llm.batch`` call of the map stage.
    """
    common: dict[str, Any] = {"verbose": verbose, "callbacks": callbacks}
    map_chain = StreamLLMChain(llm=llm, prompt=map_prompt, tags=[MAP_TAG], **common)
    reduce_llm_chain = StreamLLMChain(
        llm=reduce_llm or llm, prompt=combine_prompt, tags=[REDUCE_TAG], **common
    )
    with suppress_langchain_deprecation_warning():
        combine_chain = StuffDocumentsChain(
            llm_chain=reduce_llm_chain,
            document_variable_name=combine_document_variable_name,
            **common,
        )
        collapse_chain = None
        if collapse_prompt is not None:
            collapse_model = collapse_llm or llm
            collapse_chain = StuffDocumentsChain(
                llm_chain=StreamLLMChain(  # merged notes are notes: the thinking off, as in map_summaries
                    llm=collapse_model, prompt=collapse_prompt, tags=[COLLAPSE_TAG],
                    llm_kwargs=thinking_off(collapse_model), **common,
                ),
                document_variable_name=combine_document_variable_name,
                **common,
            )
        elif collapse_llm is not None:
            msg = "collapse_llm was given without collapse_prompt; give both or neither"
            raise ValueError(msg)
        reduce_chain = ReduceDocumentsChain(
            combine_documents_chain=combine_chain,
            collapse_documents_chain=collapse_chain,
            token_max=token_max,
            collapse_max_retries=collapse_max_retries,
            **common,
        )
    return StreamMapReduceChain(
        llm_chain=map_chain,
        reduce_documents_chain=reduce_chain,
        document_variable_name=map_reduce_document_variable_name,
        batch_size=batch_size,
        **common,
        **kwargs,
    )
