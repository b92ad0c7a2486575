"""StreamMapReduceChain and the chapter-aware summarizer: batching, progress, collapse, streaming."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models import FakeStreamingListLLM

from chains import (
    COLLAPSE_TAG,
    MAP_TAG,
    REDUCE_TAG,
    Progress,
    ProgressCallbackHandler,
    StreamLLMChain,
    StreamMapReduceChain,
    Summary,
    Token,
    documents_from_file,
    documents_from_text,
    load_stream_summarize_chain,
    parse_chapter_range,
    select_chapters,
    split_to_budget,
    stream_summary,
)
from tests.helpers import spy_batch


def char_tokens(text: str) -> list[int]:
    return list(range(len(text)))


def fake_llm(responses: list[str], **kwargs: Any) -> FakeStreamingListLLM:
    return FakeStreamingListLLM(responses=responses, custom_get_token_ids=char_tokens, **kwargs)


def docs_of(n: int) -> list[Document]:
    return [Document(page_content=f"第{i}段：刘备关羽张飞。", metadata={"chapter": i}) for i in range(1, n + 1)]


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[tuple[str, list[str], float]] = []
        self.prompts: list[tuple[str, list[str]]] = []

    def on_llm_start(self, serialized: Any, prompts: list[str], *, tags: list[str] | None = None, **kw: Any) -> None:
        self.prompts.extend((p, list(tags or [])) for p in prompts)

    def on_llm_new_token(self, token: str, *, tags: list[str] | None = None, **kwargs: Any) -> None:
        self.tokens.append((token, list(tags or []), time.perf_counter()))

    def reduce_tokens(self) -> list[str]:
        return [t for t, tags, _ in self.tokens if REDUCE_TAG in tags]

    def prompts_tagged(self, tag: str) -> list[str]:
        return [p for p, tags in self.prompts if tag in tags]


# ----- the chain ---------------------------------------------------------------------------


def test_load_mirrors_load_summarize_chain_with_streaming_llm_chains() -> None:
    chain = load_stream_summarize_chain(fake_llm(["x"]), token_max=123, batch_size=3)
    assert isinstance(chain, StreamMapReduceChain)
    reduce_chain = chain.reduce_documents_chain
    assert reduce_chain.token_max == 123 and chain.batch_size == 3
    assert isinstance(reduce_chain.combine_documents_chain.llm_chain, StreamLLMChain)
    assert isinstance(reduce_chain.collapse_documents_chain.llm_chain, StreamLLMChain)
    assert isinstance(chain.llm_chain, StreamLLMChain)


def test_map_stage_runs_in_batches_and_reports_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = fake_llm([f"摘要{i}" for i in range(5)] + ["全文摘要"])
    sizes = spy_batch(monkeypatch, llm)
    chain = load_stream_summarize_chain(llm, batch_size=2, token_max=10_000)
    events = list(chain.stream_summary(docs_of(5)))
    assert sizes == [2, 2, 1]
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress == [Progress("map", d, 5) for d in (0, 2, 4, 5)]
    summary = events[-1]
    assert isinstance(summary, Summary) and summary.text == "全文摘要"
    assert summary.intermediate == tuple(f"摘要{i}" for i in range(5))
    assert "".join(e.text for e in events if isinstance(e, Token)) == "全文摘要"


def test_invoke_reports_progress_through_callbacks() -> None:
    seen: list[Progress] = []
    llm = fake_llm(["甲", "乙", "丙", "总"])
    chain = load_stream_summarize_chain(llm, batch_size=2, token_max=10_000)
    out = chain.invoke({"input_documents": docs_of(3)}, config={"callbacks": [ProgressCallbackHandler(seen.append)]})
    assert out["output_text"] == "总"
    assert seen == [Progress("map", 0, 3), Progress("map", 2, 3), Progress("map", 3, 3)]


def test_reduce_tokens_reach_the_handler_before_the_chain_returns() -> None:
    """Guards against a reduce that buffers its answer (load_summarize_chain's LLMChain does)."""
    final = "天下大势分久必合"
    llm = fake_llm(["甲", "乙", final], sleep=0.02)
    recorder = Recorder()
    chain = load_stream_summarize_chain(llm, token_max=10_000)
    out = chain.invoke({"input_documents": docs_of(2)}, config={"callbacks": [recorder]})
    returned_at = time.perf_counter()
    assert out["output_text"] == final
    assert recorder.reduce_tokens() == list(final)
    times = [t for _, tags, t in recorder.tokens if REDUCE_TAG in tags]
    assert times == sorted(times) and times[-1] < returned_at
    assert times[-1] - times[0] >= 0.02 * (len(final) - 2)  # spread out: delivered live


def test_stream_summary_yields_tokens_before_the_summary() -> None:
    llm = fake_llm(["甲", "乙", "最终摘要"])
    chain = load_stream_summarize_chain(llm, token_max=10_000)
    events = chain.stream_summary(docs_of(2))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "summary"
    assert kinds.count("token") == 4 and kinds.index("token") > kinds.index("progress")


def test_collapse_runs_when_token_max_is_small() -> None:
    recorder = Recorder()
    responses = [f"第{i}部分的概要，内容较长。" for i in range(6)] + ["合并一", "合并二", "合并三", "终"]
    chain = load_stream_summarize_chain(fake_llm(responses), batch_size=6, token_max=90)
    events = list(chain.stream_summary(docs_of(6), callbacks=[recorder]))
    collapse_prompts = recorder.prompts_tagged(COLLAPSE_TAG)
    assert collapse_prompts, "collapse should run"
    assert all(len(p) <= 90 for p in collapse_prompts)  # one token per char
    assert any(e.stage == "collapse" for e in events if isinstance(e, Progress))
    reduce_prompt = recorder.prompts_tagged(REDUCE_TAG)[0]
    assert len(reduce_prompt) <= 90 and "合并" in reduce_prompt
    assert len(recorder.prompts_tagged(MAP_TAG)) == 6


def test_no_collapse_when_token_max_is_large() -> None:
    recorder = Recorder()
    responses = [f"第{i}部分的概要，内容较长。" for i in range(6)] + ["终"]
    chain = load_stream_summarize_chain(fake_llm(responses), batch_size=6, token_max=10_000)
    events = list(chain.stream_summary(docs_of(6), callbacks=[recorder]))
    assert recorder.prompts_tagged(COLLAPSE_TAG) == []
    assert not any(e.stage == "collapse" for e in events if isinstance(e, Progress))
    assert events[-1].text == "终"


def test_single_summary_over_token_max_is_a_clear_error() -> None:
    chain = load_stream_summarize_chain(fake_llm(["很长" * 100, "终"]), token_max=60)
    with pytest.raises(ValueError, match="token_max"):
        list(chain.stream_summary(docs_of(1)))


def test_no_documents_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="nothing to summarize"):
        list(load_stream_summarize_chain(fake_llm(["x"])).stream_summary([]))


def test_return_intermediate_steps() -> None:
    chain = load_stream_summarize_chain(fake_llm(["甲", "乙", "总"]), return_intermediate_steps=True)
    out = chain.invoke({"input_documents": docs_of(2)})
    assert out["intermediate_steps"] == ["甲", "乙"] and out["output_text"] == "总"


def test_async_twins() -> None:
    chain = load_stream_summarize_chain(fake_llm(["甲", "乙", "总结"]), token_max=10_000)

    async def run() -> list[Any]:
        return [e async for e in chain.astream_summary(docs_of(2))]

    events = asyncio.run(run())
    assert events[-1] == Summary("总结", ("甲", "乙"))
    out = asyncio.run(
        load_stream_summarize_chain(fake_llm(["甲", "乙", "总结"])).ainvoke({"input_documents": docs_of(2)})
    )
    assert out["output_text"] == "总结"


# ----- chapters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1-10", (1, 10)),
        ("第1-10回", (1, 10)),
        ("第1回-第10回", (1, 10)),
        ("第一至十回", (1, 10)),
        ("第一百回~第一百二十回", (100, 120)),
        (" 3 ", (3, 3)),
        ("第五回", (5, 5)),
        ("１-３", (1, 3)),
        ("2～4章", (2, 4)),
    ],
)
def test_parse_chapter_range(spec: str, expected: tuple[int, int]) -> None:
    assert parse_chapter_range(spec) == expected


@pytest.mark.parametrize("spec", ["", "abc", "10-1", "0-3", "1-", "第1-10回x"])
def test_parse_chapter_range_rejects_bad_input(spec: str) -> None:
    with pytest.raises(ValueError, match="chapter range"):
        parse_chapter_range(spec)


def test_chapter_documents_of_a_novel(sanguo_path: Path) -> None:
    from kb.loading import load_text
    from kb.splitting import split_chapters

    text = load_text(sanguo_path)
    docs = documents_from_file(sanguo_path, chapters="第1-3回")
    assert [d.metadata["chapter"] for d in docs] == [1, 2, 3]
    assert all(text[d.metadata["start"] : d.metadata["end"]] == d.page_content for d in docs)
    assert docs[0].metadata["chapter_title"] and docs[0].metadata["source"] == str(sanguo_path)
    final = max(c.number or 0 for c in split_chapters(text))  # 120 in the novel, 9 in the excerpt
    last = documents_from_file(sanguo_path, chapters=str(final))
    assert [d.metadata["chapter"] for d in last] == [final]


def test_documents_from_file_reads_every_format(sanguo_path: Path, tmp_path: Path) -> None:
    """Bug: ``ingest summarize book.epub`` (or .pdf, .docx) was refused as "not a text file":
    only text files were read. Now the file is read as ``ingest build`` reads it, chapters
    from its structural headings."""
    from kb.loading import load_text
    from tests.fixtures.documents import novel_chapters, write_docx, write_epub

    chapters = novel_chapters(load_text(sanguo_path), 1, 3)
    for path in (write_epub(tmp_path / "book.epub", chapters), write_docx(tmp_path / "book.docx", chapters)):
        docs = documents_from_file(path, chapters="2-3")
        assert [d.metadata["chapter"] for d in docs] == [2, 3], path.name
        assert docs[1].metadata["chapter_title"] == chapters[2].heading.split(" ", 1)[1]
        assert chapters[2].paragraphs[-1] in docs[1].page_content


def test_chapter_selection_errors_are_clear() -> None:
    docs = documents_from_text("第一回 甲\n内容。\n第二回 乙\n内容。\n", source="a.txt")
    assert [d.metadata["chapter"] for d in select_chapters(docs, "2")] == [2]
    with pytest.raises(ValueError, match="chapters 1-2"):
        select_chapters(docs, "5-6")
    with pytest.raises(ValueError, match="no chapter headings"):
        documents_from_text("没有回目的一段文字。", source="b.txt", chapters="1-2")
    with pytest.raises(ValueError, match="empty"):
        documents_from_text("  \n", source="c.txt")


def test_long_chapters_are_split_to_the_budget_with_exact_offsets(sanguo_path: Path) -> None:
    from kb.loading import load_text

    text = load_text(sanguo_path)
    docs = documents_from_file(sanguo_path, chapters="1-2")
    pieces = split_to_budget(docs, max_tokens=500, count_tokens=len)
    assert len(pieces) > len(docs)
    assert all(len(p.page_content) <= 500 for p in pieces)
    assert all(text[p.metadata["start"] : p.metadata["end"]] == p.page_content for p in pieces)
    first_chapter = [p for p in pieces if p.metadata["chapter"] == 1]
    assert [p.metadata["part"] for p in first_chapter] == list(range(1, len(first_chapter) + 1))
    assert "".join(p.page_content for p in first_chapter) == docs[0].page_content


# ----- the real ChatGLM --------------------------------------------------------------------


def test_chatglm_summary_of_chapters(tiny_chatglm: Any, sanguo_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = tiny_chatglm.model_copy(update={"max_new_tokens": 8})
    sizes = spy_batch(monkeypatch, llm)
    recorder = Recorder()
    docs = documents_from_file(sanguo_path, chapters="第1-3回")
    events = list(stream_summary(docs, llm=llm, max_input_tokens=1500, batch_size=4, callbacks=[recorder]))
    pieces_mapped = len(recorder.prompts_tagged(MAP_TAG))
    assert pieces_mapped > 3  # long chapters split to the 1500-token budget
    assert all(llm.get_num_tokens(p) <= 1500 for p in recorder.prompts_tagged(MAP_TAG))
    assert sizes and sum(sizes) == pieces_mapped and max(sizes) <= 4
    summary = events[-1]
    assert isinstance(summary, Summary) and len(summary.intermediate) == pieces_mapped
    streamed = "".join(e.text for e in events if isinstance(e, Token))
    assert streamed.strip() == summary.text
    assert "".join(recorder.reduce_tokens()) == streamed


def test_chatglm_collapse_uses_the_real_tokenizer(tiny_chatglm: Any) -> None:
    llm = tiny_chatglm.model_copy(update={"max_new_tokens": 24})
    recorder = Recorder()
    docs = [Document(page_content=f"第{i}段：刘备、关羽、张飞三人在桃园结义。") for i in range(6)]
    short = tiny_chatglm.model_copy(update={"max_new_tokens": 6})
    chain = load_stream_summarize_chain(llm, collapse_llm=short, reduce_llm=short, batch_size=6, token_max=120)
    events = list(chain.stream_summary(docs, callbacks=[recorder]))
    combine_tokens = chain.reduce_documents_chain.combine_documents_chain.prompt_length
    assert combine_tokens([Document(page_content=s) for s in events[-1].intermediate]) > 120
    assert recorder.prompts_tagged(COLLAPSE_TAG)
    assert llm.get_num_tokens(recorder.prompts_tagged(REDUCE_TAG)[0]) <= 120


def test_whole_novel_pipeline_at_scale(tiny_chatglm: Any, sanguo_novel_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All 120 chapters through split, batched map, repeated collapse and reduce, measured in
    real tokens (the model's tokenizer); the generations come from a fake so this stays fast."""
    summary_text = "本回讲述刘备、关羽、张飞等人的事迹，群雄并起，天下大乱，曹操挟天子以令诸侯。" * 2
    llm = FakeStreamingListLLM(responses=[summary_text], custom_get_token_ids=tiny_chatglm.get_token_ids)
    sizes = spy_batch(monkeypatch, llm)
    recorder = Recorder()
    docs = documents_from_file(sanguo_novel_path)
    assert [d.metadata["chapter"] for d in docs if d.metadata["chapter"]] == list(range(1, 121))
    events = list(stream_summary(docs, llm=llm, max_input_tokens=2000, batch_size=16, callbacks=[recorder]))
    map_prompts = recorder.prompts_tagged(MAP_TAG)
    assert len(map_prompts) > len(docs)  # long chapters were split
    assert max(tiny_chatglm.get_num_tokens(p) for p in map_prompts) <= 2000
    assert sum(sizes) == len(map_prompts) and max(sizes) == 16
    collapse_rounds = [e for e in events if isinstance(e, Progress) and e.stage == "collapse" and e.done == 0]
    assert collapse_rounds and collapse_rounds[0].total > 1  # hundreds of summaries, merged in groups
    assert all(tiny_chatglm.get_num_tokens(p) <= 2000 for p in recorder.prompts_tagged(COLLAPSE_TAG))
    assert tiny_chatglm.get_num_tokens(recorder.prompts_tagged(REDUCE_TAG)[0]) <= 2000
    assert events[-1].text == summary_text
