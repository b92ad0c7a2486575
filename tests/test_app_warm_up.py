"""What a server warms at start (``app.warm_up``): a first chat and a first knowledge-base answer, through
``ChatGLM.warm_up`` (``tests/test_warm_up.py``); a failure costs one logged line, never the model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from langchain_core.documents import Document

from app.services import Services
from app.warm_up import CHAT_PROMPT_TOKENS, first_question_lengths, warm_up_batch_sizes
from chains.answer_context import render_answer_prompt
from chains.prompts import QA_PROMPT
from configs import Settings
from llm import ChatGLM


def test_first_question_lengths_bound_a_full_answer_prompt(tiny_chatglm: ChatGLM, sanguo_path: Path) -> None:
    """The knowledge-base length is at least the tokens of the answer prompt the chain renders with
    ``top_k`` passages of ``chunk_size`` characters of real text, so its warm bucket is the one a full
    answer reaches (measured here on the novel's own text with the trained tokenizer)."""
    settings = Settings(chunking={"chunk_size": 300, "chunk_overlap": 40}, retrieval={"top_k": 4})
    chat, answer = first_question_lengths(settings, tiny_chatglm)
    assert chat == CHAT_PROMPT_TOKENS
    text = sanguo_path.read_text(encoding="utf-8")[5000:6200]
    passages = [Document(page_content=text[i * 300:(i + 1) * 300]) for i in range(4)]
    answer_prompt = render_answer_prompt(QA_PROMPT, tiny_chatglm, passages, "曹操是什么人？")
    rendered = tiny_chatglm.render_prompt(answer_prompt)
    tokens = len(tiny_chatglm.tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert tokens <= answer <= len(rendered) + 2 * CHAT_PROMPT_TOKENS
    capped = Settings(llm={"max_input_tokens": 200})
    assert first_question_lengths(capped, tiny_chatglm)[1] == 200  # the prompt budget cuts passages to it


class _Recorder:
    """A model whose ``warm_up`` records what it was asked (or fails)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.asked: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.error = error

    def warm_up(self, *, prompt_tokens: tuple[int, ...], batch_sizes: list[int]) -> float:
        self.asked.append((tuple(prompt_tokens), tuple(batch_sizes)))
        if self.error is not None:
            raise self.error
        return 0.0


def test_server_warm_up_asks_for_a_first_chat_and_answer(tmp_path: Path) -> None:
    settings = Settings(kb_root=tmp_path, embedding={"model": "none"})
    model = _Recorder()
    Services(settings, llm=model).warm_up()  # type: ignore[arg-type]
    assert model.asked == [(first_question_lengths(settings, model), (1,))]
    shared = Settings(kb_root=tmp_path, embedding={"model": "none"}, llm={"warm_up_batch": 12})
    Services(shared, llm=model).warm_up()  # type: ignore[arg-type]
    assert model.asked[-1][1] == (1, 2, 4, 8, 16)  # 9-12 concurrent requests run as a batch of 16
    assert warm_up_batch_sizes(Settings(llm={"warm_up_batch": 64, "max_concurrent_batch": 4})) == [1, 2, 4]
    off = _Recorder()
    settings_off = Settings(kb_root=tmp_path, embedding={"model": "none"}, llm={"warm_up": False})
    Services(settings_off, llm=off).warm_up()  # type: ignore[arg-type]
    assert off.asked == []


def test_a_failed_warm_up_is_one_logged_line_and_the_model_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _Recorder(RuntimeError("CUDA out of memory\nwhile capturing"))
    services = Services(Settings(kb_root=tmp_path, embedding={"model": "none"}), llm=model)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="app.warm_up"):
        services.warm_up()
    assert services.get_llm() is model
    (record,) = [r for r in caplog.records if r.name == "app.warm_up"]
    assert "first questions compile instead" in record.getMessage() and "\n" not in record.getMessage()
