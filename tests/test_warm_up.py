"""``ChatGLM.warm_up``: the fast path's shapes of a first question are built before anyone asks, and a first
question of a warmed length then builds nothing. No server imports here: the CUDA test runs in
bench/run_all.sh's gputest section (``tests/test_app_warm_up.py``: what a server warms)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import llm.fast_decode.decode_graph as decode_graph
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions, fast_decode_state
from tests.helpers import count_calls, stream_together


def fast_llm(tiny_glm_dir: Path, **fields: Any) -> ChatGLM:
    """The tiny GLM on the fast path on CPU (the decode graph uncaptured), a model object of its own."""
    return ChatGLM.from_model_path(tiny_glm_dir, device="cpu", fast_decode_options=FastDecodeOptions(on_cpu=True),
                                   **fields)


def test_a_first_question_of_a_warmed_length_builds_no_decode_graph(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the first question of each shape compiled its decode step (35-42 s on the ChatGLM3-6B
    shape) because nothing warmed it at server start. After ``warm_up`` for two prompt lengths that fall in
    two cache buckets (1,024 and 2,048 slots with 600 new tokens), questions of those lengths, sampled with
    the default options, build no graph; a third bucket still builds its own."""
    llm = fast_llm(tiny_glm_dir, max_new_tokens=600)
    assert llm.warm_up(prompt_tokens=(16, 700)) is not None
    warmed = {key[:2] for key in fast_decode_state(llm.model).graphs}
    assert warmed == {(1, 1024), (1, 2048)}

    builds = count_calls(monkeypatch, decode_graph, "build_decode_graph")
    assert "".join(llm.stream("刘备是谁？", max_new_tokens=600, min_new_tokens=2, stop=None))
    long_question = "刘备、关羽和张飞是谁？" * 100
    assert 424 < llm.get_num_tokens(long_question) < 1400  # 2,048 slots with 600 new tokens
    next(iter(llm.stream(long_question, max_new_tokens=600)))
    assert builds == []
    next(iter(llm.stream("刘备是谁？", max_new_tokens=3000)))  # 4,096 slots: not warmed
    assert builds == [1]


@pytest.mark.gpu
def test_a_warmed_first_question_captures_nothing_on_cuda(tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with compiled, captured decode graphs on CUDA: a first question of the warmed length
    builds (compiles, captures) no decode graph."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    llm = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", max_new_tokens=600)
    assert llm.warm_up(prompt_tokens=(16,)) is not None
    builds = count_calls(monkeypatch, decode_graph, "build_decode_graph")
    assert "".join(llm.stream("刘备是谁？", min_new_tokens=2))
    assert builds == [] and llm.fast_decode_report["decode_graph"] is None


def test_warmed_batch_sizes_serve_concurrent_requests_without_a_build(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of concurrent requests run at powers of two (three requests: four rows); warmed at those
    sizes, the first burst of three builds no decode graph, and each request gets its own answer."""
    llm = fast_llm(tiny_glm_dir, temperature=0.0, max_new_tokens=12)
    llm.warm_up(prompt_tokens=(16,), batch_sizes=(1, 2, 4))
    assert {key[:2] for key in fast_decode_state(llm.model).graphs} == {(1, 1024), (2, 1024), (4, 1024)}
    questions = ["刘备是谁？", "关羽是谁？", "张飞是谁？"]
    builds = count_calls(monkeypatch, decode_graph, "build_decode_graph")
    together = stream_together(llm, questions)
    assert builds == []
    assert together == {q: "".join(llm.stream(q)) for q in questions}


def test_warm_up_changes_no_answer(tiny_glm_dir: Path) -> None:
    """A greedy answer after the warm-up equals the same answer on a model object that was never warmed
    (the warm-up's graph and cache are the ones the answer reuses)."""
    cold = fast_llm(tiny_glm_dir, temperature=0.0, max_new_tokens=24)
    warmed = fast_llm(tiny_glm_dir, temperature=0.0, max_new_tokens=24)
    warmed.warm_up(prompt_tokens=(12,))
    assert "".join(warmed.stream("关羽是谁？")) == "".join(cold.stream("关羽是谁？"))


def test_warm_up_without_the_fast_path_generates_nothing(tiny_glm_dir: Path) -> None:
    """On CPU (no fast path) there is nothing to compile: no generation runs, None comes back."""
    llm = ChatGLM.from_model_path(tiny_glm_dir, device="cpu")
    assert not llm.fast_decode_active
    assert llm.warm_up(prompt_tokens=(16, 700)) is None
    assert not fast_decode_state(llm.model).graphs
