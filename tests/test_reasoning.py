"""A reasoning model's thinking (``<think>...</think>``) kept out of the answer and handed out beside it.

Regression: a GLM-Z1-style model (its chat template opens ``<think>`` in the generation prompt) answered
with its whole thinking and a ``</think>`` in front of the answer, in ``invoke``, streams, batches, the
chat face and the API's ``content``, so knowledge-base citations, summaries and the chat history carried it.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
from langchain_core.messages import HumanMessage

from llm.reasoning import ReasoningSplitter, Split, opens_reasoning, split_reasoning
from tests.fixtures.models import GLM_CHAT_TEMPLATE, ForcedTokens, forced_answer, forced_chatglm

# GLM_CHAT_TEMPLATE with the generation prompt opening the thinking block, as GLM-Z1's template does.
THINKING_TEMPLATE = GLM_CHAT_TEMPLATE.replace("<|assistant|>{% endif %}", "<|assistant|>\n<think>{% endif %}")
assert THINKING_TEMPLATE != GLM_CHAT_TEMPLATE

CASES = [  # (output, the prompt opened <think>, thinking, answer)
    ("<think>曹操在想。</think>\n\n曹操是魏王。", False, "曹操在想。", "曹操是魏王。"),
    ("想</think> \n", True, "想", ""),
    ("\n <think>想</think>答", False, "想", "答"),
    ("曹操在想。</think>曹操是魏王。", True, "曹操在想。", "曹操是魏王。"),
    ("曹操是魏王。<think>引用</think>", False, "", "曹操是魏王。<think>引用</think>"),
    ("<think>想到一半", False, "想到一半", ""),
    ("想到一半</thi", True, "想到一半</thi", ""),
    ("<thin", False, "", "<thin"),
    ("", True, "", ""),
    ("答案</think>", False, "", "答案</think>"),
]


@pytest.mark.parametrize(("text", "thinking", "reasoning", "answer"), CASES)
def test_every_way_of_streaming_a_text_splits_it_as_the_whole_text(text: str, thinking: bool, reasoning: str,
                                                                   answer: str) -> None:
    """Differential: pieces cut at every one or two places (tags split across pieces included) give what
    the whole text gives."""
    assert split_reasoning(text, thinking=thinking) == Split(reasoning, answer)
    cuts = [c for n in (1, 2) for c in itertools.combinations(range(1, len(text)), n)]
    for cut in [*cuts, tuple(range(1, len(text)))]:
        bounds = [0, *cut, len(text)]
        splitter = ReasoningSplitter(thinking=thinking)
        pieces = [splitter.feed(text[a:b]) for a, b in itertools.pairwise(bounds)] + [splitter.finish()]
        assert Split("".join(p.reasoning for p in pieces), "".join(p.answer for p in pieces)) == (reasoning, answer)


def test_a_prompt_opens_the_thinking_only_at_its_end() -> None:
    assert opens_reasoning("<|user|>\n问<|assistant|>\n<think>\n")
    assert not opens_reasoning("<|user|>\n问<|assistant|>\n<think></think>\n")
    assert not opens_reasoning("<|user|>\n<think>问<|assistant|>")


@pytest.fixture
def thinking_llm(tiny_chatglm: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(tiny_chatglm.tokenizer, "chat_template", THINKING_TEMPLATE)
    return tiny_chatglm


def test_a_thinking_template_answers_without_its_thinking(thinking_llm: Any) -> None:
    """invoke, stream, astream-free batch and the chat face: the answer alone; the thinking beside it."""
    from llm.chatglm_chat import ChatGLMChat

    forced = forced_answer(thinking_llm, "曹操在想。</think>\n\n曹操是魏王。")
    llm = forced_chatglm(thinking_llm, forced)
    assert llm.render_prompt("曹操是谁？").endswith("<think>")
    assert llm.invoke("曹操是谁？") == "曹操是魏王。"
    assert "".join(llm.stream("曹操是谁？")) == "曹操是魏王。"
    result = llm.generate(["曹操是谁？", "刘备是谁？"])
    assert [g[0].text for g in result.generations] == ["曹操是魏王。"] * 2
    assert [g[0].generation_info for g in result.generations] == [{"reasoning_content": "曹操在想。"}] * 2
    chat = ChatGLMChat(llm=llm)
    message = chat.invoke([HumanMessage("曹操是谁？")])
    assert message.content == "曹操是魏王。"
    assert message.additional_kwargs["reasoning_content"] == "曹操在想。"
    chunks = list(chat.stream([HumanMessage("曹操是谁？")]))
    assert "".join(c.content for c in chunks) == "曹操是魏王。"
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == "曹操在想。"
    first_answer = next(i for i, c in enumerate(chunks) if c.content)
    assert all(not c.additional_kwargs for c in chunks[first_answer:])  # thinking first, then the answer


THINKING_ANSWER = "<think>刘备曰：想。</think>刘备曰：好。"


def test_a_model_that_opens_its_own_thinking_and_stop_sequences_on_the_answer(tiny_chatglm: Any) -> None:
    """A model that writes ``<think>`` itself (Qwen3, R1 distillations); a stop sequence that also occurs in
    the thinking cuts the answer, not the thinking."""
    def llm() -> Any:  # a processor of its own per call: it counts steps from the first prompt it sees
        return forced_chatglm(tiny_chatglm, forced_answer(tiny_chatglm, THINKING_ANSWER))

    assert llm().invoke("问") == "刘备曰：好。"
    assert llm().invoke("问", stop=["曰："]) == "刘备"
    assert [g[0].text for g in llm().generate(["问", "再问"], stop=["曰："]).generations] == ["刘备"] * 2
    plain = forced_chatglm(tiny_chatglm, forced_answer(tiny_chatglm, "答：<think>不是思考</think>"))
    assert plain.invoke("问") == "答：<think>不是思考</think>"  # not at the start: the answer's own text


def test_think_tags_that_the_tokenizer_skips_as_special_tokens(sanguo_path: Any) -> None:
    """Where ``<think>``/``</think>`` are special tokens, decoding skips them; their text is put back, so the
    thinking is still told apart, streamed and batched."""
    from llm import ChatGLM
    from tests.fixtures.models import GLM_SPECIAL_TOKENS, build_glm_tokenizer, build_tiny_causal_lm

    tokenizer = build_glm_tokenizer(sanguo_path, special_tokens=[*GLM_SPECIAL_TOKENS, "<think>", "</think>"],
                                    chat_template=THINKING_TEMPLATE, train_chars=20_000)
    assert tokenizer.convert_tokens_to_ids("</think>") in tokenizer.all_special_ids
    model = build_tiny_causal_lm("glm", tokenizer, eos_tokens=["<|endoftext|>"])
    base = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=24)
    forced = forced_answer(base, "曹操在想。</think>曹操是魏王。")
    assert tokenizer.convert_tokens_to_ids("</think>") in forced.token_ids
    llm = forced_chatglm(base, forced)
    assert llm.invoke("曹操是谁？") == "曹操是魏王。"
    chunks = list(llm._stream("曹操是谁？"))
    assert "".join((c.generation_info or {}).get("reasoning_content", "") for c in chunks) == "曹操在想。"
    assert [g[0].text for g in llm.generate(["问", "再问"]).generations] == ["曹操是魏王。"] * 2


def test_the_api_and_the_openai_backend_carry_the_thinking_as_reasoning_content(
    thinking_llm: Any, tmp_path: Any, sanguo_path: Any
) -> None:
    """``/v1/chat/completions`` through the ``openai`` client: ``content`` is the answer alone, the thinking
    is ``reasoning_content`` and ``reasoning`` (the two names clients read), streamed first in the deltas; a
    knowledge-base answer (the chain on the LLM face) is the answer alone too, with its sources; and
    ``llm.backend: openai`` pointed at that API keeps the thinking where the local backend puts it."""
    import openai

    from app.services import Services
    from kb import KnowledgeBase
    from tests.test_api import KB, make_settings, running, scripted

    settings = make_settings(tmp_path)
    text = sanguo_path.read_text(encoding="utf-8")[:8000]
    KnowledgeBase.from_settings(settings, name=KB, create=True).add_texts({"sanguo.txt": text})
    llm = scripted(thinking_llm, answer="曹操在想。</think>\n\n曹操是魏王。")
    messages = [{"role": "user", "content": "曹操是谁？"}]
    with running(Services(settings, llm=llm)) as base:
        kb_answer = httpx.post(f"{base}/v1/kb/{KB}/chat/completions", timeout=60, json={"messages": messages}).json()
        kb_message = kb_answer["choices"][0]["message"]
        assert kb_message["content"] == "曹操是魏王。" and kb_answer["sources"]
        assert kb_message["reasoning_content"] == kb_message["reasoning"] == "曹操在想。"
        kb_client = openai.OpenAI(base_url=f"{base}/v1/kb/{KB}", api_key="none", max_retries=0)
        kb_stream = kb_client.chat.completions.create(model="glmkb-test", messages=messages, stream=True)
        kb_deltas = [c.choices[0].delta for c in kb_stream if c.choices]
        assert "".join(d.content or "" for d in kb_deltas) == "曹操是魏王。"
        assert "".join((d.model_extra or {}).get("reasoning") or "" for d in kb_deltas) == "曹操在想。"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        message = client.chat.completions.create(model="glmkb-test", messages=messages).choices[0].message
        assert message.content == "曹操是魏王。"
        assert message.model_extra == {"reasoning_content": "曹操在想。", "reasoning": "曹操在想。"}
        deltas = [c.choices[0].delta for c in client.chat.completions.create(
            model="glmkb-test", messages=messages, stream=True) if c.choices]
        assert "".join(d.content or "" for d in deltas) == "曹操是魏王。"
        thinking = [(d.model_extra or {}).get("reasoning_content") or "" for d in deltas]
        assert "".join(thinking) == "曹操在想。"
        assert thinking == [(d.model_extra or {}).get("reasoning") or "" for d in deltas]
        assert max(i for i, t in enumerate(thinking) if t) < min(i for i, d in enumerate(deltas) if d.content)
        from llm import OpenAICompatibleChat, load_llm
        from tests.test_openai_backend import client_settings

        remote = load_llm(client_settings(f"{base}/v1"))  # llm.backend: openai, streaming as users get it
        assert isinstance(remote, OpenAICompatibleChat)
        chunks = list(remote.stream("曹操是谁？"))
        assert "".join(c.content for c in chunks) == "曹操是魏王。"
        assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == "曹操在想。"
        whole = remote.model_copy(update={"streaming": False}).invoke("曹操是谁？")  # one chat.completion body
        assert whole.content == "曹操是魏王。"
        assert whole.additional_kwargs.get("reasoning_content") == "曹操在想。"


def test_the_openai_backend_moves_a_think_block_left_in_the_content() -> None:
    """A server without a reasoning parser (vLLM without ``--reasoning-parser``) leaves the block a model
    opened itself in ``content``: streamed (tags cut across chunks) or whole, it ends up beside the answer."""
    import json

    from llm import OpenAICompatibleChat

    pieces = ["<thi", "nk>想一", "想</thi", "nk>\n\n答", "案。"]

    def chunk(delta: dict[str, str], reason: str | None = None) -> str:
        event = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"

    def server(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("stream"):
            body = "".join(chunk({"content": p}) for p in pieces) + chunk({}, "stop") + "data: [DONE]\n\n"
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        message = {"role": "assistant", "content": "".join(pieces)}
        return httpx.Response(200, json={"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    chat = OpenAICompatibleChat(base_url="http://server/v1", model="m", api_key="k", max_retries=0,
                                http_client=httpx.Client(transport=httpx.MockTransport(server)))
    whole = chat.invoke("问")
    assert (whole.content, whole.additional_kwargs["reasoning_content"]) == ("答案。", "想一想")
    chunks = list(chat.stream("问"))
    assert "".join(c.content for c in chunks) == "答案。"
    assert "".join(c.additional_kwargs.get("reasoning_content", "") for c in chunks) == "想一想"


def test_a_knowledge_base_answer_streams_the_thinking_as_its_own_events(thinking_llm: Any, tmp_path: Any,
                                                                        sanguo_path: Any) -> None:
    """``stream_answer`` (and its async twin): ``Reasoning`` pieces before the answer's ``Token``s, none of
    them in the ``Answer``; the web UI shows them in a collapsible box above the answer."""
    import asyncio

    from app.web.chat import REASONING_TITLE, render_chat
    from chains import Answer, KnowledgeBaseQAChain, Reasoning, Token
    from configs import Settings
    from kb import KnowledgeBase

    settings = Settings(kb_root=tmp_path, embedding={"model": "none"}, retrieval={"mode": "bm25", "top_k": 2})
    kb = KnowledgeBase.from_settings(settings, name="k", create=True)
    kb.add_texts({"sanguo.txt": sanguo_path.read_text(encoding="utf-8")[:8000]})

    def chain() -> Any:  # a processor of its own per answer
        llm = forced_chatglm(thinking_llm, forced_answer(thinking_llm, "曹操在想。</think>\n\n曹操是魏王。"))
        return KnowledgeBaseQAChain.from_settings(kb.as_retriever(), llm, settings)

    async def collect() -> list[Any]:
        return [e async for e in chain().astream_answer("刘备是谁？")]

    for events in (list(chain().stream_answer("刘备是谁？")), asyncio.run(collect())):
        kinds = [type(e) for e in events if isinstance(e, (Reasoning, Token))]
        assert Reasoning in kinds and kinds.index(Token) > max(i for i, k in enumerate(kinds) if k is Reasoning)
        assert "".join(e.text for e in events if isinstance(e, Reasoning)) == "曹操在想。"
        assert next(e for e in events if isinstance(e, Answer)).text == "曹操是魏王。"
    turn = {"question": "刘备是谁？", "answer": "", "reasoning": "曹操在想。", "status": "streaming"}
    box = render_chat([turn])[1]
    assert box["content"] == "曹操在想。" and box["metadata"] == {"title": REASONING_TITLE, "status": "pending"}
    turn.update(answer="曹操是魏王。", status="done")
    assert [m["content"] for m in render_chat([turn])] == ["刘备是谁？", "曹操在想。", "曹操是魏王。"]
    assert render_chat([turn])[1]["metadata"]["status"] == "done"


def test_a_summary_streams_the_thinking_apart(thinking_llm: Any, sanguo_path: Any) -> None:
    """The map notes (batched) and the summary carry no thinking; the final reduce's streams as
    ``Reasoning`` before the summary's tokens."""
    from chains import Reasoning, Summary, Token
    from chains.summarize import documents_from_text, stream_summary
    from tests.test_book_qa_chain import ForcedPerCall

    tokenizer = thinking_llm.tokenizer
    ids = tokenizer.encode("想一想。</think>桃园结义。", add_special_tokens=False)
    forced = ForcedPerCall(ForcedTokens(ids, eos_id=tokenizer.eos_token_id))
    llm = forced_chatglm(thinking_llm, forced, max_new_tokens=24)
    docs = documents_from_text(sanguo_path.read_text(encoding="utf-8")[:6000], source="sanguo.txt")
    events = list(stream_summary(docs, llm=llm, max_input_tokens=1024))
    assert forced.generations >= 2  # map, then the streamed reduce
    assert "".join(e.text for e in events if isinstance(e, Reasoning)) == "想一想。"
    assert "".join(e.text for e in events if isinstance(e, Token)) == "桃园结义。"
    assert isinstance(events[-1], Summary) and events[-1].text == "桃园结义。"


def test_map_notes_are_written_without_thinking(thinking_llm: Any, sanguo_path: Any) -> None:
    """Bug: a summary's and a whole-book answer's map notes (and the collapse rounds that merge them) ran
    with a reasoning model's thinking on, which counted against each note's cap (a GLM-Z1 can spend all of
    it thinking and leave the note empty) and was thrown away. Their prompts now close the ``<think>`` block:
    the model's whole output is the note."""
    from chains import StreamLLMChain
    from chains.prompts import MAP_PROMPT
    from chains.stream_map_reduce_chain import collapse_summaries, drain, load_stream_summarize_chain, map_summaries
    from chains.summarize import documents_from_text
    from tests.test_book_qa_chain import ForcedPerCall

    ids = thinking_llm.tokenizer.encode("想一想。</think>桃园结义。", add_special_tokens=False)
    llm = forced_chatglm(thinking_llm, ForcedPerCall(ForcedTokens(ids, eos_id=thinking_llm.tokenizer.eos_token_id)),
                         max_new_tokens=24)
    docs = documents_from_text(sanguo_path.read_text(encoding="utf-8")[:6000], source="sanguo.txt")[:4]
    notes = drain(map_summaries(StreamLLMChain(llm=llm, prompt=MAP_PROMPT), docs, document_variable_name="text",
                                batch_size=2))
    assert [note.page_content for note in notes] == ["想一想。</think>桃园结义。"] * len(docs)

    reduce_chain = load_stream_summarize_chain(llm).reduce_documents_chain  # merged notes are notes too
    two_notes = reduce_chain.combine_documents_chain.prompt_length(notes[:2])
    assert len(notes) >= 3 and two_notes is not None
    merged = drain(collapse_summaries(reduce_chain, notes, token_max=two_notes + 1))  # two notes fit, all do not
    assert {note.page_content for note in merged} == {"想一想。</think>桃园结义。"}


def test_steps_turn_thinking_off_only_where_the_switch_is_safe() -> None:
    """``thinking_off``: a local model's switch always (its template reads it); an OpenAI-compatible
    server's only where ``llm.enable_thinking`` is set (a server may refuse ``chat_template_kwargs``, and
    steps that turn thinking off on their own must not break one that does); a model without the field
    is left alone."""
    from langchain_core.language_models import FakeListLLM

    from llm.openai_compatible_chat import OpenAICompatibleChat
    from llm.reasoning import thinking_off

    def remote(**fields: Any) -> OpenAICompatibleChat:
        return OpenAICompatibleChat(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", **fields)

    assert thinking_off(remote()) == {}
    assert thinking_off(remote(enable_thinking=True)) == thinking_off(remote(enable_thinking=False))
    assert thinking_off(remote(enable_thinking=True)) == {"enable_thinking": False}
    assert thinking_off(FakeListLLM(responses=["x"])) == {}


# A template that reads enable_thinking as Qwen3's and GLM-4.5's do: False renders an empty block.
SWITCH_TEMPLATE = GLM_CHAT_TEMPLATE.replace(
    "<|assistant|>{% endif %}",
    "<|assistant|>{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}"
    "{% endif %}",
)
assert SWITCH_TEMPLATE != GLM_CHAT_TEMPLATE


def test_thinking_turned_off_per_call_by_field_and_by_settings(thinking_llm: Any) -> None:
    """``enable_thinking=False``: a template that always opens ``<think>`` (GLM-Z1) gets it closed empty, so the
    whole output is the answer; a template that reads the variable renders its own no-thinking form; None
    (the default) leaves every template as it was."""
    from configs import Settings
    from llm import ChatGLM
    from llm.chatglm_chat import ChatGLMChat
    from llm.reasoning import close_reasoning

    assert close_reasoning("<|assistant|>\n<think>") == "<|assistant|>\n<think></think>\n"
    assert close_reasoning("<|assistant|>") == "<|assistant|>"
    from tests.test_book_qa_chain import ForcedPerCall

    forced = ForcedPerCall(forced_answer(thinking_llm, "曹操是魏王。"))
    llm = forced_chatglm(thinking_llm, forced)
    assert llm.render_prompt("问").endswith("<think>")
    assert not opens_reasoning(llm.render_prompt("问", enable_thinking=False))
    assert llm.invoke("曹操是谁？") == ""  # thinking all the way: no answer
    assert llm.invoke("曹操是谁？", enable_thinking=False) == "曹操是魏王。"
    off = forced_chatglm(thinking_llm, forced, enable_thinking=False)
    assert "".join(off.stream("曹操是谁？")) == "曹操是魏王。"
    assert [g[0].text for g in off.generate(["甲", "乙"]).generations] == ["曹操是魏王。"] * 2
    assert ChatGLMChat(llm=llm, enable_thinking=False).invoke([HumanMessage("问")]).content == "曹操是魏王。"
    assert ChatGLMChat(llm=llm).invoke([HumanMessage("问")], enable_thinking=False).content == "曹操是魏王。"
    assert Settings(llm={"enable_thinking": False}).llm.enable_thinking is False
    assert "enable_thinking" in ChatGLM.model_fields

    thinking_llm.tokenizer.chat_template = SWITCH_TEMPLATE
    assert llm.render_prompt("问").endswith("<|assistant|>")
    assert llm.render_prompt("问", enable_thinking=False).endswith("<|assistant|><think></think>")
    assert llm.render_prompt("问", enable_thinking=True).endswith("<|assistant|>")


def test_the_follow_up_rewrite_never_thinks(thinking_llm: Any, tmp_path: Any, sanguo_path: Any) -> None:
    """Regression: the condense step of a reasoning model spent its 128-token cap thinking, came back empty and
    retrieval searched the bare follow-up ("他为什么…") instead of the standalone question."""
    from langchain_core.messages import AIMessage

    from chains import KnowledgeBaseQAChain, Sources
    from chains.condense import cap_new_tokens
    from configs import Settings
    from kb import KnowledgeBase

    bound = cap_new_tokens(forced_chatglm(thinking_llm, forced_answer(thinking_llm, "x")), 64)
    assert bound.kwargs == {"max_new_tokens": 64, "enable_thinking": False}
    settings = Settings(kb_root=tmp_path, embedding={"model": "none"}, retrieval={"mode": "bm25", "top_k": 2})
    kb = KnowledgeBase.from_settings(settings, name="k", create=True)
    kb.add_texts({"sanguo.txt": sanguo_path.read_text(encoding="utf-8")[:8000]})
    llm = forced_chatglm(thinking_llm, forced_answer(thinking_llm, "张飞为什么鞭打督邮？"))
    chain = KnowledgeBaseQAChain.from_settings(kb.as_retriever(), llm, settings)
    history = [HumanMessage("张飞是谁？"), AIMessage("张飞是刘备的兄弟。")]
    events = chain.stream_answer("他为什么鞭打督邮？", history=history)
    sources = next(e for e in events if isinstance(e, Sources))
    assert sources.question == "张飞为什么鞭打督邮？"


def test_the_api_turns_thinking_off_with_chat_template_kwargs(thinking_llm: Any, tmp_path: Any, sanguo_path: Any) -> None:
    """vLLM's ``chat_template_kwargs: {"enable_thinking": false}``, on the chat and the knowledge-base routes:
    the prompt's ``<think>`` block is closed, so what the model writes is all answer (here the scripted text
    with its ``</think>``, which a thinking prompt would have split off); a non-boolean switch is a 400; the
    openai backend sends the switch where ``llm.enable_thinking`` is set, and only then."""
    from app.services import Services
    from kb import KnowledgeBase
    from tests.test_api import KB, make_settings, running, scripted

    settings = make_settings(tmp_path)
    KnowledgeBase.from_settings(settings, name=KB, create=True).add_texts(
        {"sanguo.txt": sanguo_path.read_text(encoding="utf-8")[:8000]})
    llm = scripted(thinking_llm, answer="曹操在想。</think>曹操是魏王。")
    body = {"messages": [{"role": "user", "content": "曹操是谁？"}], "chat_template_kwargs": {"enable_thinking": False}}
    with running(Services(settings, llm=llm)) as base:
        for route in ("/v1/chat/completions", f"/v1/kb/{KB}/chat/completions"):
            message = httpx.post(base + route, timeout=60, json=body).json()["choices"][0]["message"]
            assert message["content"] == "曹操在想。</think>曹操是魏王。" and not message.get("reasoning_content")
            on = {**body, "chat_template_kwargs": {"enable_thinking": None}}
            assert httpx.post(base + route, timeout=60, json=on).json()["choices"][0]["message"]["content"] == "曹操是魏王。"
        bad = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                         json={**body, "chat_template_kwargs": {"enable_thinking": "no"}})
        assert bad.status_code == 400 and "enable_thinking" in bad.json()["error"]["message"]
        from llm import load_llm
        from tests.test_openai_backend import client_settings

        remote = load_llm(client_settings(f"{base}/v1", enable_thinking=False))  # llm.backend: openai
        switch_off = {"chat_template_kwargs": {"enable_thinking": False}}
        assert remote._get_request_payload("曹操是谁？")["extra_body"] == switch_off
        assert remote.invoke("曹操是谁？").content == "曹操在想。</think>曹操是魏王。"
        unset = load_llm(client_settings(f"{base}/v1", generation={"repetition_penalty": 1.1}))
        assert unset._get_request_payload("曹操是谁？")["extra_body"] == {"repetition_penalty": 1.1}  # unset: never sent
        off = unset._get_request_payload("曹操是谁？", enable_thinking=False)["extra_body"]
        assert off == {"repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False}}
        assert unset.invoke("曹操是谁？", enable_thinking=False).content == "曹操在想。</think>曹操是魏王。"
        assert unset.invoke("曹操是谁？").content == "曹操是魏王。"


def test_the_web_uis_thinking_switch_reaches_an_openai_compatible_server(
    thinking_llm: Any, tmp_path: Any, sanguo_path: Any
) -> None:
    """Bug: with ``llm.backend: openai`` the web UI's 深度思考 box did nothing (the client had no
    ``enable_thinking`` to set, the switch lived in ``extra_body`` from the settings alone): unticked, the
    server still thought. Now the box's copy sends ``chat_template_kwargs.enable_thinking: false``."""
    from app.services import Services
    from app.web.chat import ChatHandlers
    from kb import KnowledgeBase
    from llm import load_llm
    from tests.test_api import KB, make_settings, running, scripted
    from tests.test_openai_backend import client_settings

    settings = make_settings(tmp_path)
    KnowledgeBase.from_settings(settings, name=KB, create=True).add_texts(
        {"sanguo.txt": sanguo_path.read_text(encoding="utf-8")[:8000]})
    with running(Services(settings, llm=scripted(thinking_llm, answer="曹操在想。</think>曹操是魏王。"))) as base:
        handlers = ChatHandlers(Services(settings, llm=load_llm(client_settings(f"{base}/v1"))))
        on = list(handlers.ask("曹操是谁？", [], KB, "bm25", 2, think=True))[-1][2][-1]
        off = list(handlers.ask("曹操是谁？", [], KB, "bm25", 2, think=False))[-1][2][-1]
    assert (on["reasoning"], on["answer"]) == ("曹操在想。", "曹操是魏王。")
    assert "reasoning" not in off and off["answer"] == "曹操在想。</think>曹操是魏王。"


def test_the_web_uis_thinking_switch(thinking_llm: Any, tmp_path: Any, sanguo_path: Any) -> None:
    """The chat tab's 深度思考 box: on, a GLM-Z1-style model's thinking goes to the collapsible box; off, the
    prompt closes the block and the model answers at once (its whole output is the answer), in both scopes'
    paths; the box starts as ``llm.enable_thinking`` says."""
    from app.services import Services
    from app.web.chat import ChatHandlers, ChatTab
    from configs import Settings
    from kb import KnowledgeBase
    from tests.test_book_qa_chain import ForcedPerCall

    settings = Settings(kb_root=tmp_path, embedding={"model": "none"}, retrieval={"mode": "bm25", "top_k": 2})
    KnowledgeBase.from_settings(settings, name="k", create=True).add_texts(
        {"sanguo.txt": sanguo_path.read_text(encoding="utf-8")[:8000]})
    llm = forced_chatglm(thinking_llm, ForcedPerCall(forced_answer(thinking_llm, "想。</think>曹操是魏王。")))
    handlers = ChatHandlers(Services(settings, llm=llm))
    on = list(handlers.ask("曹操是谁？", [], "k", "bm25", 2, think=True))[-1][2][-1]
    assert (on["reasoning"], on["answer"]) == ("想。", "曹操是魏王。")
    off = list(handlers.ask("曹操是谁？", [], "k", "bm25", 2, think=False))[-1][2][-1]
    assert "reasoning" not in off and off["answer"] == "想。</think>曹操是魏王。"
    book_on = list(handlers.ask("曹操做了哪些事？", [], "k", "bm25", 2, book=True, think=True))[-1][2][-1]
    book_off = list(handlers.ask("曹操做了哪些事？", [], "k", "bm25", 2, book=True, think=False))[-1][2][-1]
    assert book_on["reasoning"] == "想。" and "reasoning" not in book_off, (book_on, book_off)
    assert llm.enable_thinking is None  # the shared model is untouched: each answer had its own copy

    import gradio as gr

    for enable, value in ((None, True), (False, False)):
        tab = ChatTab(Services(Settings(kb_root=tmp_path, embedding={"model": "none"},
                                        llm={"enable_thinking": enable})))
        with gr.Blocks():
            tab.layout()
        assert tab.think.value is value
