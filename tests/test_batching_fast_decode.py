"""Batched concurrent streams on the fast decode path (llm.batching + llm.fast_decode): rows
padded to a power-of-two batch with filler rows, and a lone answer that yielded to a newcomer and
went on batched with it, give exactly what each request gives alone.
No server imports here: the CUDA tests run in bench/run_all.sh's gputest section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions, fast_decode_state
from tests.helpers import stream_together

QUESTIONS = ["刘备是谁？", "关羽是谁？", "张飞是谁？"]


def test_greedy_batched_equals_solo_on_the_fast_path(tiny_glm_dir: Path) -> None:
    """Three rows run as a batch of four (a filler row) through the decode graph (on CPU)."""
    llm = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=12,
                                  fast_decode_options=FastDecodeOptions(on_cpu=True))
    check_batched_equals_solo(llm)


@pytest.mark.gpu
def test_greedy_batched_equals_solo_on_cuda_decode_graphs(tiny_glm_dir: Path) -> None:
    """The same through captured decode graphs (batch 1 and 4) on CUDA."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    llm = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", temperature=0.0, max_new_tokens=12)
    check_batched_equals_solo(llm)
    assert llm.fast_decode_report["decode_graph"] is None


def check_batched_equals_solo(llm: ChatGLM) -> None:
    assert llm.fast_decode_active
    questions = QUESTIONS
    solo = {q: "".join(llm.stream(q)) for q in questions}
    assert stream_together(llm, questions) == solo
    assert any(key[0] == 4 for key in _graph_keys(llm.model))  # 3 rows + 1 filler


def _graph_keys(model: Any) -> list[tuple[Any, ...]]:
    return list(fast_decode_state(model).graphs)


def test_greedy_answer_that_yielded_equals_it_alone_on_the_fast_path(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone answer on the decode graph (on CPU) yields to a request arriving mid-answer: it goes on,
    batched with the newcomer (a graph of two rows), with exactly the tokens it gives alone, and so
    does the newcomer."""
    monkeypatch.setattr("llm.batch_yield.YIELD_AFTER_S", 0.0)
    llm = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=160,
                                  fast_decode_options=FastDecodeOptions(on_cpu=True))
    check_yielded_equals_solo(llm)


@pytest.mark.gpu
def test_greedy_answer_that_yielded_equals_it_alone_on_cuda_decode_graphs(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through captured decode graphs on CUDA (the yield polled between replays)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setattr("llm.batch_yield.YIELD_AFTER_S", 0.0)
    llm = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", temperature=0.0, max_new_tokens=400)
    check_yielded_equals_solo(llm)
    assert llm.fast_decode_report["decode_graph"] is None


def check_yielded_equals_solo(llm: ChatGLM) -> None:
    import threading

    from llm.batching import batch_scheduler
    from tests.helpers import wait_until

    first, second = QUESTIONS[0], QUESTIONS[1]
    solo = {q: "".join(llm.stream(q)) for q in (first, second)}
    assert len(llm.tokenizer.encode(solo[first], add_special_tokens=False)) > 40  # long enough to be cut
    out: dict[str, str] = {first: "", second: ""}
    started = threading.Event()

    def run_first() -> None:
        for n, piece in enumerate(llm.stream(first), 1):
            out[first] += piece
            if n == 3:
                started.set()

    a = threading.Thread(target=run_first)
    a.start()
    assert started.wait(30)
    out[second] = "".join(llm.stream(second))
    a.join(60)
    assert out == solo
    assert any(key[0] == 2 for key in _graph_keys(llm.model))  # the rest of the first, with the second
    scheduler = batch_scheduler(llm.model)
    assert wait_until(lambda: not (scheduler._solo or scheduler._arriving or scheduler._pending
                                   or scheduler._scheduled))

