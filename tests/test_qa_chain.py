"""KnowledgeBaseQAChain: sources, streaming, refusal, condensing, token budget, no-LLM mode."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import FakeStreamingListLLM, GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.retrievers import BaseRetriever

from chains import (
    CONDENSE_STAGE,
    CONDENSE_TAG,
    NO_LLM_MESSAGE,
    REFUSAL,
    Answer,
    KnowledgeBaseQAChain,
    Progress,
    Source,
    Sources,
    Token,
)
from chains.history import normalize_history, to_messages
from chains.token_budget import truncate_to_tokens


def char_tokens(text: str) -> list[int]:
    """One token per character: easy budgets for fake models."""
    return list(range(len(text)))


class OverlapRetriever(BaseRetriever):
    """Scores chunks by shared character bigrams with the query; records every query."""

    chunks: list[Document]
    k: int = 3
    queries: list[str] = []

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        self.queries.append(query)
        grams = {query[i : i + 2] for i in range(len(query) - 1)}
        scored = []
        for doc in self.chunks:
            score = sum(1 for g in grams if g in doc.page_content)
            if score:
                scored.append((score, doc))
        scored.sort(key=lambda p: -p[0])
        return [
            Document(page_content=d.page_content, metadata={**d.metadata, "score": float(s)})
            for s, d in scored[: self.k]
        ]


class PromptRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[tuple[str, list[str]]] = []
        self.tokens: list[str] = []

    def on_llm_start(self, serialized: Any, prompts: list[str], *, tags: list[str] | None = None, **kw: Any) -> None:
        self.prompts.extend((p, list(tags or [])) for p in prompts)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def exploding_llm() -> FakeStreamingListLLM:
    """An LLM whose every call fails: proves a code path never calls the model."""
    return FakeStreamingListLLM(responses=["x"], error_on_chunk_number=0, custom_get_token_ids=char_tokens)


TEXT = (
    "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞在桃园结为兄弟，誓同生死。三人招兵买马，讨伐黄巾。\n"
    "第二回 张翼德怒鞭督邮\n张飞见督邮欺压刘备，怒将督邮绑在树上鞭打。刘备弃官而去。\n"
    "第三回 议温明董卓叱丁原\n董卓入京，欲废少帝，丁原反对，吕布为丁原义子。\n"
)


def chunks_of(text: str, source: str = "sanguo_sample.txt") -> list[Document]:
    from kb.splitting import split_document

    return [
        Document(
            page_content=c.text,
            metadata={
                "source": source,
                "doc_id": "d1",
                "chapter": c.chapter,
                "chapter_title": c.chapter_title,
                "start": c.start,
                "end": c.end,
                "chunk_id": i,
            },
        )
        for i, c in enumerate(split_document(text, chunk_size=40, chunk_overlap=0))
    ]


def make_chain(llm: Any, **fields: Any) -> KnowledgeBaseQAChain:
    retriever = OverlapRetriever(chunks=chunks_of(TEXT), queries=[])
    return KnowledgeBaseQAChain(retriever=retriever, llm=llm, **fields)


# ----- the answer path ---------------------------------------------------------------------


def test_stream_answer_yields_sources_then_tokens_then_answer() -> None:
    llm = FakeStreamingListLLM(responses=["刘备、关羽、张飞。"], custom_get_token_ids=char_tokens)
    events = list(make_chain(llm).stream_answer("桃园结义的三兄弟是谁？"))
    assert isinstance(events[0], Sources) and isinstance(events[-1], Answer)
    tokens = [e.text for e in events[1:-1]]
    assert all(isinstance(e, Token) for e in events[1:-1]) and len(tokens) > 1
    answer = events[-1]
    assert answer.text == "".join(tokens) == "刘备、关羽、张飞。"
    assert answer.sources == events[0].sources and answer.sources
    top = answer.sources[0]
    assert "桃园" in top.text and top.chapter == 1 and top.chapter_title == "宴桃园豪杰三结义"
    assert TEXT[top.start : top.end] == top.text
    assert not answer.refused and answer.llm_used


def test_prompt_holds_passages_and_question_and_instructions() -> None:
    recorder = PromptRecorder()
    llm = FakeStreamingListLLM(responses=["答"], custom_get_token_ids=char_tokens)
    list(make_chain(llm).stream_answer("张飞为什么鞭打督邮？", callbacks=[recorder]))
    (prompt, _), = recorder.prompts[-1:]
    assert "督邮" in prompt and "张飞为什么鞭打督邮？" in prompt
    assert REFUSAL in prompt and "[1]" in prompt


def test_invoke_returns_answer_and_source_documents() -> None:
    llm = FakeStreamingListLLM(responses=["董卓。"], custom_get_token_ids=char_tokens)
    out = make_chain(llm).invoke({"question": "谁想废少帝？"})
    assert out["answer"] == "董卓。" and out["refused"] is False
    docs = out["source_documents"]
    assert docs and all(TEXT[d.metadata["start"] : d.metadata["end"]] == d.page_content for d in docs)
    assert out["standalone_question"] == "谁想废少帝？"


def test_callbacks_get_answer_tokens_live() -> None:
    recorder = PromptRecorder()
    llm = FakeStreamingListLLM(responses=["刘备"], custom_get_token_ids=char_tokens)
    make_chain(llm).invoke({"question": "桃园结义"}, config={"callbacks": [recorder]})
    assert recorder.tokens == ["刘", "备"]


# ----- refusal and no-LLM mode -------------------------------------------------------------


def test_nothing_retrieved_refuses_without_calling_the_llm() -> None:
    chain = make_chain(exploding_llm())
    events = list(chain.stream_answer("诸葛亮的妻子是谁？"))  # no bigram matches the sample text
    assert events[0] == Sources((), "诸葛亮的妻子是谁？")
    assert events[1] == Token(REFUSAL)
    assert events[-1].refused and events[-1].text == REFUSAL and events[-1].sources == ()


def test_passages_under_the_threshold_count_as_nothing() -> None:
    chain = make_chain(exploding_llm(), score_threshold=100.0, refusal="没有找到相关内容。")
    out = chain.invoke({"question": "桃园结义"})
    assert out["answer"] == "没有找到相关内容。" and out["refused"] and out["source_documents"] == []


def test_threshold_keeps_passages_above_it() -> None:
    llm = FakeStreamingListLLM(responses=["答"], custom_get_token_ids=char_tokens)
    chain = make_chain(llm, score_threshold=2.0)
    events = list(chain.stream_answer("刘备关羽张飞"))
    assert events[-1].sources and all(s.score >= 2.0 for s in events[-1].sources)


def test_without_llm_returns_passages_and_a_message() -> None:
    chain = make_chain(None)
    events = list(chain.stream_answer("桃园结义"))
    assert events[1] == Token(NO_LLM_MESSAGE)
    answer = events[-1]
    assert not answer.llm_used and answer.text == NO_LLM_MESSAGE and answer.sources
    assert "llm.model_path" in answer.text


def test_without_llm_history_is_ignored_not_condensed() -> None:
    chain = make_chain(None)
    answer = list(chain.stream_answer("他的兄弟是谁？", history=[("刘备是谁？", "蜀汉昭烈帝")]))[-1]
    assert answer.question == "他的兄弟是谁？"


# ----- multi-turn --------------------------------------------------------------------------


def test_history_is_condensed_before_retrieval() -> None:
    recorder = PromptRecorder()
    llm = FakeStreamingListLLM(responses=["张飞为什么鞭打督邮？", "因为督邮欺压刘备。"], custom_get_token_ids=char_tokens)
    chain = make_chain(llm)
    history = [("张飞是谁？", "刘备的结义兄弟。")]
    events = list(chain.stream_answer("他为什么打人？", history=history, callbacks=[recorder]))
    condense_prompt, condense_tags = recorder.prompts[0]
    assert CONDENSE_TAG in condense_tags
    assert "张飞是谁？" in condense_prompt and "他为什么打人？" in condense_prompt
    assert chain.retriever.queries == ["张飞为什么鞭打督邮？"]
    condensing = [e for e in events if isinstance(e, Progress)]
    assert condensing and all(e.stage == CONDENSE_STAGE for e in condensing)
    assert events[len(condensing)].question == "张飞为什么鞭打督邮？"  # Sources right after
    tokens = "".join(e.text for e in events if isinstance(e, Token))
    assert tokens == "因为督邮欺压刘备。"  # the condensed question never reaches the user
    assert any("督邮" in s.text for s in events[-1].sources)


def test_condense_is_capped_and_stops_when_the_stream_is_closed(tiny_chatglm: Any) -> None:
    """Bug: the condense step was one blocking ``invoke`` with the model's full
    max_new_tokens, so a UI Stop pressed during it waited for the whole rewrite."""
    from llm.streaming import model_is_busy
    from tests.fixtures.models import ForcedTokens, forced_chatglm

    tok = tiny_chatglm.tokenizer
    cao = tok.encode("曹操", add_special_tokens=False) * 100
    forced = ForcedTokens(cao, eos_id=tok.eos_token_id, pause_at=3)
    llm = forced_chatglm(tiny_chatglm, forced, max_new_tokens=40)
    chain = make_chain(llm, condense_max_tokens=16)
    assert chain._condense_model().kwargs == {"max_new_tokens": 16, "enable_thinking": False}

    stream = chain.stream_answer("他为什么打人？", history=[("张飞是谁？", "刘备的结义兄弟。")])
    first = next(stream)
    assert isinstance(first, Progress) and first.stage == CONDENSE_STAGE
    forced.resume.set()
    stream.close()
    deadline = time.monotonic() + 5
    while model_is_busy(llm.model) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not model_is_busy(llm.model)
    assert forced.steps <= 6  # stopped within a few tokens of the close, far below 16

    llm.forced = ForcedTokens(cao, eos_id=tok.eos_token_id)
    events = list(chain.stream_answer("他为什么打人？", history=[("张飞是谁？", "刘备的结义兄弟。")]))
    sources = next(e for e in events if isinstance(e, Sources))
    assert sources.question == tok.decode(cao[:16]).strip()  # cut at condense_max_tokens, not 40


def test_gradio_message_history_is_accepted() -> None:
    history = [
        {"role": "user", "content": "张飞是谁？"},
        {"role": "assistant", "content": "刘备的结义兄弟。"},
        {"role": "user", "content": "他为什么打人？"},
    ]
    assert normalize_history(history) == [("张飞是谁？", "刘备的结义兄弟。")]
    with pytest.raises(ValueError, match="history must be"):
        normalize_history([42])


@pytest.mark.parametrize(
    "history",
    [
        [("张飞是谁？", "刘备的结义兄弟。")],
        [HumanMessage("张飞是谁？"), AIMessage("刘备的结义兄弟。")],
        [{"role": "user", "content": "张飞是谁？"}, {"role": "assistant", "content": "刘备的结义兄弟。"}],
    ],
    ids=["pairs", "messages", "dicts"],
)
def test_every_history_format_condenses_the_same(history: list[Any]) -> None:
    """Guards against ``normalize_history`` rejecting LangChain's own HumanMessage/AIMessage."""
    recorder = PromptRecorder()
    llm = FakeStreamingListLLM(responses=["张飞为什么鞭打督邮？", "答"], custom_get_token_ids=char_tokens)
    list(make_chain(llm).stream_answer("他为什么打人？", history=history, callbacks=[recorder]))
    assert "用户：张飞是谁？\n助手：刘备的结义兄弟。" in recorder.prompts[0][0]


def test_to_messages_converts_every_format_in_one_place() -> None:
    expected = [HumanMessage("问"), AIMessage("答")]
    assert to_messages([("问", "答")]) == expected
    assert to_messages([["问", "答"], ("当前问题", None)]) == expected  # unanswered question dropped
    assert to_messages([{"role": "user", "content": [{"type": "text", "text": "问"}]},
                        {"role": "assistant", "content": "答"}]) == expected
    assert to_messages([SystemMessage("系统"), *expected]) == [SystemMessage("系统"), *expected]
    assert to_messages(None) == []
    assert normalize_history([SystemMessage("系统"), *expected]) == [("问", "答")]


def test_chat_model_with_a_system_prompt_gets_it_in_the_system_slot(tiny_chatglm: Any) -> None:
    """KnowledgeBaseQAChain with ChatGLMChat and a ChatPromptTemplate: the system text reaches
    the template's <|system|> slot (not "System: ..." user text), history as messages."""
    from langchain_core.prompts import ChatPromptTemplate

    from llm import ChatGLMChat
    from tests.fixtures.models import ForcedTokens, forced_chatglm

    tok = tiny_chatglm.tokenizer
    answer = "刘备、关羽、张飞。"
    llm = forced_chatglm(tiny_chatglm, ForcedTokens(tok.encode(answer, add_special_tokens=False),
                                                    eos_id=tok.eos_token_id))
    seen: list[str] = []
    original = llm._generate_kwargs

    def spy(prompts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        out = original(prompts, kwargs)
        seen.append(tok.decode(out["input_ids"][0]))
        return out

    object.__setattr__(llm, "_generate_kwargs", spy)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "你只依据已知信息回答。"), ("human", "已知信息：\n{context}\n\n问题：{question}")]
    )
    chain = make_chain(ChatGLMChat(llm=llm), prompt=prompt)
    events = list(chain.stream_answer("桃园结义的三兄弟是谁？"))
    assert events[-1].text == answer and len([e for e in events if isinstance(e, Token)]) > 1
    assert seen[-1].startswith("[gMASK]<sop><|system|>\n你只依据已知信息回答。<|user|>\n已知信息：")
    assert "System:" not in seen[-1]
    # The token budget measures exactly that input (chat template included).
    assert chain.render_prompt([_doc(s) for s in events[-1].sources], events[-1].question) == seen[-1]


def test_history_is_trimmed_oldest_first_to_fit() -> None:
    recorder = PromptRecorder()
    llm = FakeStreamingListLLM(responses=["改写", "答"], custom_get_token_ids=char_tokens)
    history = [(f"第{i}个问题" + "很长" * 40, f"第{i}个回答" + "很长" * 40) for i in range(10)]
    chain = make_chain(llm, max_input_tokens=600)
    list(chain.stream_answer("然后呢？", history=history, callbacks=[recorder]))
    condense_prompt = recorder.prompts[0][0]
    assert len(condense_prompt) <= 600
    assert "第9个问题" in condense_prompt and "第0个问题" not in condense_prompt


# ----- token budget ------------------------------------------------------------------------


def test_passages_are_cut_to_the_token_budget_with_exact_offsets() -> None:
    recorder = PromptRecorder()
    llm = FakeStreamingListLLM(responses=["答"], custom_get_token_ids=char_tokens)
    chain = make_chain(llm, max_input_tokens=170, min_passage_tokens=4)
    chain.retriever.k = 6
    answer = list(chain.stream_answer("刘备关羽张飞督邮董卓", callbacks=[recorder]))[-1]
    prompt = recorder.prompts[-1][0]
    assert len(prompt) <= 170  # one token per character
    assert prompt == chain.render_prompt([_doc(s) for s in answer.sources], answer.question)
    assert answer.sources[-1].truncated
    for source in answer.sources:
        assert TEXT[source.start : source.end] == source.text


def test_question_over_budget_is_a_clear_error() -> None:
    llm = FakeStreamingListLLM(responses=["答"], custom_get_token_ids=char_tokens)
    with pytest.raises(ValueError, match="llm.max_input_tokens"):
        list(make_chain(llm, max_input_tokens=100).stream_answer("桃园" * 80))


def test_question_leaving_no_room_for_a_passage_is_an_error_not_an_uncited_answer() -> None:
    """Bug: a question that fit the budget but left under ``min_passage_tokens`` of room had every
    retrieved passage dropped, and the model was still prompted with an empty context: an answer
    from nothing, with no sources and ``refused`` False. It must be the same clear budget error."""
    chain = make_chain(exploding_llm(), min_passage_tokens=16)
    question = "刘备关羽张飞" * 3
    empty = len(chain.render_prompt([], question))  # one token per character
    chain = chain.model_copy(update={"max_input_tokens": empty + 5})
    with pytest.raises(ValueError, match="no room for any passage"):
        list(chain.stream_answer(question))


def test_empty_question_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        list(make_chain(None).stream_answer("  "))


def test_truncate_to_tokens_finds_the_longest_prefix() -> None:
    count = lambda s: len(s.encode("utf-8"))  # 3 per Chinese character  # noqa: E731
    assert truncate_to_tokens("桃园结义", 7, count) == "桃园"
    assert truncate_to_tokens("桃园结义", 100, count) == "桃园结义"
    assert truncate_to_tokens("桃园结义", 0, count) == ""


def _doc(source: Source) -> Document:
    return Document(page_content=source.text, metadata={"chapter_title": source.chapter_title})


# ----- chat models and async ---------------------------------------------------------------


def test_chat_model_answers() -> None:
    chat = GenericFakeChatModel(messages=iter([AIMessage(content="刘备 关羽 张飞")]), custom_get_token_ids=char_tokens)
    answer = list(make_chain(chat).stream_answer("桃园结义"))
    assert answer[-1].text == "刘备 关羽 张飞"
    assert [e.text for e in answer[1:-1]] == ["刘备", " ", "关羽", " ", "张飞"]


def test_astream_answer_matches_stream_answer() -> None:
    def llm() -> FakeStreamingListLLM:
        return FakeStreamingListLLM(responses=["张飞为什么鞭打督邮？", "督邮欺压刘备。"], custom_get_token_ids=char_tokens)

    history = [("张飞是谁？", "刘备的结义兄弟。")]
    sync_events = list(make_chain(llm()).stream_answer("他为什么打人？", history=history))

    async def run() -> list[Any]:
        return [e async for e in make_chain(llm()).astream_answer("他为什么打人？", history=history)]

    assert asyncio.run(run()) == sync_events
    out = asyncio.run(make_chain(llm()).ainvoke({"question": "他为什么打人？", "chat_history": history}))
    assert out["answer"] == "督邮欺压刘备。"


def test_async_refusal_does_not_call_llm() -> None:
    async def run() -> list[Any]:
        return [e async for e in make_chain(exploding_llm()).astream_answer("诸葛亮的妻子是谁？")]

    assert asyncio.run(run())[-1].refused


def test_source_label_for_citations() -> None:
    source = Source(text="x", source="/data/sanguo.txt", chapter=1, chapter_title="宴桃园豪杰三结义", start=5, end=6)
    assert source.label() == "sanguo.txt · 第1回 宴桃园豪杰三结义 · 5–6"
    assert Answer("a", (source,), "q").to_dict()["kind"] == "answer"


# ----- the real ChatGLM ---------------------------------------------------------------------


def test_chatglm_prompt_fits_max_input_tokens_in_real_tokens(tiny_chatglm: Any, sanguo_path: Path) -> None:
    from kb.loading import load_text

    text = load_text(sanguo_path)[:20000]
    recorder = PromptRecorder()
    retriever = OverlapRetriever(chunks=chunks_of(text, source=str(sanguo_path)), k=8, queries=[])
    chain = KnowledgeBaseQAChain(retriever=retriever, llm=tiny_chatglm, max_input_tokens=200)
    events = list(chain.stream_answer("刘备关羽张飞桃园结义", callbacks=[recorder]))
    prompt = recorder.prompts[-1][0]
    assert tiny_chatglm.get_num_tokens(prompt) <= 200
    answer = events[-1]
    assert answer.sources and answer.text == "".join(e.text for e in events if isinstance(e, Token))
    for source in answer.sources:
        assert text[source.start : source.end] == source.text


def test_from_settings_takes_the_prompt_budget_not_the_retrieval_threshold() -> None:
    """Guards against filtering reranker scores with the retrieval threshold (the KB applies it)."""
    from configs import load_settings

    settings = load_settings(llm={"max_input_tokens": 777}, retrieval={"score_threshold": 0.5})
    chain = KnowledgeBaseQAChain.from_settings(OverlapRetriever(chunks=[], queries=[]), None, settings)
    assert chain.max_input_tokens == 777 and chain.score_threshold is None
