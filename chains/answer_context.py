"""The passages that go into the knowledge-base answer prompt, and the prompt text they are measured in.

Retrieved passages under the score threshold are dropped; the rest are fitted, best first, into
the prompt budget measured on the exact text the model will get (``chains.token_budget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.prompt_values import ChatPromptValue
from langchain_core.prompts import BasePromptTemplate

from chains.passages import format_passages
from chains.token_budget import TokenCounter, fit_documents

__all__ = ["drop_low_scores", "fit_passages", "render_answer_prompt"]


def drop_low_scores(docs: Sequence[Document], threshold: float | None) -> list[Document]:
    """Drop passages under ``threshold`` (passages without a score are kept)."""
    if threshold is None:
        return list(docs)
    return [d for d in docs if d.metadata.get("score") is None or float(d.metadata["score"]) >= threshold]


def render_answer_prompt(prompt: BasePromptTemplate, llm: Any, docs: Sequence[Document], question: str) -> str:
    """The answer prompt as ``llm`` will get it (what the token budget measures).

    A chat prompt given to a model that renders chats itself (``ChatGLMChat.render``: the
    chat template, system slot included) is measured as that exact text, not as LangChain's
    ``System: ... Human: ...`` string.
    """
    value = prompt.format_prompt(context=format_passages(docs), question=question)
    render = getattr(llm, "render", None)
    if isinstance(value, ChatPromptValue) and callable(render):
        return render(value.to_messages())
    return value.to_string()


def fit_passages(
    docs: Sequence[Document],
    *,
    render: Any,
    max_tokens: int,
    count_tokens: TokenCounter,
    min_tokens: int,
) -> list[Document]:
    """The best passages whose ``render`` fits ``max_tokens``; ValueError when even none do.

    Passages were found but none fit (not even cut): also a ValueError, since prompting with an
    empty context would have the model answer from nothing, uncited and not refused.
    """
    empty = count_tokens(render([]))
    if empty > max_tokens:
        msg = (
            f"the question alone makes a {empty}-token prompt, over the budget of "
            f"{max_tokens} tokens (llm.max_input_tokens); ask a shorter question "
            "or raise llm.max_input_tokens"
        )
        raise ValueError(msg)
    kept = fit_documents(docs, render=render, max_tokens=max_tokens, count_tokens=count_tokens, min_tokens=min_tokens)
    if docs and not kept:
        msg = (
            f"the question makes a {empty}-token prompt, which leaves no room for any passage in the budget of "
            f"{max_tokens} tokens (llm.max_input_tokens); ask a shorter question or raise llm.max_input_tokens"
        )
        raise ValueError(msg)
    return kept
