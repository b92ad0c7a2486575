"""ChatGLM over tiny native checkpoints: loading, chat prompts, streaming, stop, batch, async."""

from __future__ import annotations

import pytest

from llm import ChatGLM


def test_tiny_chatglm_answers(tiny_chatglm: ChatGLM) -> None:
    answer = tiny_chatglm.invoke("曹操是谁？")
    assert isinstance(answer, str) and answer
