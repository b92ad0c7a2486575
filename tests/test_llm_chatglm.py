"""ChatGLM over tiny native checkpoints: loading, chat prompts, streaming, stop, batch, async."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from configs.settings import LLMSettings
from llm import ChatGLM
from llm.streaming import model_is_busy
from tests.fixtures.models import ForcedTokens, cancelled_when_parked
from tests.fixtures.models import forced_answer as forced
from tests.helpers import wait_until

QUESTION = "曹操是谁？"
# Rare characters that the small trained vocabulary splits into single bytes.
RARE_TEXT = "赤壁之战，鑫龘骉。曹操败走华容道"


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


# ----- loading -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "model_class"),
    [
        ("tiny_glm_dir", "GlmForCausalLM"),
        ("tiny_glm4_dir", "Glm4ForCausalLM"),
        ("tiny_llama_dir", "LlamaForCausalLM"),
    ],
)
def test_checkpoints_load_and_chat(fixture: str, model_class: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(fixture)
    llm = ChatGLM.from_model_path(folder, device="cpu", temperature=0.0, max_new_tokens=8)
    assert type(llm.model).__name__ == model_class
    assert str(llm.model.device) == "cpu"
    assert llm.model.dtype.is_floating_point and str(llm.model.dtype) == "torch.float32"
    answer = llm.invoke(QUESTION)
    chunks = list(llm.stream(QUESTION))
    assert answer == "".join(chunks) and answer
    assert len(chunks) <= 8  # at most one chunk per generated token
    assert QUESTION in llm.render_prompt(QUESTION)


def test_from_settings_takes_generation_defaults(tiny_glm_dir: Path) -> None:
    settings = LLMSettings(
        model_path=str(tiny_glm_dir),
        device="cpu",
        system_prompt="你是三国历史专家",
        generation={"max_new_tokens": 5, "temperature": 0.0, "top_p": 0.5, "repetition_penalty": 1.1},
    )
    llm = ChatGLM.from_settings(settings)
    assert (llm.max_new_tokens, llm.temperature, llm.top_p, llm.repetition_penalty) == (5, 0.0, 0.5, 1.1)
    assert llm.system_prompt == "你是三国历史专家"
    assert llm._identifying_params["model_path"] == str(tiny_glm_dir)
    assert llm._llm_type == "chatglm"
    assert 1 <= len(list(llm.stream(QUESTION))) <= 5


# ----- prompts -----------------------------------------------------------------------------


def test_chat_template_places_system_history_and_question(tiny_chatglm: ChatGLM) -> None:
    rendered = tiny_chatglm.render_prompt(
        "他后来怎样？",
        history=[("曹操是谁？", "魏国的奠基者。"), ("刘备呢？", "蜀汉的开国皇帝。")],
        system_prompt="你是三国历史专家",
    )
    assert rendered == (
        "[gMASK]<sop><|system|>\n你是三国历史专家"
        "<|user|>\n曹操是谁？<|assistant|>\n魏国的奠基者。"
        "<|user|>\n刘备呢？<|assistant|>\n蜀汉的开国皇帝。"
        "<|user|>\n他后来怎样？<|assistant|>"
    )
    assert tiny_chatglm.render_prompt("你好") == "[gMASK]<sop><|user|>\n你好<|assistant|>"


def test_history_as_langchain_messages_renders_like_pairs(tiny_chatglm: ChatGLM) -> None:
    from langchain_core.messages import AIMessage, HumanMessage

    pairs = tiny_chatglm.render_prompt(QUESTION, history=[("刘备是谁？", "蜀汉昭烈帝。")])
    messages = tiny_chatglm.render_prompt(QUESTION, history=[HumanMessage("刘备是谁？"), AIMessage("蜀汉昭烈帝。")])
    assert messages == pairs


def test_system_prompt_field_and_per_call_override_reach_the_model(tiny_chatglm: ChatGLM) -> None:
    """history/system_prompt per call must change the model input, not only render_prompt."""
    llm = tiny_chatglm.model_copy(update={"system_prompt": "你是三国历史专家", "max_new_tokens": 12})
    plain = tiny_chatglm.invoke(QUESTION, max_new_tokens=12)
    with_field = llm.invoke(QUESTION)
    assert with_field == tiny_chatglm.invoke(QUESTION, max_new_tokens=12, system_prompt="你是三国历史专家")
    with_history = llm.invoke(QUESTION, history=[("你好", "你好，请问。")])
    assert len({plain, with_field, with_history}) == 3


def test_get_num_tokens_uses_the_real_tokenizer(tiny_chatglm: ChatGLM) -> None:
    text = "话说天下大势，分久必合，合久必分。"
    ids = tiny_chatglm.tokenizer.encode(text, add_special_tokens=False)
    assert tiny_chatglm.get_num_tokens(text) == len(ids)
    assert 1 < len(ids) < len(text.encode("utf-8"))


# ----- streaming ---------------------------------------------------------------------------


def test_stream_yields_several_chunks_and_invoke_equals_joined_stream(tiny_chatglm: ChatGLM) -> None:
    chunks = list(tiny_chatglm.stream(QUESTION))
    assert len(chunks) > 1
    assert tiny_chatglm.invoke(QUESTION) == "".join(chunks)


def test_first_chunk_arrives_while_generation_is_still_running(tiny_chatglm: ChatGLM) -> None:
    processor = forced(tiny_chatglm, "话说天下大势，分久必合，合久必分。", pause_at=6)
    stream = tiny_chatglm.stream(QUESTION, logits_processor=[processor])
    first = next(stream)
    assert first
    # Generation is parked at step 6 of 20+: the chunk came before it finished.
    assert processor.steps <= 6 and model_is_busy(tiny_chatglm.model)
    processor.resume.set()
    rest = "".join(stream)
    assert first + rest == "话说天下大势，分久必合，合久必分。"
    assert not model_is_busy(tiny_chatglm.model)


def test_callbacks_get_each_chunk_once_in_order(tiny_chatglm: ChatGLM) -> None:
    recorder = TokenRecorder()
    chunks = list(tiny_chatglm.stream(QUESTION, config={"callbacks": [recorder]}))
    assert recorder.tokens == chunks
    recorder.tokens.clear()
    answer = tiny_chatglm.invoke(QUESTION, config={"callbacks": [recorder]})
    assert recorder.tokens == chunks and "".join(recorder.tokens) == answer


def test_chinese_split_across_byte_tokens_never_streams_replacement_chars(tiny_chatglm: ChatGLM) -> None:
    """Guards against streaming half of a UTF-8 character (U+FFFD garbage) from byte-level tokens."""
    tokenizer = tiny_chatglm.tokenizer
    ids = tokenizer.encode(RARE_TEXT, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "test needs characters split into bytes"
    chunks = list(tiny_chatglm.stream(QUESTION, logits_processor=[forced(tiny_chatglm, RARE_TEXT)]))
    assert "".join(chunks) == RARE_TEXT
    assert len(chunks) > 3
    assert not any("\ufffd" in chunk for chunk in chunks)


def test_generation_stops_on_any_glm_eos_id(tiny_chatglm: ChatGLM) -> None:
    """GLM ends a turn with <|user|> or <|observation|>, not only <|endoftext|>."""
    tokenizer = tiny_chatglm.tokenizer
    ids = tokenizer.encode("刘备", add_special_tokens=False)
    ids += [tokenizer.convert_tokens_to_ids("<|user|>")] + tokenizer.encode("关羽张飞", add_special_tokens=False)
    processor = ForcedTokens(ids, eos_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    assert tiny_chatglm.invoke(QUESTION, logits_processor=[processor]) == "刘备"
    assert processor.steps == len(tokenizer.encode("刘备", add_special_tokens=False)) + 1


def test_empty_answer_is_one_empty_chunk(tiny_chatglm: ChatGLM) -> None:
    assert list(tiny_chatglm.stream(QUESTION, logits_processor=[forced(tiny_chatglm, "")])) == [""]
    assert tiny_chatglm.invoke(QUESTION, logits_processor=[forced(tiny_chatglm, "")]) == ""


def test_leading_newline_of_glm_answers_is_dropped(tiny_chatglm: ChatGLM) -> None:
    answer = tiny_chatglm.invoke(QUESTION, logits_processor=[forced(tiny_chatglm, "\n曹操，字孟德。\n")])
    assert answer == "曹操，字孟德。\n"


# ----- stop sequences ----------------------------------------------------------------------


@pytest.mark.parametrize("stop", [["。"], ["必合"], ["不会出现", "，分久"]])
def test_stop_sequence_cuts_output_and_ends_generation(tiny_chatglm: ChatGLM, stop: list[str]) -> None:
    text = "话说天下大势，分久必合，合久必分。周末七国分争，并入于秦。"
    processor = forced(tiny_chatglm, text)
    chunks = list(tiny_chatglm.stream(QUESTION, stop=stop, logits_processor=[processor]))
    cut = min(text.find(s) for s in stop if s in text)
    assert "".join(chunks) == text[:cut]
    # Generation ended right after the stop text instead of running through the whole text.
    total = len(tiny_chatglm.tokenizer.encode(text, add_special_tokens=False))
    assert processor.steps < total - 3
    assert tiny_chatglm.invoke(QUESTION, stop=stop, logits_processor=[forced(tiny_chatglm, text)]) == text[:cut]


# ----- cancellation and sharing ------------------------------------------------------------


def test_closing_the_stream_stops_generation_and_frees_the_model(tiny_chatglm: ChatGLM) -> None:
    processor = forced(tiny_chatglm, "话说天下大势，分久必合，合久必分。" * 20)
    stream = tiny_chatglm.stream(QUESTION, max_new_tokens=400, logits_processor=[processor])
    next(stream)
    started = time.monotonic()
    stream.close()  # what a UI Stop button does
    assert time.monotonic() - started < 2.0
    assert not model_is_busy(tiny_chatglm.model)  # generate has returned
    assert processor.steps < 50
    steps_at_close = processor.steps
    assert tiny_chatglm.invoke(QUESTION)  # the next call runs
    assert processor.steps == steps_at_close


def test_an_lcel_stream_closed_early_stops_generation_through_cancellable_stream(tiny_chatglm: ChatGLM) -> None:
    """Regression: closing ``prompt | llm | StrOutputParser()``'s stream after a few pieces left the
    model generating to ``max_new_tokens`` (LangChain's parser reads the rest of its input for
    tracing after a close). ``llm.cancellable_stream`` ends it within a token, and streams the same text."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate

    from llm import cancellable_stream

    text = "话说天下大势，分久必合，合久必分。" * 20
    processor = forced(tiny_chatglm, text)
    chain = PromptTemplate.from_template("{q}") | tiny_chatglm.bind(max_new_tokens=400,
                                                                    logits_processor=[processor]) | StrOutputParser()
    stream = cancellable_stream(chain, {"q": QUESTION})
    for _, _piece in zip(range(3), stream):
        pass
    stream.close()
    assert processor.steps < 10, "generation ran on after the stream was closed"
    assert not model_is_busy(tiny_chatglm.model)
    whole = forced(tiny_chatglm, text)
    chain = PromptTemplate.from_template("{q}") | tiny_chatglm.bind(max_new_tokens=400,
                                                                    logits_processor=[whole]) | StrOutputParser()
    assert "".join(cancellable_stream(chain, {"q": QUESTION})) == text


def test_two_threads_sharing_a_model_never_generate_at_once(tiny_chatglm: ChatGLM) -> None:
    other = ChatGLM(model=tiny_chatglm.model, tokenizer=tiny_chatglm.tokenizer, temperature=0.0)
    text = "话说天下大势，分久必合，合久必分。" * 3
    processors = [forced(tiny_chatglm, text), forced(tiny_chatglm, text)]
    results: list[str] = []

    def run(llm: ChatGLM, processor: ForcedTokens) -> None:
        results.append("".join(llm.stream(QUESTION, max_new_tokens=60, logits_processor=[processor])))

    threads = [
        threading.Thread(target=run, args=(llm, p)) for llm, p in zip([tiny_chatglm, other], processors)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [text, text]
    first, second = sorted(processors, key=lambda p: p.times[0])
    assert first.times[-1] < second.times[0], "the two generations overlapped"


# ----- batches -----------------------------------------------------------------------------


def test_batch_runs_as_one_generate_call_and_matches_one_by_one(
    tiny_chatglm: ChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [QUESTION, "刘备三顾茅庐请的是谁？", "赤壁"]
    singles = [tiny_chatglm.invoke(p) for p in prompts]
    calls: list[int] = []
    real_generate = tiny_chatglm.model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(tiny_chatglm.model, "generate", counting_generate)
    assert tiny_chatglm.batch(prompts) == singles
    assert calls == [3]


def test_batch_honours_stop_and_reports_each_result_to_callbacks(tiny_chatglm: ChatGLM) -> None:
    class EndRecorder(BaseCallbackHandler):
        def __init__(self) -> None:
            self.texts: list[str] = []

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            self.texts.append(response.generations[0][0].text)

    text = "话说天下大势，分久必合，合久必分。"
    recorder = EndRecorder()
    results = tiny_chatglm.batch(
        [QUESTION, "赤壁"],
        config={"callbacks": [recorder]},
        stop=["，合久"],
        logits_processor=[forced(tiny_chatglm, text)],
    )
    assert results == ["话说天下大势，分久必合"] * 2
    assert recorder.texts == results


# ----- async -------------------------------------------------------------------------------


def test_astream_matches_stream(tiny_chatglm: ChatGLM) -> None:
    async def collect() -> list[str]:
        return [chunk async for chunk in tiny_chatglm.astream(QUESTION)]

    chunks = asyncio.run(collect())
    assert chunks == list(tiny_chatglm.stream(QUESTION))
    assert asyncio.run(tiny_chatglm.ainvoke(QUESTION)) == "".join(chunks)


def test_closing_astream_stops_generation(tiny_chatglm: ChatGLM) -> None:
    processor = forced(tiny_chatglm, "话说天下大势，分久必合，合久必分。" * 20)

    async def first_then_close() -> str:
        stream = tiny_chatglm.astream(QUESTION, max_new_tokens=400, logits_processor=[processor])
        first = await stream.__anext__()
        await stream.aclose()
        return first

    assert asyncio.run(first_then_close())
    assert wait_until(lambda: not model_is_busy(tiny_chatglm.model), timeout=2.0)
    assert processor.steps < 50


def test_cancelling_an_astream_task_stops_generation(tiny_chatglm: ChatGLM) -> None:
    processor = forced(tiny_chatglm, "话说天下大势，分久必合，合久必分。" * 20, pause_at=5, pause_timeout=2.0)

    async def consume(seen: asyncio.Event) -> None:
        async for _ in tiny_chatglm.astream(QUESTION, max_new_tokens=400, logits_processor=[processor]):
            seen.set()

    async def main() -> None:
        seen = asyncio.Event()
        task = asyncio.create_task(consume(seen))
        await seen.wait()
        task.cancel()  # cancelled while waiting for the next chunk (generation is parked)
        await asyncio.sleep(0)  # the task handles the cancellation (sets the cancel event) ...
        processor.resume.set()  # ... before the parked generation may go on
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not model_is_busy(tiny_chatglm.model)

    asyncio.run(main())
    assert processor.steps <= 7


def test_a_cancel_scope_stops_a_batched_generate_within_a_token(tiny_chatglm: ChatGLM) -> None:
    """A batched generate (the summarizer's map step) has no stream a caller could close; the
    web UI's Stop reaches it through ``cancel_scope``. Outside the scope nothing changes."""
    text = "话说天下大势，分久必合，合久必分。" * 20
    processor = forced(tiny_chatglm, text, pause_at=5)
    with cancelled_when_parked(processor):
        texts = tiny_chatglm.batch([QUESTION, "刘备是谁？"], max_new_tokens=400, logits_processor=[processor])
    assert processor.steps <= 7, "generation ran on after the scope's event was set"
    assert len(texts) == 2 and all(text.startswith(t) and len(t) < 20 for t in texts)
    assert not model_is_busy(tiny_chatglm.model)
    # The scope is over: the same call runs to the end.
    full = tiny_chatglm.batch([QUESTION, "刘备是谁？"], max_new_tokens=400, logits_processor=[forced(tiny_chatglm, text)])
    assert full == [text, text]


def test_top_p_zero_is_greedy_not_refused(tiny_chatglm: ChatGLM) -> None:
    """Regression: ``top_p`` 0 (which OpenAI's API takes) was refused with a 400 / ValidationError;
    a nucleus of mass 0 holds only the likeliest token, so it decodes greedily whatever the temperature."""
    sampled = tiny_chatglm.model_copy(update={"temperature": 0.9, "top_p": 0.0})
    kwargs = sampled._generate_kwargs([QUESTION], {})
    assert kwargs["do_sample"] is False and kwargs["top_p"] is None
    greedy = tiny_chatglm.model_copy(update={"temperature": 0.0})
    assert sampled.invoke(QUESTION) == greedy.invoke(QUESTION)
