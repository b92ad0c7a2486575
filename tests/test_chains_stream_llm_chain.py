"""StreamLLMChain: every single-prompt entry point streams through callbacks; generators for UIs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_classic.chains.combine_documents.stuff import StuffDocumentsChain
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.language_models import FakeStreamingListLLM, GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.prompts import PromptTemplate

from chains import StreamLLMChain
from chains.stream_llm_chain import reports_tokens
from tests.fixtures.models import ForcedTokens
from tests.helpers import spy_batch

PROMPT = PromptTemplate.from_template("请介绍{name}。")
ANSWER = "刘备字玄德，涿郡涿县人。"


class Recorder(BaseCallbackHandler):
    """Records tokens and run events in order, with timestamps."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.events: list[tuple[str, float]] = []
        self.tags: list[list[str]] = []

    def on_llm_new_token(self, token: str, *, tags: list[str] | None = None, **kwargs: Any) -> None:
        self.tokens.append(token)
        self.tags.append(list(tags or []))
        self.events.append(("token", time.perf_counter()))

    def on_llm_start(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(("llm_start", time.perf_counter()))

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(("llm_end", time.perf_counter()))

    def on_chain_end(self, *args: Any, **kwargs: Any) -> None:
        self.events.append(("chain_end", time.perf_counter()))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class AsyncRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def fake_llm(*responses: str) -> FakeStreamingListLLM:
    return FakeStreamingListLLM(responses=list(responses) or [ANSWER])


def fake_chat(text: str = "曹操 字 孟德") -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)]))


def forced(llm: Any, text: str) -> ForcedTokens:
    ids = llm.tokenizer.encode(text, add_special_tokens=False)
    return ForcedTokens(ids, eos_id=llm.tokenizer.convert_tokens_to_ids("<|endoftext|>"))


# ----- fake LLMs ---------------------------------------------------------------------------


def test_predict_fires_every_chunk_in_order_to_call_time_callbacks() -> None:
    recorder = Recorder()
    chain = StreamLLMChain(llm=fake_llm(), prompt=PROMPT)
    assert chain.predict(name="刘备", callbacks=[recorder]) == ANSWER
    assert recorder.tokens == list(ANSWER)
    names = recorder.names()
    assert names.index("llm_start") < names.index("token") and names[-1] == "chain_end"
    last_llm_end = len(names) - 1 - names[::-1].index("llm_end")
    assert max(i for i, n in enumerate(names) if n == "token") < last_llm_end


def test_constructor_callbacks_see_tokens_too() -> None:
    """Guards against LangChain's default: a chain's own callbacks never reach its LLM run."""
    recorder = Recorder()
    chain = StreamLLMChain(llm=fake_llm(), prompt=PROMPT, callbacks=[recorder])
    chain.invoke({"name": "刘备"})
    assert recorder.tokens == list(ANSWER)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # run and __call__ are deprecated, still used
@pytest.mark.parametrize("entry", ["predict", "invoke", "run", "call"])
def test_every_entry_point_streams(entry: str) -> None:
    recorder = Recorder()
    chain = StreamLLMChain(llm=fake_llm(), prompt=PROMPT)
    config = {"callbacks": [recorder]}
    if entry == "predict":
        out = chain.predict(name="刘备", callbacks=[recorder])
    elif entry == "invoke":
        out = chain.invoke({"name": "刘备"}, config=config)["text"]
    elif entry == "run":
        out = chain.run(name="刘备", callbacks=[recorder])
    else:
        out = chain({"name": "刘备"}, callbacks=[recorder])["text"]
    assert out == ANSWER
    assert recorder.tokens == list(ANSWER)


def test_stream_predict_equals_predict_and_is_one_chain_run() -> None:
    recorder = Recorder()
    chain = StreamLLMChain(llm=fake_llm(ANSWER, ANSWER), prompt=PROMPT)
    pieces = list(chain.stream_predict(name="刘备", callbacks=[recorder]))
    assert pieces == list(ANSWER)
    assert "".join(pieces) == chain.predict(name="刘备")
    assert recorder.tokens == pieces
    assert recorder.names().count("chain_end") == 1


def test_tokens_reach_handler_before_the_chain_returns() -> None:
    """Guards against buffering: each token is delivered while the LLM is still producing."""
    seen_at_token: list[int] = []
    recorder = Recorder()

    class Spy(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            seen_at_token.append(len(recorder.tokens))

    llm = FakeStreamingListLLM(responses=[ANSWER], sleep=0.01)
    chain = StreamLLMChain(llm=llm, prompt=PROMPT)
    generator = chain.stream_predict(name="刘备", callbacks=[recorder, Spy()])
    first = next(generator)
    assert first == ANSWER[0]
    assert recorder.tokens == [ANSWER[0]]  # one token out, the rest not yet generated
    assert "chain_end" not in recorder.names()
    rest = list(generator)
    assert first + "".join(rest) == ANSWER
    token_times = [t for n, t in recorder.events if n == "token"]
    end_time = next(t for n, t in recorder.events if n == "chain_end")
    assert token_times == sorted(token_times) and token_times[-1] <= end_time
    assert token_times[-1] - token_times[0] >= 0.01 * (len(ANSWER) - 2)


def test_chain_tags_mark_the_llm_run() -> None:
    recorder = Recorder()
    StreamLLMChain(llm=fake_llm(), prompt=PROMPT, tags=["final"]).predict(name="x", callbacks=[recorder])
    assert recorder.tags and all("final" in tags for tags in recorder.tags)


def test_apply_of_several_inputs_uses_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = fake_llm("甲", "乙", "丙")
    calls = spy_batch(monkeypatch, llm)
    chain = StreamLLMChain(llm=llm, prompt=PROMPT)
    out = chain.apply([{"name": n} for n in ("刘备", "关羽", "张飞")])
    assert [o["text"] for o in out] == ["甲", "乙", "丙"]
    assert calls == [3]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # StuffDocumentsChain
def test_embedded_in_stuff_documents_chain_streams() -> None:
    recorder = Recorder()
    chain = StuffDocumentsChain(
        llm_chain=StreamLLMChain(llm=fake_llm(), prompt=PromptTemplate.from_template("总结：{text}")),
        document_variable_name="text",
    )
    out = chain.invoke({"input_documents": [Document(page_content="桃园结义")]}, config={"callbacks": [recorder]})
    assert out["output_text"] == ANSWER
    assert recorder.tokens == list(ANSWER)


def test_output_parser_still_applies() -> None:
    from langchain_core.output_parsers import BaseOutputParser

    class Upper(BaseOutputParser[str]):
        def parse(self, text: str) -> str:
            return text.upper()

    chain = StreamLLMChain(llm=fake_llm("abc"), prompt=PROMPT, output_parser=Upper())
    assert chain.predict(name="x") == "ABC"


# ----- chat models -------------------------------------------------------------------------


def test_chat_model_pieces_are_message_content() -> None:
    recorder = Recorder()
    chain = StreamLLMChain(llm=fake_chat(), prompt=PROMPT, callbacks=[recorder])
    pieces = list(chain.stream_predict(name="曹操"))
    assert pieces == ["曹操", " ", "字", " ", "孟德"]
    assert [t for t in recorder.tokens if t] == pieces
    assert reports_tokens(chain.llm)  # BaseChatModel.stream reports: no duplicates from us
    assert StreamLLMChain(llm=fake_chat(), prompt=PROMPT).predict(name="曹操") == "曹操 字 孟德"


def test_chat_model_async() -> None:
    recorder = AsyncRecorder()
    chain = StreamLLMChain(llm=fake_chat(), prompt=PROMPT)

    async def run() -> list[str]:
        return [p async for p in chain.astream_predict(name="曹操", callbacks=[recorder])]

    pieces = asyncio.run(run())
    assert "".join(pieces) == "曹操 字 孟德"
    assert [t for t in recorder.tokens if t] == pieces


# ----- async twins -------------------------------------------------------------------------


def test_apredict_streams_through_async_handler() -> None:
    recorder = AsyncRecorder()
    chain = StreamLLMChain(llm=fake_llm(), prompt=PROMPT)
    assert asyncio.run(chain.apredict(name="刘备", callbacks=[recorder])) == ANSWER
    assert recorder.tokens == list(ANSWER)


def test_astream_predict_equals_apredict() -> None:
    chain = StreamLLMChain(llm=fake_llm(ANSWER), prompt=PROMPT)

    async def run() -> tuple[list[str], str]:
        pieces = [p async for p in chain.astream_predict(name="刘备")]
        return pieces, await chain.apredict(name="刘备")

    pieces, full = asyncio.run(run())
    assert pieces == list(ANSWER) and "".join(pieces) == full


# ----- the real ChatGLM over a tiny GLM ----------------------------------------------------


def test_chatglm_predict_equals_stream_predict_and_callbacks_see_each_piece_once(tiny_chatglm: Any) -> None:
    """Guards against double reporting: ChatGLM's own _stream fires on_llm_new_token already."""
    chain = StreamLLMChain(llm=tiny_chatglm, prompt=PROMPT)
    recorder = Recorder()
    pieces = list(chain.stream_predict(name="刘备", callbacks=[recorder]))
    assert len(pieces) > 1
    assert [t for t in recorder.tokens if t] == pieces
    assert chain.predict(name="刘备") == "".join(pieces)  # greedy: deterministic


def test_chatglm_forced_answer_streams_live(tiny_chatglm: Any) -> None:
    text = "话说天下大势，分久必合，合久必分。"
    chain = StreamLLMChain(llm=tiny_chatglm, prompt=PROMPT, llm_kwargs={"logits_processor": [forced(tiny_chatglm, text)]})
    recorder = Recorder()
    generator = chain.stream_predict(name="三国", callbacks=[recorder])
    first = next(generator)
    assert "llm_end" not in recorder.names()  # the model is still generating
    assert first + "".join(generator) == text
    assert "".join(recorder.tokens) == text


def test_chatglm_async(tiny_chatglm: Any) -> None:
    chain = StreamLLMChain(llm=tiny_chatglm, prompt=PROMPT)
    recorder = AsyncRecorder()

    async def run() -> tuple[list[str], str]:
        pieces = [p async for p in chain.astream_predict(name="关羽", callbacks=[recorder])]
        return pieces, await chain.apredict(name="关羽")

    pieces, full = asyncio.run(run())
    assert "".join(pieces) == full and len(pieces) > 1
    assert [t for t in recorder.tokens if t] == pieces


def test_chatglm_apply_batches(tiny_chatglm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    original = type(tiny_chatglm)._generate_batch

    def spy(self: Any, prompts: list[str], *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(prompts))
        return original(self, prompts, *args, **kwargs)

    monkeypatch.setattr(type(tiny_chatglm), "_generate_batch", spy)
    chain = StreamLLMChain(llm=tiny_chatglm, prompt=PROMPT)
    out = chain.apply([{"name": "刘备"}, {"name": "关羽"}])
    assert sizes == [2] and len(out) == 2


def test_closing_stream_predict_stops_the_model(tiny_chatglm: Any) -> None:
    """Guards against a UI 'stop' that leaves the model generating into the void."""
    from llm.streaming import model_is_busy

    llm = tiny_chatglm.model_copy(update={"max_new_tokens": 2000})
    text = "天下大势" * 500
    processor = ForcedTokens(
        llm.tokenizer.encode(text, add_special_tokens=False),
        eos_id=llm.tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    chain = StreamLLMChain(llm=llm, prompt=PROMPT, llm_kwargs={"logits_processor": [processor]})
    recorder = Recorder()
    generator = chain.stream_predict(name="三国", callbacks=[recorder])
    next(generator)
    generator.close()
    deadline = time.monotonic() + 10
    while model_is_busy(llm.model) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not model_is_busy(llm.model)
    assert processor.steps < 500  # stopped long before the 2000 tokens it was asked for


# ----- Runnable stream / astream -----------------------------------------------------------


def add_up(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def test_stream_yields_output_chunks_as_tokens_arrive_and_they_add_up_to_invoke() -> None:
    """Guards against ``.stream({...})`` yielding one dict at the end (Chain's default)."""
    chain = StreamLLMChain(llm=fake_llm(ANSWER, ANSWER), prompt=PROMPT)
    recorder = Recorder()
    chunks = list(chain.stream({"name": "刘备"}, config={"callbacks": [recorder]}))
    text_chunks = [c for c in chunks if "text" in c]
    assert len(text_chunks) > 3 and all(set(c) == {"text"} for c in text_chunks)
    assert add_up(chunks) == chain.invoke({"name": "刘备"}) == {"name": "刘备", "text": ANSWER}
    assert [t for t in recorder.tokens if t] == [c["text"] for c in text_chunks]
    only = list(chain.stream({"name": "刘备"}, return_only_outputs=True))
    assert add_up(only) == {"text": ANSWER} and "name" not in only[0]


def test_stream_first_chunk_comes_while_the_model_still_generates(tiny_chatglm: Any) -> None:
    text = "话说天下大势，分久必合，合久必分。"
    chain = StreamLLMChain(llm=tiny_chatglm, prompt=PROMPT, llm_kwargs={"logits_processor": [forced(tiny_chatglm, text)]})
    recorder = Recorder()
    stream = chain.stream({"name": "三国"}, config={"callbacks": [recorder]})
    assert next(stream) == {"name": "三国"}
    first = next(stream)
    assert first["text"] and "llm_end" not in recorder.names()
    assert add_up([first, *stream])["text"] == text


def test_astream_chunks_add_up_to_ainvoke() -> None:
    chain = StreamLLMChain(llm=fake_llm(ANSWER, ANSWER), prompt=PROMPT)

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        chunks = [c async for c in chain.astream({"name": "关羽"})]
        return chunks, await chain.ainvoke({"name": "关羽"})

    chunks, full = asyncio.run(run())
    assert len([c for c in chunks if "text" in c]) > 3
    assert add_up(chunks) == full


def test_stream_with_a_parser_gives_the_parsed_output_at_the_end() -> None:
    from langchain_classic.output_parsers import CommaSeparatedListOutputParser

    chain = StreamLLMChain(llm=fake_llm("刘备,关羽,张飞"), prompt=PROMPT, output_parser=CommaSeparatedListOutputParser())
    chunks = list(chain.stream({"name": "三兄弟"}, return_only_outputs=True))
    assert chunks == [{"text": ["刘备", "关羽", "张飞"]}]


def test_chat_model_with_a_system_message_fills_the_system_slot(tiny_chatglm: Any) -> None:
    """Guards against a ChatPromptTemplate's system text reaching ChatGLM as "System: ..." text."""
    from langchain_core.prompts import ChatPromptTemplate

    from llm import ChatGLMChat
    from tests.fixtures.models import forced_chatglm

    llm = forced_chatglm(tiny_chatglm, forced(tiny_chatglm, ANSWER))
    inputs: list[str] = []
    original = llm._generate_kwargs

    def spy(prompts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        out = original(prompts, kwargs)
        inputs.append(llm.tokenizer.decode(out["input_ids"][0]))
        return out

    object.__setattr__(llm, "_generate_kwargs", spy)
    prompt = ChatPromptTemplate.from_messages([("system", "你是三国专家。"), ("human", "请介绍{name}。")])
    chain = StreamLLMChain(llm=ChatGLMChat(llm=llm), prompt=prompt)
    pieces = list(chain.stream_predict(name="刘备"))
    assert "".join(pieces) == ANSWER and len(pieces) > 1
    assert inputs[-1] == "[gMASK]<sop><|system|>\n你是三国专家。<|user|>\n请介绍刘备。<|assistant|>"
    llm.forced = forced(tiny_chatglm, ANSWER)
    assert add_up(list(chain.stream({"name": "刘备"})))["text"] == ANSWER
