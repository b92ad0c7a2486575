"""Batched concurrent streams on the fast decode path (llm.batching + llm.fast_decode): rows
padded to a power-of-two batch with filler rows give exactly what each request gives alone.
No server imports here: the CUDA test runs in bench/run_all.sh's gputest section."""

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
