"""BookQAChain: chapter selection, batched map, citation resolution, Stop and progress."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import FakeStreamingListLLM

from chains.book_qa_chain import SELECT_STAGE, BookQAChain
from chains.citations import CitationFilter, clean_citations, cited_numbers
from chains.events import Answer, Progress, Sources, Token
from tests.fixtures.corpus import mini_novel
from tests.helpers import spy_batch

NOVEL = mini_novel()


def char_tokens(text: str) -> list[int]:
    return list(range(len(text)))


@pytest.fixture
def kb(tmp_path: Path) -> Any:
    from kb import KnowledgeBase

    base = KnowledgeBase(tmp_path, "novels", create=True, embedding_model="none", chunk_size=60, chunk_overlap=0)
    base.add_texts({"sanguo.txt": NOVEL})
    return base


@pytest.fixture
def graph(kb: Any) -> Any:
    from kb.characters import character_graph

    return character_graph(kb)


def make_chain(kb: Any, graph: Any, responses: list[str], **fields: Any) -> BookQAChain:
    llm = FakeStreamingListLLM(responses=responses, custom_get_token_ids=char_tokens)
    fields.setdefault("max_input_tokens", 2000)
    return BookQAChain(kb=kb, llm=llm, graph=graph, **fields)


def test_alias_in_the_question_selects_chapters_naming_the_person(kb: Any, graph: Any) -> None:
    assert graph.person("孔明").name == "诸葛亮"
    chain = make_chain(kb, graph, [])
    picks = chain.select("孔明做了哪些事？", chapters=None, source=None)
    chapters = [p.chapter for p in picks]
    assert 2 in chapters and 3 in chapters  # 第二回 says 诸葛亮 more than 孔明
    assert 4 not in chapters
    ranged = chain.select("孔明做了哪些事？", chapters=(3, 4), source="sanguo.txt")
    assert [p.chapter for p in ranged] == [3]


def test_map_is_batched_citations_resolve_and_progress_is_reported(
    kb: Any, graph: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    question = "孔明和曹操做了哪些事？"
    chain = make_chain(kb, graph, [], batch_size=2)
    n_chapters = len(chain.select(question, chapters=None, source=None))
    assert n_chapters >= 3
    maps = ["孔明出山[1][99]。"] + ["无关"] * (n_chapters - 1)  # [99]: not a passage of that chapter
    chain = make_chain(kb, graph, [*maps, "孔明出山[1]，又借东风[2][42]。"], batch_size=2)
    sizes = spy_batch(monkeypatch, chain.llm)
    recorder = PromptRecorder()
    events = list(chain.stream_answer(question, callbacks=[recorder]))
    assert sizes == [2] * (n_chapters // 2) + [1] * (n_chapters % 2)
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[0] == Progress(SELECT_STAGE, n_chapters, n_chapters)
    assert [(p.stage, p.done) for p in progress[1:3]] == [("map", 0), ("map", 2)]
    sources = next(e for e in events if isinstance(e, Sources)).sources
    answer = events[-1]
    assert isinstance(answer, Answer) and not answer.refused
    assert answer.text == "孔明出山[1]，又借东风[2]。"  # [42] resolves to nothing the map read
    assert "".join(e.text for e in events if isinstance(e, Token)) == answer.text
    reduce_prompt = recorder.prompts[-1]
    assert "孔明出山[1]。" in reduce_prompt and "[99]" not in reduce_prompt and "无关" not in reduce_prompt
    assert all(n <= len(sources) for n in cited_numbers(answer.text))
    assert sources[0].chunk_id is not None and sources[0].chapter is not None


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def on_llm_start(self, serialized: Any, prompts: list[str], **kwargs: Any) -> None:
        self.prompts.extend(prompts)


def test_findings_are_headed_in_the_books_own_unit(tmp_path: Path) -> None:
    """Bug guarded: findings were headed 第N回 whatever the book's unit (第2章 here)."""
    import re

    from kb import KnowledgeBase
    from kb.characters import character_graph

    base = KnowledgeBase(tmp_path, "zhang", create=True, embedding_model="none", chunk_size=60, chunk_overlap=0)
    base.add_texts({"zhang.txt": NOVEL.replace("回 ", "章 ")})
    graph = character_graph(base)
    picks = make_chain(base, graph, []).select("孔明做了哪些事？", chapters=None, source=None)
    assert {p.label() for p in picks} >= {"第2章 刘玄德三顾草庐", "第3章 孔明借东风"}
    chain = make_chain(base, graph, ["孔明出山[1]。"] * 12 + ["答"])
    recorder = PromptRecorder()
    list(chain.stream_answer("孔明做了哪些事？", callbacks=[recorder]))
    reduce_prompt = recorder.prompts[-1]
    assert "第2章 刘玄德三顾草庐：" in reduce_prompt and not re.search(r"第\d+回", reduce_prompt)


def test_nothing_relevant_is_refused(kb: Any, graph: Any) -> None:
    chain = make_chain(kb, graph, ["无关"] * 12)
    events = list(chain.stream_answer("火星上有什么？"))
    assert events[-1].refused and events[-1].text == "根据已知信息无法回答该问题"


def test_stop_ends_the_run_between_map_batches(kb: Any, graph: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    chain = make_chain(kb, graph, ["孔明出山[1]。"] * 12 + ["答"], batch_size=1)
    sizes = spy_batch(monkeypatch, chain.llm)
    events = []
    for event in chain.stream_answer("孔明做了哪些事？", cancel=stop):
        events.append(event)
        if isinstance(event, Progress) and event.stage == "map" and event.done == 1:
            stop.set()
    assert sizes == [1]
    assert not any(isinstance(e, (Token, Answer)) for e in events)


def test_citation_filter_holds_back_split_markers() -> None:
    keep = CitationFilter({1, 2})
    out = "".join(keep.feed(p) for p in ["甲[", "1", "]乙[", "7]丙【2", "，", "9】"]) + keep.flush()
    assert out == "甲[1]乙丙[2]"
    assert clean_citations("见[1、2, 5]", {1, 2}) == "见[1][2]"


def test_empty_question_is_a_clear_error(kb: Any, graph: Any) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        list(make_chain(kb, graph, []).stream_answer("  "))


# ----- the real ChatGLM path (tiny random-weight GLM, outputs forced) ---------------------------


class ForcedPerCall:
    """``ForcedTokens`` restarted at every generation (map batches, then the reduce stream)."""

    def __init__(self, forced: Any) -> None:
        self.forced = forced
        self.last: int | None = None
        self.generations = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        length = input_ids.shape[1]
        if self.last is None or length != self.last + 1:
            self.forced.prompt_length = length
            self.generations += 1
        self.last = length
        return self.forced(input_ids, scores)


def test_chatglm_batches_the_map_and_streams_a_cited_answer(kb: Any, graph: Any, tiny_chatglm: Any) -> None:
    from tests.fixtures.models import ForcedTokens, forced_chatglm

    tok = tiny_chatglm.tokenizer
    ids = tok.encode("孔明出山[1][77]。", add_special_tokens=False)
    forced = ForcedPerCall(ForcedTokens(ids, eos_id=tok.eos_token_id))
    llm = forced_chatglm(tiny_chatglm, forced, max_new_tokens=40)
    chain = BookQAChain(kb=kb, llm=llm, graph=graph, max_input_tokens=1500, batch_size=2, max_chapters=3)
    events = list(chain.stream_answer("孔明做了哪些事？"))
    picked = events[0]
    assert picked.stage == SELECT_STAGE and picked.total >= 2
    maps = [e for e in events if isinstance(e, Progress) and e.stage == "map"]
    assert maps[-1].done == maps[-1].total == picked.total
    assert forced.generations == -(-picked.total // 2) + 1  # ceil(chapters / batch) map calls + 1 reduce
    answer = events[-1]
    said = tok.decode(ids).strip()
    assert isinstance(answer, Answer) and answer.text == said.replace("[77]", "")
    assert answer.sources[0].label().startswith("sanguo.txt · 第")


def test_stop_ends_a_batched_chatglm_map_within_a_token(kb: Any, graph: Any, tiny_chatglm: Any) -> None:
    """Bug guarded: a Stop during the map step waited for the whole batch (no stream to close)."""
    from tests.fixtures.models import ForcedTokens, forced_chatglm

    tok = tiny_chatglm.tokenizer
    forced = ForcedTokens(tok.encode("曹操", add_special_tokens=False) * 100, eos_id=tok.eos_token_id, pause_at=3)
    llm = forced_chatglm(tiny_chatglm, forced, max_new_tokens=120)
    chain = BookQAChain(kb=kb, llm=llm, graph=graph, max_input_tokens=1500, batch_size=4)
    stop = threading.Event()
    events: list[Any] = []
    worker = threading.Thread(target=lambda: events.extend(chain.stream_answer("孔明做了哪些事？", cancel=stop)))
    worker.start()
    assert forced.parked.wait(30)
    stop.set()
    forced.resume.set()
    worker.join(30)
    assert not worker.is_alive()
    assert forced.steps <= 6  # stopped within a few tokens, far below 120
    assert not any(isinstance(e, (Token, Answer)) for e in events)


def test_a_reasoning_models_thinking_streams_apart_from_the_whole_book_answer(
    kb: Any, graph: Any, tiny_chatglm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GLM-Z1-style template (``<think>`` opened in the prompt): the map notes and the answer carry no
    thinking; the reduce's thinking streams as ``Reasoning`` events before the answer's tokens."""
    from chains.events import Reasoning
    from tests.fixtures.models import ForcedTokens, forced_chatglm
    from tests.test_reasoning import THINKING_TEMPLATE

    monkeypatch.setattr(tiny_chatglm.tokenizer, "chat_template", THINKING_TEMPLATE)
    tok = tiny_chatglm.tokenizer
    ids = tok.encode("孔明在想。</think>孔明出山[1]。", add_special_tokens=False)
    llm = forced_chatglm(tiny_chatglm, ForcedPerCall(ForcedTokens(ids, eos_id=tok.eos_token_id)), max_new_tokens=40)
    chain = BookQAChain(kb=kb, llm=llm, graph=graph, max_input_tokens=1500, batch_size=2, max_chapters=3)
    events = list(chain.stream_answer("孔明做了哪些事？"))
    kinds = [type(e) for e in events if isinstance(e, (Reasoning, Token))]
    assert "".join(e.text for e in events if isinstance(e, Reasoning)) == "孔明在想。"
    assert kinds.index(Token) > kinds.index(Reasoning)
    assert events[-1].text == "孔明出山[1]。"
