"""What a server warms at start, once its chat model is loaded: the fast path's shapes for a first chat and
a first knowledge-base answer (``ChatGLM.warm_up``), so that neither first question waits for a compile;
on a shared server (``llm.warm_up_batch``) also those of batches of concurrent requests.

The decode step is compiled per shape key (batch, cache length: the next power of two of prompt +
``max_new_tokens``), 35-42 s for the ChatGLM3-6B shape (docs/PERFORMANCE.md). With the default settings a
short chat falls in the 2,048 bucket and a knowledge-base answer (``retrieval.top_k`` passages of
``chunking.chunk_size`` characters) in the 4,096 one, so one warm prompt would leave the other to the first
user who asks it. A model without ``warm_up`` (an OpenAI-compatible backend) has nothing here to compile.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.documents import Document

from app.errors import one_line
from chains.answer_context import render_answer_prompt
from chains.prompts import QA_PROMPT
from configs import Settings

__all__ = ["CHAT_PROMPT_TOKENS", "first_question_lengths", "warm_up_batch_sizes", "warm_up_llm"]

log = logging.getLogger(__name__)

CHAT_PROMPT_TOKENS = 32  # a short first chat message in its chat template


def first_question_lengths(settings: Settings, llm: Any) -> tuple[int, ...]:
    """Prompt lengths in tokens of a first chat and of a first knowledge-base answer with these settings.

    The answer prompt is rendered as the chain renders it, with ``top_k`` passages of ``chunk_size``
    characters, in the model's chat template (its system prompt included) where it has one, and counted in
    characters: at least its tokens for Chinese text (a token covers one character or more, a special
    token's name several), so the bucket is the one a full answer prompt reaches; the prompt budget
    (``llm.max_input_tokens``) caps it as it caps the passages."""
    passage = Document(page_content="字" * settings.chunking.chunk_size)
    rendered = render_answer_prompt(QA_PROMPT, llm, [passage] * settings.retrieval.top_k, "问" * CHAT_PROMPT_TOKENS)
    in_template = getattr(llm, "render_prompt", None)
    if callable(in_template):
        rendered = in_template(rendered)
    return CHAT_PROMPT_TOKENS, min(len(rendered), settings.llm.max_input_tokens)


def warm_up_batch_sizes(settings: Settings) -> list[int]:
    """The batch sizes to warm: 1, then the sizes batches of concurrent requests run at (powers of two,
    ``llm.batch_rows.batch_bucket``) up to ``llm.warm_up_batch`` requests (at most ``max_concurrent_batch``)."""
    from llm.batch_rows import batch_bucket

    largest = batch_bucket(min(settings.llm.warm_up_batch, settings.llm.max_concurrent_batch))
    return [1 << i for i in range(largest.bit_length())]


def warm_up_llm(llm: Any, settings: Settings) -> float | None:
    """Warm ``llm``'s fast path for ``first_question_lengths`` at ``warm_up_batch_sizes`` (``llm.warm_up``);
    the seconds it took, or None when off or there is nothing to warm. A failure is logged in one line,
    never raised: the first questions then compile as they did before."""
    warm_up = getattr(llm, "warm_up", None)
    if not settings.llm.warm_up or not callable(warm_up):
        return None
    try:
        return warm_up(prompt_tokens=first_question_lengths(settings, llm), batch_sizes=warm_up_batch_sizes(settings))
    except Exception as e:  # a server keeps serving; its first questions compile instead
        log.warning("warming up the chat model failed (first questions compile instead): %s", one_line(e))
        return None
