"""``KnowledgeBaseQAChain``: retrieve passages, answer from them only, stream, cite.

One question runs as: (with history) condense the follow-up into a standalone question →
retrieve → drop passages under the score threshold → fit passages into the prompt budget
(real tokenizer) → stream the answer. Nothing relevant → the refusal sentence, without
calling the LLM. No LLM → the passages with a message saying why there is no answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_classic.chains.base import Chain
from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    Callbacks,
)
from langchain_core.documents import Document
from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import BaseMessage
from langchain_core.prompts import BasePromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable
from pydantic import ConfigDict, Field

from chains.answer_context import drop_low_scores, fit_passages, render_answer_prompt
from chains.chain_run import astream_chain_run, stream_chain_run
from chains.condense import CONDENSE_STAGE, CONDENSE_TAG, QuestionCondenser
from chains.condense import clean_condensed as _clean_condensed  # noqa: F401  (tests import it from here)
from chains.events import Answer, Event, Source, Sources, Token, piece_events
from chains.history import History, to_messages
from chains.passages import format_passages
from chains.prompts import CONDENSE_QUESTION_PROMPT, NO_LLM_MESSAGE, QA_PROMPT, REFUSAL
from chains.stream_llm_chain import StreamLLMChain

__all__ = ["CONDENSE_STAGE", "CONDENSE_TAG", "KnowledgeBaseQAChain", "check_question", "format_passages"]


@dataclass
class _Plan:
    """What retrieval decided: the sources, and either a fixed reply or the prompt inputs."""

    question: str
    docs: list[Document]
    reply: str | None = None
    refused: bool = False
    llm_used: bool = True
    sources: tuple[Source, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.sources = tuple(Source.from_document(d) for d in self.docs)

    def opening(self) -> Iterator[Event]:
        """``Sources``; then, for a fixed reply (refusal, no LLM), its ``Token`` and the ``Answer``."""
        yield Sources(self.sources, self.question)
        if self.reply is not None:
            yield Token(self.reply)
            yield Answer(self.reply, self.sources, self.question, self.refused, self.llm_used)

    def answer(self, text: str) -> Answer:
        return Answer(text, self.sources, self.question)


class KnowledgeBaseQAChain(Chain):
    """Answer questions from a knowledge base, streaming tokens and returning sources.

    Inputs: ``question`` and optional ``chat_history`` (``list[BaseMessage]``; ``[(question,
    answer), ...]`` pairs and ``{"role", "content"}`` dicts are converted by
    ``chains.history.to_messages``). Outputs: ``answer``, ``source_documents``
    (the passages given to the model, metadata per docs/ARCHITECTURE.md; a passage cut to fit
    has its ``end`` moved in and ``truncated=True``), ``standalone_question``, ``refused``.

    For UIs use ``stream_answer`` (or ``astream_answer``), which yields ``Sources`` first,
    then ``Token`` pieces (after a reasoning model's ``Reasoning`` pieces), then one ``Answer``::

        chain = KnowledgeBaseQAChain.from_settings(kb.as_retriever(), llm, settings)
        for event in chain.stream_answer("刘备的两个结义兄弟是谁？", history=chat):
            match event:
                case Sources(sources=sources): show_citations(sources)
                case Token(text=text): reply += text
                case Answer(text=text, sources=sources): finish(text, sources)
    """

    retriever: BaseRetriever
    llm: BaseLanguageModel | None = None
    """``None``: no model; the retrieved passages are returned with ``no_llm_message``."""
    prompt: BasePromptTemplate = QA_PROMPT
    """Answer prompt with ``context`` and ``question`` variables: a ``PromptTemplate`` or a
    ``ChatPromptTemplate`` (with a chat model such as ``llm.ChatGLMChat`` its system message
    fills the model's system slot)."""
    condense_prompt: BasePromptTemplate = CONDENSE_QUESTION_PROMPT
    """Standalone-question prompt with ``chat_history`` and ``question`` variables."""
    max_input_tokens: int = Field(6144, ge=16)
    """Budget for each prompt in tokens of the model's tokenizer (``llm.get_num_tokens``)."""
    score_threshold: float | None = None
    """Passages scoring below this (metadata ``score``) are dropped before answering."""
    refusal: str = REFUSAL
    no_llm_message: str = NO_LLM_MESSAGE
    condense_max_tokens: int = Field(128, ge=8)
    """Most tokens the model may spend rewriting a follow-up into a standalone question."""
    min_passage_tokens: int = Field(16, ge=1)
    """A passage is cut to fit only if at least this many tokens of it fit; else dropped."""
    input_key: str = "question"
    history_key: str = "chat_history"
    output_key: str = "answer"

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    @classmethod
    def from_settings(
        cls, retriever: BaseRetriever, llm: BaseLanguageModel | None, settings: Any, **fields: Any
    ) -> KnowledgeBaseQAChain:
        """Build with ``configs.Settings``: the prompt budget is ``settings.llm.max_input_tokens``.

        ``retrieval.score_threshold`` is not repeated here: the knowledge base's retriever
        applies it to the retrieval score, before any reranker rescales ``score``.
        """
        fields.setdefault("max_input_tokens", settings.llm.max_input_tokens)
        return cls(retriever=retriever, llm=llm, **fields)

    @property
    def input_keys(self) -> list[str]:
        return [self.input_key]

    @property
    def output_keys(self) -> list[str]:
        return [self.output_key, "source_documents", "standalone_question", "refused"]

    @property
    def _chain_type(self) -> str:
        return "knowledge_base_qa_chain"

    # ------------------------------------------------------------ small steps
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for the configured model."""
        if self.llm is None:
            return 0
        return self.llm.get_num_tokens(text)

    def _condenser(self) -> QuestionCondenser:
        return QuestionCondenser(
            llm=self.llm,
            prompt=self.condense_prompt,
            max_input_tokens=self.max_input_tokens,
            max_tokens=self.condense_max_tokens,
            count_tokens=self.count_tokens,
        )

    def trim_history(self, messages: Sequence[BaseMessage], question: str) -> list[BaseMessage]:
        """The newest messages for which the condense prompt fits ``max_input_tokens``."""
        return self._condenser().trim_history(messages, question)

    def condense_inputs(self, question: str, messages: Sequence[BaseMessage]) -> dict[str, str] | None:
        """Inputs of the condense prompt, or None when there is nothing to condense."""
        return self._condenser().inputs(question, messages)

    def filter_by_score(self, docs: Sequence[Document]) -> list[Document]:
        """Drop passages under ``score_threshold`` (passages without a score are kept)."""
        return drop_low_scores(docs, self.score_threshold)

    def render_prompt(self, docs: Sequence[Document], question: str) -> str:
        """The answer prompt as the model will get it (``answer_context.render_answer_prompt``)."""
        return render_answer_prompt(self.prompt, self.llm, docs, question)

    def fit_passages(self, docs: Sequence[Document], question: str) -> list[Document]:
        """The best passages that fit the answer prompt into ``max_input_tokens``."""
        return fit_passages(
            docs,
            render=lambda kept: self.render_prompt(kept, question),
            max_tokens=self.max_input_tokens,
            count_tokens=self.count_tokens,
            min_tokens=self.min_passage_tokens,
        )

    def plan(self, question: str, docs: Sequence[Document]) -> _Plan:
        """Decide from the retrieved passages: refuse, list passages (no LLM), or answer."""
        docs = self.filter_by_score(docs)
        if not docs:
            return _Plan(question, [], reply=self.refusal, refused=True)
        if self.llm is None:
            return _Plan(question, list(docs), reply=self.no_llm_message, llm_used=False)
        return _Plan(question, self.fit_passages(docs, question))

    def _answer_chain(self) -> StreamLLMChain:
        return StreamLLMChain(llm=self.llm, prompt=self.prompt)

    # ---------------------------------------------------------------- sync run
    def _condense_model(self) -> Runnable:
        """The model with its answer length capped at ``condense_max_tokens`` where it has such a knob."""
        return self._condenser().model()

    def _condense(
        self, question: str, messages: Sequence[BaseMessage], run_manager: CallbackManagerForChainRun
    ) -> Generator[Event, None, str]:
        """Stream the standalone question (``chains.condense``), yielding ``Progress`` per piece."""
        return (yield from self._condenser().stream(question, messages, callbacks=run_manager.get_child(CONDENSE_TAG)))

    def _events(
        self, question: str, history: History | None, run_manager: CallbackManagerForChainRun
    ) -> Iterator[Event]:
        question = check_question(question)
        standalone = yield from self._condense(question, to_messages(history), run_manager)
        docs = self.retriever.invoke(standalone, config={"callbacks": run_manager.get_child()})
        plan = self.plan(standalone, docs)
        yield from plan.opening()
        if plan.reply is not None:
            return
        pieces: list[str] = []
        for piece in self._answer_chain().stream_predict_split(
            callbacks=run_manager.get_child(),
            context=format_passages(plan.docs),
            question=standalone,
        ):
            yield from piece_events(piece, pieces)
        yield plan.answer("".join(pieces))

    def _call(
        self, inputs: dict[str, Any], run_manager: CallbackManagerForChainRun | None = None
    ) -> dict[str, Any]:
        run_manager = run_manager or CallbackManagerForChainRun.get_noop_manager()
        events = self._events(inputs[self.input_key], inputs.get(self.history_key), run_manager)
        return self._outputs(list(events))

    def _outputs(self, events: Sequence[Event]) -> dict[str, Any]:
        answer = next(e for e in reversed(events) if isinstance(e, Answer))
        return {
            self.output_key: answer.text,
            "source_documents": [s.to_document() for s in answer.sources],
            "standalone_question": answer.question,
            "refused": answer.refused,
        }

    def stream_answer(
        self,
        question: str,
        *,
        history: History | None = None,
        callbacks: Callbacks = None,
    ) -> Iterator[Event]:
        """Yield ``Sources``, then ``Token`` pieces, then one ``Answer`` (see ``chains.events``).

        With history, ``Progress("condense", n, max)`` events come first while the follow-up
        is rewritten into a standalone question; a UI can ignore them (they exist so that
        closing the stream stops that step too).

        The refusal and the no-LLM message also arrive as one ``Token`` before the ``Answer``,
        so a UI that appends tokens shows them without special cases.
        """
        yield from stream_chain_run(
            self,
            {self.input_key: question, self.history_key: history},
            events=lambda run_manager: self._events(question, history, run_manager),
            outputs=self._outputs,
            callbacks=callbacks,
        )

    # --------------------------------------------------------------- async run
    async def _acondense(
        self, question: str, messages: Sequence[BaseMessage], run_manager: AsyncCallbackManagerForChainRun
    ) -> AsyncIterator[Event | str]:
        """Async twin of ``_condense``: ``Progress`` events, then the standalone question (a str)."""
        async for item in self._condenser().astream(question, messages, callbacks=run_manager.get_child(CONDENSE_TAG)):
            yield item

    async def _aevents(
        self,
        question: str,
        history: History | None,
        run_manager: AsyncCallbackManagerForChainRun,
    ) -> AsyncIterator[Event]:
        question = check_question(question)
        standalone = question
        async for item in self._acondense(question, to_messages(history), run_manager):
            if isinstance(item, str):
                standalone = item
            else:
                yield item
        docs = await self.retriever.ainvoke(standalone, config={"callbacks": run_manager.get_child()})
        plan = await asyncio.to_thread(self.plan, standalone, docs)
        for event in plan.opening():
            yield event
        if plan.reply is not None:
            return
        pieces: list[str] = []
        async for piece in self._answer_chain().astream_predict_split(
            callbacks=run_manager.get_child(),
            context=format_passages(plan.docs),
            question=standalone,
        ):
            for event in piece_events(piece, pieces):
                yield event
        yield plan.answer("".join(pieces))

    async def _acall(
        self, inputs: dict[str, Any], run_manager: AsyncCallbackManagerForChainRun | None = None
    ) -> dict[str, Any]:
        run_manager = run_manager or AsyncCallbackManagerForChainRun.get_noop_manager()
        events = [
            e async for e in self._aevents(inputs[self.input_key], inputs.get(self.history_key), run_manager)
        ]
        return self._outputs(events)

    async def astream_answer(
        self,
        question: str,
        *,
        history: History | None = None,
        callbacks: Callbacks = None,
    ) -> AsyncIterator[Event]:
        """Async twin of ``stream_answer``."""
        events = astream_chain_run(
            self,
            {self.input_key: question, self.history_key: history},
            events=lambda run_manager: self._aevents(question, history, run_manager),
            outputs=self._outputs,
            callbacks=callbacks,
        )
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # async for does not close its source: a Stop must still end the run


def check_question(question: object) -> str:
    """The question, stripped; ValueError (bad input) when it is not non-empty text. Servers call it
    before a streamed answer starts, while the status can still be a 400."""
    if not isinstance(question, str) or not question.strip():
        msg = f"the question must be non-empty text, got {question!r}"
        raise ValueError(msg)
    return question.strip()
