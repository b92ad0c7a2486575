"""Concurrent streamed requests batched through ``ChatGLM`` (``batch_concurrent``) and the API:
requests that find the model busy start together as one batch, each gets exactly its own
answer, a cancelled one stops within a few tokens while the others finish, greedy batched
output equals the request run alone, and a full queue is a clear 503 "retry"."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import Field

from app.services import Services
from configs import Settings
from llm import ChatGLM
from llm.batching import Busy, batch_scheduler
from tests.helpers import api_server, hold_worker, stream_together, wait_pending, wait_until
from tests.test_api import chat_text, collect_stream, make_settings, sse_events, user
from tests.test_batching import ForcedPerPrompt

QUESTIONS = ["刘备是谁？", "关羽是谁？", "张飞是谁？", "曹操是谁？"]
ANSWERS = ["刘备字玄德。", "关羽字云长，河东解良人。", "张飞字翼德。", "曹操字孟德，沛国谯人也。"]


class PerPromptChatGLM(ChatGLM):
    """The tiny ChatGLM answering each prompt as ``processor`` (a ``ForcedPerPrompt``) scripts it."""

    processor: Any = Field(default=None, exclude=True)

    def _generate_kwargs(self, prompts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        out = super()._generate_kwargs(prompts, kwargs)
        if self.processor is not None:
            out["logits_processor"] = [self.processor]
        return out

    def prompt_ids(self, question: str) -> tuple[int, ...]:
        plain = self.model_copy(update={"processor": None})
        return tuple(plain._generate_kwargs([question], {})["input_ids"][0].tolist())


class CountingForced(ForcedPerPrompt):
    """``ForcedPerPrompt`` that counts decode steps (to see how soon a batch ends)."""

    steps = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.steps += 1
        return super().__call__(input_ids, scores)


@pytest.fixture
def scripted_llm(tiny_glm_dir: Path) -> PerPromptChatGLM:
    """Its own model object: the batch scheduler and worker are per model."""
    base = ChatGLM.from_model_path(tiny_glm_dir, device="cpu")
    return PerPromptChatGLM(model=base.model, tokenizer=base.tokenizer, temperature=0.0, max_new_tokens=64)


def script(llm: PerPromptChatGLM, answers: dict[str, str], cls: type = ForcedPerPrompt) -> ForcedPerPrompt:
    eos = llm.model.generation_config.eos_token_id[0]
    forced = cls(
        {llm.prompt_ids(q): llm.tokenizer.encode(a, add_special_tokens=False) for q, a in answers.items()},
        eos_id=eos,
        pad_id=llm.model.generation_config.pad_token_id,
    )
    llm.processor = forced
    return forced


def test_concurrent_streams_each_get_their_own_answer_in_one_batch(scripted_llm: PerPromptChatGLM) -> None:
    forced = script(scripted_llm, dict(zip(QUESTIONS, ANSWERS, strict=True)))
    out = stream_together(scripted_llm, QUESTIONS)
    assert out == dict(zip(QUESTIONS, ANSWERS, strict=True))
    assert forced.batch_sizes == [len(QUESTIONS)]


def test_requests_arriving_together_start_together(
    scripted_llm: PerPromptChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that finds the model free while another is still being tokenized does not run
    alone: the batch waits (briefly) for the arriving one, so a burst is one batch, not 1 + rest."""
    monkeypatch.setattr("llm.batching.GATHER_S", 30.0)  # the test decides when arriving ends
    pair = {QUESTIONS[0]: ANSWERS[0], QUESTIONS[2]: ANSWERS[2]}
    forced = script(scripted_llm, pair)
    scheduler = batch_scheduler(scripted_llm.model)
    scheduler.arrive()  # stands for the second request, still rendering its prompt
    out: dict[str, str] = {}
    first = threading.Thread(target=lambda: out.__setitem__(QUESTIONS[0], "".join(scripted_llm.stream(QUESTIONS[0]))))
    first.start()
    wait_pending(scripted_llm.model, 1)  # queued, not run alone
    second = threading.Thread(target=lambda: out.__setitem__(QUESTIONS[2], "".join(scripted_llm.stream(QUESTIONS[2]))))
    second.start()
    wait_pending(scripted_llm.model, 2)
    scheduler.leave()  # the stand-in is done arriving: the batch starts
    first.join(60)
    second.join(60)
    assert out == pair and forced.batch_sizes == [2]
    assert scheduler._arriving == 0


def test_lone_request_runs_alone_and_equals_invoke(scripted_llm: PerPromptChatGLM) -> None:
    script(scripted_llm, {QUESTIONS[0]: ANSWERS[0]})
    assert "".join(scripted_llm.stream(QUESTIONS[0])) == scripted_llm.invoke(QUESTIONS[0]) == ANSWERS[0]
    scheduler = batch_scheduler(scripted_llm.model)
    assert scheduler._solo == 0 and not scheduler._pending and not scheduler._scheduled


def test_cancelled_stream_stops_within_a_few_tokens_while_others_finish(scripted_llm: PerPromptChatGLM) -> None:
    """The long answer is closed after 3 pieces; the batch ends soon after the short one does."""
    long_answer = "刘备关羽张飞" * 20
    forced = script(scripted_llm, {QUESTIONS[0]: long_answer, QUESTIONS[1]: ANSWERS[1]}, cls=CountingForced)
    release = hold_worker(scripted_llm.model)
    got: list[str] = []
    out: dict[str, str] = {}

    def consume_three() -> None:
        stream = scripted_llm.stream(QUESTIONS[0], max_new_tokens=200)
        for piece in stream:
            got.append(piece)
            if len(got) == 3:
                stream.close()
                return

    first = threading.Thread(target=consume_three)
    second = threading.Thread(target=lambda: out.__setitem__("b", "".join(scripted_llm.stream(QUESTIONS[1]))))
    first.start()
    second.start()
    wait_pending(scripted_llm.model, 2)
    release.set()
    first.join(60)
    second.join(60)
    assert "".join(got) == long_answer[: len("".join(got))] and len(got) == 3
    assert out["b"] == ANSWERS[1]
    short = len(scripted_llm.tokenizer.encode(ANSWERS[1], add_special_tokens=False)) + 1
    assert forced.steps <= short + 3  # not the ~60 steps of the long answer


def test_full_queue_is_busy_at_once(scripted_llm: PerPromptChatGLM) -> None:
    llm = scripted_llm.model_copy(update={"max_queue": 1})
    script(llm, {QUESTIONS[0]: ANSWERS[0], QUESTIONS[1]: ANSWERS[1]})
    release = hold_worker(llm.model)
    try:
        waiting = threading.Thread(target=lambda: "".join(llm.stream(QUESTIONS[0])), daemon=True)
        waiting.start()
        wait_pending(llm.model, 1)
        with pytest.raises(Busy, match="retry"):
            llm.check_capacity()
        with pytest.raises(Busy, match="retry"):
            "".join(llm.stream(QUESTIONS[1]))
    finally:
        release.set()
    waiting.join(30)


def test_batching_off_runs_one_at_a_time(scripted_llm: PerPromptChatGLM) -> None:
    llm = scripted_llm.model_copy(update={"batch_concurrent": False})
    pair = {QUESTIONS[0]: ANSWERS[0], QUESTIONS[2]: ANSWERS[2]}  # prompts of one length (ForcedPerPrompt restarts)
    forced = script(llm, pair)
    release = hold_worker(llm.model)
    out: dict[str, str] = {}
    threads = [threading.Thread(target=lambda q=q: out.__setitem__(q, "".join(llm.stream(q)))) for q in pair]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert not batch_scheduler(llm.model)._pending
    release.set()
    for t in threads:
        t.join(60)
    assert out == pair and forced.batch_sizes == [1, 1]


# ------------------------------------------------------------------------------ through the API


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "kb")


@pytest.fixture
def server(settings: Settings, scripted_llm: PerPromptChatGLM) -> Iterator[str]:
    with api_server(Services(settings, llm=scripted_llm)) as base:
        yield base


def ask(base: str, question: str) -> str:
    with httpx.Client(base_url=base, timeout=60) as c:
        return chat_text(collect_stream(c, "/v1/chat/completions", {"messages": user(question)}))


def test_api_concurrent_streams_batch_and_one_disconnect_stops(server: str, scripted_llm: PerPromptChatGLM) -> None:
    answers = dict(zip(QUESTIONS, ANSWERS, strict=True))
    long_question = "讲个长故事"
    forced = script(scripted_llm, {**answers, long_question: "刘备关羽张飞" * 40}, cls=CountingForced)
    release = hold_worker(scripted_llm.model)
    out: dict[str, str] = {}
    threads = [threading.Thread(target=lambda q=q: out.__setitem__(q, ask(server, q))) for q in QUESTIONS]
    received: list[str] = []

    def disconnect_after_three() -> None:
        with httpx.Client(base_url=server, timeout=60) as c:
            with c.stream("POST", "/v1/chat/completions", json={"messages": user(long_question), "stream": True,
                                                                  "max_tokens": 300}) as r:
                events = sse_events(r)
                for _ in range(4):  # the role chunk, then three pieces
                    received.append(next(events))

    quitter = threading.Thread(target=disconnect_after_three)
    for t in [*threads, quitter]:
        t.start()
    wait_pending(scripted_llm.model, len(QUESTIONS) + 1)
    release.set()
    for t in [*threads, quitter]:
        t.join(60)
    assert out == answers  # each stream got exactly its own answer
    assert forced.batch_sizes == [len(QUESTIONS) + 1]
    longest = max(len(scripted_llm.tokenizer.encode(a, add_special_tokens=False)) for a in ANSWERS) + 1
    assert wait_until(lambda: not batch_scheduler(scripted_llm.model)._scheduled, timeout=10)
    assert forced.steps <= longest + 5  # the disconnected long answer (~120 tokens) did not run on


def test_api_full_queue_is_503_with_retry(settings: Settings, scripted_llm: PerPromptChatGLM) -> None:
    llm = scripted_llm.model_copy(update={"max_queue": 1})
    script(llm, {QUESTIONS[0]: ANSWERS[0], QUESTIONS[1]: ANSWERS[1]})
    with api_server(Services(settings, llm=llm)) as base:
        release = hold_worker(llm.model)
        try:
            waiting = threading.Thread(target=ask, args=(base, QUESTIONS[0]), daemon=True)
            waiting.start()
            wait_pending(llm.model, 1)
            with httpx.Client(base_url=base, timeout=30) as c:
                for stream in (True, False):
                    r = c.post("/v1/chat/completions", json={"messages": user(QUESTIONS[1]), "stream": stream})
                    assert r.status_code == 503, r.text
                    assert "retry" in r.json()["error"]["message"]
        finally:
            release.set()
        waiting.join(30)


def _stream_second_after(llm: PerPromptChatGLM, first: str, second: str, *, pieces: int, close_first_after: int = 0
                         ) -> tuple[dict[str, str], list[str]]:
    """Stream ``first``; after ``pieces`` of it, stream ``second``; optionally close ``first`` once it
    has ``close_first_after`` pieces. The texts, and the order in which the two ended."""
    out: dict[str, str] = {first: "", second: ""}
    ended: list[str] = []
    started = threading.Event()

    def run_first() -> None:
        stream = llm.stream(first)
        for n, piece in enumerate(stream, 1):
            out[first] += piece
            if n == pieces:
                started.set()
            if close_first_after and n == close_first_after:
                stream.close()
                break
        ended.append(first)

    def run_second() -> None:
        out[second] = "".join(llm.stream(second))
        ended.append(second)

    a = threading.Thread(target=run_first)
    a.start()
    assert started.wait(30)
    b = threading.Thread(target=run_second)
    b.start()
    a.join(60)
    b.join(60)
    return out, ended


def _after_prompt(llm: PerPromptChatGLM, answers: dict[str, str]) -> Any:
    from tests.test_batching import ForcedAfterPrompt

    forced = ForcedAfterPrompt(
        {llm.prompt_ids(q): llm.tokenizer.encode(a, add_special_tokens=False) for q, a in answers.items()},
        eos_id=llm.model.generation_config.eos_token_id[0], pad_id=llm.model.generation_config.pad_token_id,
        delay_s=0.01,
    )
    llm.processor = forced
    return forced


def _scheduler_idle(llm: PerPromptChatGLM) -> bool:
    scheduler = batch_scheduler(llm.model)
    return not (scheduler._solo or scheduler._arriving or scheduler._pending or scheduler._scheduled)


def test_a_request_arriving_during_a_lone_answer_starts_at_once(
    scripted_llm: PerPromptChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a request that arrived while another ran alone waited for that whole answer. The
    lone run now yields at a token, its answer goes on in the same stream, batched with the newcomer's,
    and the short answer ends first."""
    monkeypatch.setattr("llm.batch_yield.YIELD_AFTER_S", 0.0)
    long_answer = "刘备关羽张飞" * 6
    forced = _after_prompt(scripted_llm, {QUESTIONS[0]: long_answer, QUESTIONS[1]: ANSWERS[1]})
    out, ended = _stream_second_after(scripted_llm, QUESTIONS[0], QUESTIONS[1], pieces=3)
    assert out == {QUESTIONS[0]: long_answer, QUESTIONS[1]: ANSWERS[1]}
    assert ended == [QUESTIONS[1], QUESTIONS[0]]
    assert forced.batch_sizes == [1, 2]  # alone, then the rest of it together with the newcomer
    assert wait_until(lambda: _scheduler_idle(scripted_llm))


def test_a_lone_answer_that_yielded_still_stops_when_closed(
    scripted_llm: PerPromptChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing a stream whose lone run yielded (its rest now a row of a batch) cancels that row within
    a few tokens; the other request finishes and the scheduler ends idle."""
    monkeypatch.setattr("llm.batch_yield.YIELD_AFTER_S", 0.0)
    long_answer = "刘备关羽张飞" * 30
    _after_prompt(scripted_llm, {QUESTIONS[0]: long_answer, QUESTIONS[1]: ANSWERS[1]})
    out, ended = _stream_second_after(scripted_llm, QUESTIONS[0], QUESTIONS[1], pieces=3, close_first_after=12)
    assert long_answer.startswith(out[QUESTIONS[0]]) and len(out[QUESTIONS[0]]) < len(long_answer)
    assert out[QUESTIONS[1]] == ANSWERS[1]
    assert wait_until(lambda: _scheduler_idle(scripted_llm))
