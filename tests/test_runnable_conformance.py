"""glmkb's LangChain pieces as Runnables: regressions found by probing them as user code does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate

from chains import StreamLLMChain
from llm import ChatGLM, cancel_scope
from tests.fixtures.corpus import mini_novel
from tests.fixtures.models import ForcedTokens, forced_answer, forced_chatglm

ANSWER = "刘备字玄德，涿郡涿县人。"
LONG = ANSWER * 6
PROMPT = PromptTemplate.from_template("请介绍{name}。")


class AsyncRunRecorder(AsyncCallbackHandler):
    """An async handler (not run inline) recording the LLM run's events in order."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
        self.events.append("llm_start")

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.events.append("token")

    async def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.events.append("llm_end")


@pytest.fixture
def forced_llm(tiny_chatglm: ChatGLM) -> ChatGLM:
    """The tiny GLM answering ``ANSWER`` (re-arm ``.forced`` before each call)."""
    return forced_chatglm(tiny_chatglm, forced_answer(tiny_chatglm, ANSWER))


def test_astream_events_show_the_llm_run_of_a_stream_llm_chain(forced_llm: ChatGLM) -> None:
    """Bug: StreamLLMChain's async streams added an inline ReasoningTap to the LLM run, and LangChain's
    AsyncCallbackManager.on_llm_start then skips every non-inline handler: astream_events(v2) showed no
    on_llm_* events with llm.ChatGLM, and async handlers got tokens without on_llm_start."""
    chain = StreamLLMChain(llm=forced_llm, prompt=PROMPT)

    async def run() -> tuple[list[dict[str, Any]], AsyncRunRecorder]:
        events = [e async for e in chain.astream_events({"name": "刘备"}, version="v2")]
        forced_llm.forced = forced_answer(forced_llm, ANSWER)
        recorder = AsyncRunRecorder()
        assert "".join([p async for p in chain.astream_predict(callbacks=[recorder], name="刘备")]) == ANSWER
        return events, recorder

    events, recorder = asyncio.run(run())
    kinds = [e["event"] for e in events]
    assert kinds.count("on_llm_start") == 1 and kinds.count("on_llm_end") == 1
    assert "".join(e["data"]["chunk"].text for e in events if e["event"] == "on_llm_stream") == ANSWER
    assert recorder.events[0] == "llm_start" and recorder.events[-1] == "llm_end"
    assert recorder.events.count("token") == len([e for e in events if e["event"] == "on_llm_stream"])


def _parked(llm: ChatGLM) -> ForcedTokens:
    """Arm ``llm`` to answer ``LONG``, pausing at its 4th token (``parked``) until ``resume``."""
    llm.forced = forced_answer(llm, LONG, pause_at=3, pause_timeout=10.0)
    return llm.forced


async def _steps_once_idle(llm: ChatGLM, processor: ForcedTokens) -> int:
    """``processor``'s steps once the model is free again (a next call waits for a running one)."""
    llm.forced = forced_answer(llm, ANSWER)
    await llm.ainvoke("下一个问题")
    return processor.steps


def test_cancelling_an_abatch_task_stops_the_batched_generation(forced_llm: ChatGLM) -> None:
    """Bug: ChatGLM.abatch of several prompts ran one batched generate in an executor that a cancelled task
    left running to max_new_tokens (the model busy all that time); cancelling now stops it within a token."""
    processor = _parked(forced_llm)

    async def run() -> int:
        task = asyncio.ensure_future(forced_llm.abatch(["刘备是谁？", "关羽字什么？"]))
        assert await asyncio.to_thread(processor.parked.wait, 10)
        task.cancel()
        processor.resume.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await _steps_once_idle(forced_llm, processor)

    total = len(forced_llm.get_token_ids(LONG))
    assert asyncio.run(run()) <= 5 < total


def test_cancel_scope_reaches_an_abatch(forced_llm: ChatGLM) -> None:
    """Bug: ChatGLM.abatch ran its batched generate in an executor without the caller's context, so an
    llm.cancel_scope around it (the UI's Stop) never reached the generation."""
    processor = _parked(forced_llm)
    stop = threading.Event()

    async def run() -> int:
        with cancel_scope(stop):
            task = asyncio.ensure_future(forced_llm.abatch(["刘备是谁？", "关羽字什么？"]))
        assert await asyncio.to_thread(processor.parked.wait, 10)
        stop.set()
        processor.resume.set()
        await task
        return await _steps_once_idle(forced_llm, processor)

    assert asyncio.run(run()) <= 5


# ----- chains awaited by async code: cancelling the awaiting task must stop the model --------------------------


@pytest.fixture
def mini_kb(tmp_path: Path) -> Any:
    """A keyword-only knowledge base of the four-chapter mini novel (builds in well under a second)."""
    from kb import KnowledgeBase

    base = KnowledgeBase(tmp_path, "mini", create=True, embedding_model="none", chunk_size=60, chunk_overlap=0)
    base.add_texts({"sanguo.txt": mini_novel()})
    return base


def _steps_when_cancelled_mid_way(llm: ChatGLM, work: Coroutine[Any, Any, Any]) -> int:
    """Run ``work`` as a task, cancel it once ``llm`` parks mid-generation (``_parked``), check it ends
    cancelled; the generation steps the model ran in all (every generation of a chain) once it is free."""
    processor = _parked(llm)

    async def run() -> int:
        task = asyncio.ensure_future(work)
        assert await asyncio.to_thread(processor.parked.wait, 10)
        task.cancel()
        await asyncio.sleep(0)  # the task handles the cancellation (sets its cancel event) ...
        processor.resume.set()  # ... before the parked generation may go on
        with pytest.raises(asyncio.CancelledError):
            await task
        await _steps_once_idle(llm, processor)
        return len(processor.times)

    return asyncio.run(run())


def _summary_docs() -> list[Document]:
    """Four short passages: two batched map calls of two, then the reduce."""
    return [Document(page_content=f"第{i}段：刘备、关羽、张飞三人在桃园结义。") for i in range(4)]


def test_cancelling_book_qa_ainvoke_stops_the_model(forced_llm: ChatGLM, mini_kb: Any) -> None:
    """Bug: BookQAChain.ainvoke fell back to Chain._acall, the sync run in an executor that nothing told of a
    cancelled task: the batched map, then the reduce, generated to the end (84 steps here, not 4), the model
    busy for every other user all that time."""
    from chains.book_qa_chain import BookQAChain

    chain = BookQAChain(kb=mini_kb, llm=forced_llm, max_input_tokens=1500, batch_size=2)
    steps = _steps_when_cancelled_mid_way(forced_llm, chain.ainvoke({"question": "孔明做了哪些事？"}))
    assert steps <= 6


def test_cancelling_summarize_ainvoke_stops_the_model(forced_llm: ChatGLM) -> None:
    """Bug: StreamMapReduceChain.ainvoke ran combine_docs with asyncio.to_thread, which a cancelled task left
    running: every map batch and the reduce generated to the end (147 steps here, not 4)."""
    from chains import load_stream_summarize_chain

    chain = load_stream_summarize_chain(forced_llm, batch_size=2, token_max=10_000)
    steps = _steps_when_cancelled_mid_way(forced_llm, chain.ainvoke({"input_documents": _summary_docs()}))
    assert steps <= 6


def test_cancelling_summarize_astream_stops_the_model(forced_llm: ChatGLM) -> None:
    """Bug: the summarize chain's Runnable.astream (which awaits ainvoke) ran on after its consumer was cancelled
    (147 steps here, not 4)."""
    from chains import load_stream_summarize_chain

    chain = load_stream_summarize_chain(forced_llm, batch_size=2, token_max=10_000)

    async def consume() -> None:
        async for _ in chain.astream({"input_documents": _summary_docs()}):
            pass

    steps = _steps_when_cancelled_mid_way(forced_llm, consume())
    assert steps <= 6


def test_cancelling_astream_summary_stops_the_model(forced_llm: ChatGLM) -> None:
    """Bug: astream_summary ran each step with asyncio.to_thread; a cancelled consumer left the batched map
    generating to the end (73 steps, not 4) and its cleanup closed the running generator, raising "generator
    already executing" instead of CancelledError."""
    from chains import load_stream_summarize_chain

    chain = load_stream_summarize_chain(forced_llm, batch_size=2, token_max=10_000)

    async def consume() -> None:
        async for _ in chain.astream_summary(_summary_docs()):
            pass

    steps = _steps_when_cancelled_mid_way(forced_llm, consume())
    assert steps <= 6


def test_cancelling_kb_qa_ainvoke_stops_the_model(forced_llm: ChatGLM) -> None:
    """Checked with the bug above: KnowledgeBaseQAChain.ainvoke streams through the LLM's own cancellable
    astream, so a cancelled task already stopped the model within a token; this keeps it so."""
    from tests.test_qa_chain import make_chain

    chain = make_chain(forced_llm)
    steps = _steps_when_cancelled_mid_way(forced_llm, chain.ainvoke({"question": "张飞为什么鞭打督邮？"}))
    assert steps <= 6


def test_an_enclosing_cancel_scope_still_reaches_a_summary_ainvoke(forced_llm: ChatGLM) -> None:
    """Guard for the fix above: the cancel scope that run_cancellable opens for its own task must not hide an
    enclosing llm.cancel_scope (the UI's Stop); scopes nest, and either event stops the generation."""
    from chains import load_stream_summarize_chain

    processor = _parked(forced_llm)
    chain = load_stream_summarize_chain(forced_llm, batch_size=2, token_max=10_000)
    stop = threading.Event()

    async def run() -> int:
        with cancel_scope(stop):
            task = asyncio.ensure_future(chain.ainvoke({"input_documents": _summary_docs()[:2]}))
        assert await asyncio.to_thread(processor.parked.wait, 10)
        stop.set()
        processor.resume.set()
        await task  # not cancelled: the run ends early with what the model said so far
        await _steps_once_idle(forced_llm, processor)
        return len(processor.times)

    assert asyncio.run(run()) <= 6  # the map batch stopped at once, then one token of reduce
