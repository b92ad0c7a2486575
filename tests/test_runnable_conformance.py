"""glmkb's LangChain pieces as Runnables: regressions found by probing them as user code does."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.prompts import PromptTemplate

from chains import StreamLLMChain
from llm import ChatGLM, cancel_scope
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
