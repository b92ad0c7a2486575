"""``StreamLLMChain``: an ``LLMChain`` whose every single-prompt call streams.

LangChain's ``LLMChain`` answers with one blocking ``generate`` call, so callback handlers see
no tokens until the whole answer exists. This subclass routes single-prompt calls through the
model's ``stream`` instead: ``predict``/``invoke``/``run``/``__call__`` (and chains that embed
it, such as the combine step of a map-reduce) fire ``on_llm_new_token`` for every chunk, and
``stream_predict`` hands the same chunks to a UI as a generator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from langchain_classic.chains.llm import LLMChain, _get_language_model
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
    Callbacks,
)
from langchain_core.language_models import BaseLanguageModel
from langchain_core.outputs import LLMResult
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.runnables.utils import AddableDict
from typing_extensions import override

from chains.stream_pieces import (
    AsyncReasoningTap,
    ReasoningTap,
    as_chunk,
    drain,
    llm_callbacks,
    piece_reasoning,
    piece_text,
    reports_tokens,
    rest_of_outputs,
    result_from_batch,
    result_from_pieces,
    serialized,
    tapped,
    text_chunks,
)
from llm.reasoning import Split

__all__ = ["StreamLLMChain", "piece_reasoning", "piece_text", "reports_tokens", "result_from_batch"]


class StreamLLMChain(LLMChain):
    """An ``LLMChain`` that streams: callbacks get every token, UIs get a generator.

    Every single-prompt entry point (``predict``, ``invoke``, ``run``, ``__call__`` and their
    async twins, and chains that call them, like ``StuffDocumentsChain``) goes through the
    model's ``stream``; ``on_llm_new_token`` reaches the chain's callbacks and those passed at
    call time for each chunk, in order, and the full text is returned as before. Works with
    any LangChain LLM (``llm.ChatGLM``, ``FakeStreamingListLLM``) or chat model (the pieces
    are ``AIMessageChunk.content``). A list of prompts (``apply``/``generate`` with several
    inputs) runs as one ``llm.batch`` instead, which is what batching is for.

    Example:
        ```python
        from langchain_core.callbacks import StreamingStdOutCallbackHandler
        from langchain_core.prompts import PromptTemplate
        from chains import StreamLLMChain

        chain = StreamLLMChain(llm=llm, prompt=PromptTemplate.from_template("用一句话介绍{name}。"))
        text = chain.predict(name="诸葛亮", callbacks=[StreamingStdOutCallbackHandler()])
        for piece in chain.stream_predict(name="曹操"):  # e.g. a Gradio generator
            print(piece, end="", flush=True)
        ```
    """

    def _model(self, stop: list[str] | None) -> Runnable:
        """The model with ``stop`` and ``llm_kwargs`` bound, as ``LLMChain`` calls it."""
        if stop is None and not self.llm_kwargs:
            return self.llm
        return self.llm.bind(stop=stop, **self.llm_kwargs)

    # ------------------------------------------------------------------ sync
    def _stream_pieces(
        self,
        prompt: PromptValue,
        stop: list[str] | None,
        run_manager: CallbackManagerForChainRun | None,
        tap: ReasoningTap | None = None,
    ) -> Iterator[Any]:
        """The model's raw pieces for one prompt, with ``on_llm_new_token`` fired for each (``tap``
        included)."""
        callbacks = llm_callbacks(run_manager, self.tags)
        if tap is not None:
            callbacks = tapped(callbacks, tap, manager=CallbackManager)
        stream = self._model(stop).stream(prompt, config={"callbacks": callbacks})
        if reports_tokens(self.llm) or callbacks is None or not callbacks.handlers:
            yield from stream
            return
        # The model will not report its chunks: report them in an LLM run of our own so
        # handlers that track runs (start/new_token/end) see a well-formed sequence.
        (llm_run,) = callbacks.on_llm_start(
            serialized(self.llm), [prompt.to_string()], name=type(self.llm).__name__
        )
        pieces: list[Any] = []
        try:
            for piece in stream:
                llm_run.on_llm_new_token(piece_text(piece), chunk=as_chunk(piece))
                pieces.append(piece)
                yield piece
        except BaseException as e:
            llm_run.on_llm_error(e)
            raise
        llm_run.on_llm_end(result_from_pieces(pieces))

    def _stream_inputs(
        self, inputs: dict[str, Any], run_manager: CallbackManagerForChainRun | None, tap: ReasoningTap | None = None
    ) -> Iterator[Any]:
        prompts, stop = self.prep_prompts([inputs], run_manager=run_manager)
        yield from self._stream_pieces(prompts[0], stop, run_manager, tap)

    @override
    def generate(
        self,
        input_list: list[dict[str, Any]],
        run_manager: CallbackManagerForChainRun | None = None,
    ) -> LLMResult:
        """Stream a single prompt; run several as one ``llm.batch``."""
        if len(input_list) == 1:
            return result_from_pieces(list(self._stream_inputs(input_list[0], run_manager)))
        prompts, stop = self.prep_prompts(input_list, run_manager=run_manager)
        if not prompts:
            return LLMResult(generations=[])
        callbacks = run_manager.get_child() if run_manager else None
        results = self._model(stop).batch(prompts, {"callbacks": callbacks})
        return result_from_batch(results)

    def _run_pieces(
        self, inputs: dict[str, Any], run_manager: CallbackManagerForChainRun
    ) -> Generator[Split, None, dict[str, Any]]:
        """The non-empty (thinking, answer) pieces for prepared ``inputs``; returns the chain's outputs."""
        self._validate_inputs(inputs)
        pieces: list[Any] = []
        tap = ReasoningTap()
        for piece in self._stream_inputs(inputs, run_manager, tap):
            pieces.append(piece)
            split = Split(tap.take(), piece_text(piece))
            if split.reasoning or split.answer:
                yield split
        return self.create_outputs(result_from_pieces(pieces))[0]

    def stream_predict(self, callbacks: Callbacks = None, **kwargs: Any) -> Iterator[str]:
        """Yield the answer's text pieces as the model produces them (empty pieces skipped).

        Runs as one chain run, like ``predict``: callbacks get the chain start/end and every
        token; memory (if any) is updated once the generator is exhausted.
        """
        pieces = self.stream_predict_split(callbacks, **kwargs)
        try:
            yield from (piece.answer for piece in pieces if piece.answer)
        finally:
            pieces.close()

    def stream_predict_split(self, callbacks: Callbacks = None, **kwargs: Any) -> Iterator[Split]:
        """``stream_predict`` with a reasoning model's thinking beside the answer (``llm.reasoning``): each
        piece a ``Split(reasoning, answer)``, the thinking first, as it streams."""
        inputs = self.prep_inputs(kwargs)
        run_manager = self._sync_manager(callbacks).on_chain_start(None, inputs, name=self.get_name())
        try:
            outputs = yield from self._run_pieces(inputs, run_manager)
            self.prep_outputs(inputs, outputs)
        except BaseException as e:
            run_manager.on_chain_error(e)
            raise
        run_manager.on_chain_end(outputs)

    @override
    def stream(
        self, input: dict[str, Any] | Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        """Yield output chunks as tokens arrive; the chunks add up (``+``) to ``invoke``'s result.

        First the inputs (left out with ``return_only_outputs=True``), then ``{output_key: piece}``
        per text piece, then any other outputs (``full_generation``). With an output parser
        other than the plain string one, the parsed output comes as one chunk at the end.
        """
        config = ensure_config(config)
        return_only_outputs = kwargs.get("return_only_outputs", False)
        inputs = self.prep_inputs(input)
        run_manager = self._sync_manager(
            config.get("callbacks"), tags=config.get("tags"), metadata=config.get("metadata")
        ).on_chain_start(None, inputs, config.get("run_id"), name=config.get("run_name") or self.get_name())
        streamed = isinstance(self.output_parser, StrOutputParser)
        try:
            if not return_only_outputs:
                yield AddableDict(inputs)
            run = self._run_pieces(inputs, run_manager)
            outputs = (yield from text_chunks(run, self.output_key)) if streamed else drain(run)
            self.prep_outputs(inputs, outputs)
        except BaseException as e:
            run_manager.on_chain_error(e)
            raise
        run_manager.on_chain_end(outputs)
        yield from rest_of_outputs(outputs, self.output_key, streamed=streamed)

    def _sync_manager(
        self, callbacks: Callbacks, *, tags: list[str] | None = None, metadata: dict[str, Any] | None = None
    ) -> CallbackManager:
        return CallbackManager.configure(
            callbacks, self.callbacks, self.verbose, tags, self.tags, metadata, self.metadata
        )

    # ----------------------------------------------------------------- async
    async def _astream_pieces(
        self,
        prompt: PromptValue,
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForChainRun | None,
        tap: ReasoningTap | None = None,
    ) -> AsyncIterator[Any]:
        callbacks = llm_callbacks(run_manager, self.tags)
        if tap is not None:
            callbacks = tapped(callbacks, tap, manager=AsyncCallbackManager)
        stream = self._model(stop).astream(prompt, config={"callbacks": callbacks})
        if reports_tokens(self.llm) or callbacks is None or not callbacks.handlers:
            async for piece in stream:
                yield piece
            return
        (llm_run,) = await callbacks.on_llm_start(
            serialized(self.llm), [prompt.to_string()], name=type(self.llm).__name__
        )
        pieces: list[Any] = []
        try:
            async for piece in stream:
                await llm_run.on_llm_new_token(piece_text(piece), chunk=as_chunk(piece))
                pieces.append(piece)
                yield piece
        except BaseException as e:
            await llm_run.on_llm_error(e)
            raise
        await llm_run.on_llm_end(result_from_pieces(pieces))

    async def _astream_inputs(
        self, inputs: dict[str, Any], run_manager: AsyncCallbackManagerForChainRun | None,
        tap: ReasoningTap | None = None,
    ) -> AsyncIterator[Any]:
        prompts, stop = await self.aprep_prompts([inputs], run_manager=run_manager)
        async for piece in self._astream_pieces(prompts[0], stop, run_manager, tap):
            yield piece

    @override
    async def agenerate(
        self,
        input_list: list[dict[str, Any]],
        run_manager: AsyncCallbackManagerForChainRun | None = None,
    ) -> LLMResult:
        """Async twin of ``generate``: stream one prompt, ``abatch`` several."""
        if len(input_list) == 1:
            pieces = [p async for p in self._astream_inputs(input_list[0], run_manager)]
            return result_from_pieces(pieces)
        prompts, stop = await self.aprep_prompts(input_list, run_manager=run_manager)
        if not prompts:
            return LLMResult(generations=[])
        callbacks = run_manager.get_child() if run_manager else None
        results = await self._model(stop).abatch(prompts, {"callbacks": callbacks})
        return result_from_batch(results)

    async def _arun_pieces(
        self, inputs: dict[str, Any], run_manager: AsyncCallbackManagerForChainRun
    ) -> AsyncIterator[Split | dict[str, Any]]:
        """Async twin of ``_run_pieces``: the non-empty (thinking, answer) pieces, then the outputs (a dict)."""
        self._validate_inputs(inputs)
        pieces: list[Any] = []
        tap = AsyncReasoningTap()
        async for piece in self._astream_inputs(inputs, run_manager, tap):
            pieces.append(piece)
            split = Split(tap.take(), piece_text(piece))
            if split.reasoning or split.answer:
                yield split
        yield self.create_outputs(result_from_pieces(pieces))[0]

    async def _astart(
        self, inputs: dict[str, Any], config: RunnableConfig
    ) -> AsyncCallbackManagerForChainRun:
        manager = AsyncCallbackManager.configure(
            config.get("callbacks"), self.callbacks, self.verbose, config.get("tags"), self.tags,
            config.get("metadata"), self.metadata,
        )
        return await manager.on_chain_start(
            None, inputs, config.get("run_id"), name=config.get("run_name") or self.get_name()
        )

    async def astream_predict(self, callbacks: Callbacks = None, **kwargs: Any) -> AsyncIterator[str]:
        """Async twin of ``stream_predict``."""
        pieces = self.astream_predict_split(callbacks, **kwargs)
        try:
            async for piece in pieces:
                if piece.answer:
                    yield piece.answer
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]

    async def astream_predict_split(self, callbacks: Callbacks = None, **kwargs: Any) -> AsyncIterator[Split]:
        """Async twin of ``stream_predict_split``."""
        inputs = await self.aprep_inputs(kwargs)
        run_manager = await self._astart(inputs, {"callbacks": callbacks})
        outputs: dict[str, Any] = {}
        try:
            async for item in self._arun_pieces(inputs, run_manager):
                if isinstance(item, Split):
                    yield item
                else:
                    outputs = item
            await self.aprep_outputs(inputs, outputs)
        except BaseException as e:
            await run_manager.on_chain_error(e)
            raise
        await run_manager.on_chain_end(outputs)

    @override
    async def astream(
        self, input: dict[str, Any] | Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Async twin of ``stream``: output chunks as tokens arrive, adding up to ``ainvoke``'s result."""
        config = ensure_config(config)
        return_only_outputs = kwargs.get("return_only_outputs", False)
        inputs = await self.aprep_inputs(input)
        run_manager = await self._astart(inputs, config)
        streamed = isinstance(self.output_parser, StrOutputParser)
        outputs: dict[str, Any] = {}
        try:
            if not return_only_outputs:
                yield AddableDict(inputs)
            async for item in self._arun_pieces(inputs, run_manager):
                if not isinstance(item, Split):
                    outputs = item
                elif streamed and item.answer:
                    yield AddableDict({self.output_key: item.answer})
            await self.aprep_outputs(inputs, outputs)
        except BaseException as e:
            await run_manager.on_chain_error(e)
            raise
        await run_manager.on_chain_end(outputs)
        for chunk in rest_of_outputs(outputs, self.output_key, streamed=streamed):
            yield chunk

    # ``predict``/``apredict`` are inherited: they call ``__call__``/``acall`` -> ``_call`` ->
    # ``generate`` above, so they stream and return the joined text.

    @property
    def language_model(self) -> BaseLanguageModel:
        """The underlying language model (unwrapping bindings and fallbacks)."""
        return _get_language_model(self.llm)
