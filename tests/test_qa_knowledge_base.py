"""KnowledgeBaseQAChain and the summarizer over a real (BM25) knowledge base of 三国演义."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from chains import (
    CONDENSE_TAG,
    REFUSAL,
    Answer,
    KnowledgeBaseQAChain,
    Sources,
    Token,
    documents_from_file,
    documents_from_kb,
)
from chains.knowledge_base_qa_chain import _clean_condensed


@pytest.fixture(scope="module")
def sanguo_kb(sanguo_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The whole novel in a keyword-only knowledge base (about 5 s to build)."""
    from kb import KnowledgeBase

    kb = KnowledgeBase(tmp_path_factory.mktemp("kb_root"), "sanguo", create=True, embedding_model="none", top_k=4)
    kb.add_files([sanguo_path])
    return kb


@pytest.fixture(scope="module")
def sanguo_text(sanguo_path: Path) -> str:
    from kb import load_text

    return load_text(sanguo_path)


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[tuple[str, list[str]]] = []

    def on_llm_start(self, serialized: Any, prompts: list[str], *, tags: list[str] | None = None, **kw: Any) -> None:
        self.prompts.extend((p, list(tags or [])) for p in prompts)


def test_sources_carry_exact_offsets_chapters_and_titles(sanguo_kb: Any, sanguo_text: str, tiny_chatglm: Any) -> None:
    chain = KnowledgeBaseQAChain(retriever=sanguo_kb.as_retriever(mode="bm25"), llm=tiny_chatglm)
    events = list(chain.stream_answer("刘备、关羽、张飞在桃园结义"))
    sources = next(e for e in events if isinstance(e, Sources))
    assert isinstance(sources, Sources) and sources.sources
    answer = events[-1]
    assert isinstance(answer, Answer) and answer.sources == sources.sources
    assert answer.text == "".join(e.text for e in events if isinstance(e, Token)) and answer.text
    top = answer.sources[0]
    assert top.chapter == 1 and "桃园" in top.chapter_title
    assert top.doc_id == sanguo_kb.list_documents()[0].doc_id
    for source in answer.sources:
        assert sanguo_text[source.start : source.end] == source.text
        assert source.score is not None and source.score > 0


def test_prompt_budget_in_real_tokens_with_cut_passages(sanguo_kb: Any, sanguo_text: str, tiny_chatglm: Any) -> None:
    recorder = PromptRecorder()
    retriever = sanguo_kb.as_retriever(mode="bm25", k=8)
    chain = KnowledgeBaseQAChain(retriever=retriever, llm=tiny_chatglm, max_input_tokens=300)
    answer = list(chain.stream_answer("诸葛亮草船借箭", callbacks=[recorder]))[-1]
    prompt = recorder.prompts[-1][0]
    assert tiny_chatglm.get_num_tokens(prompt) <= 300
    assert 0 < len(answer.sources) < 8 and answer.sources[-1].truncated
    for source in answer.sources:
        assert sanguo_text[source.start : source.end] == source.text


def test_refusal_from_a_real_kb_never_calls_the_model(
    sanguo_kb: Any, tiny_chatglm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the LLM must not be called")

    monkeypatch.setattr(type(tiny_chatglm), "_stream", boom)
    chain = KnowledgeBaseQAChain(retriever=sanguo_kb.as_retriever(mode="bm25"), llm=tiny_chatglm, score_threshold=1e6)
    out = chain.invoke({"question": "刘备是谁？"})
    assert out["answer"] == REFUSAL and out["refused"] and out["source_documents"] == []
    nothing = sanguo_kb.as_retriever(mode="bm25")
    assert list(KnowledgeBaseQAChain(retriever=nothing, llm=tiny_chatglm).stream_answer("ZZZZ qqq"))[-1].refused


def test_condensed_question_from_the_model_is_what_is_retrieved(sanguo_kb: Any, tiny_chatglm: Any) -> None:
    recorder = PromptRecorder()
    queries: list[str] = []
    retriever = sanguo_kb.as_retriever(mode="bm25")
    original = type(retriever)._get_relevant_documents

    class Spy(type(retriever)):  # type: ignore[misc]
        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> Any:
            queries.append(query)
            return original(self, query, run_manager=run_manager)

    spy = Spy(**retriever.__dict__)
    chain = KnowledgeBaseQAChain(retriever=spy, llm=tiny_chatglm)
    history = [("张飞是谁？", "刘备的结义兄弟。")]
    list(chain.stream_answer("他为什么鞭打督邮？", history=history, callbacks=[recorder]))
    condense_prompt, tags = recorder.prompts[0]
    assert CONDENSE_TAG in tags and "张飞是谁？" in condense_prompt
    expected = _clean_condensed(tiny_chatglm.invoke(condense_prompt), "他为什么鞭打督邮？")  # greedy
    assert queries == [expected]


def test_no_llm_mode_over_a_real_kb(sanguo_kb: Any, sanguo_text: str) -> None:
    answer = list(KnowledgeBaseQAChain(retriever=sanguo_kb.as_retriever(mode="bm25"), llm=None).stream_answer("赤壁"))[-1]
    assert not answer.llm_used and answer.sources
    assert all(sanguo_text[s.start : s.end] == s.text for s in answer.sources)


def test_kb_document_chapters_match_the_file(sanguo_kb: Any, sanguo_path: Path) -> None:
    from_kb = documents_from_kb(sanguo_kb, "sanguo.txt", chapters="第1-3回")
    from_file = documents_from_file(sanguo_path, chapters="1-3")
    assert [d.page_content for d in from_kb] == [d.page_content for d in from_file]
    assert [d.metadata["chapter_title"] for d in from_kb] == [d.metadata["chapter_title"] for d in from_file]
    assert from_kb[0].metadata["doc_id"] == sanguo_kb.list_documents()[0].doc_id
