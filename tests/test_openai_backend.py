"""``llm.backend: openai``: ``OpenAICompatibleChat`` against glmkb's own API server, over real HTTP.

The server runs the tiny GLM forced to say ``ANSWER`` (``tests.test_api.ScriptedChatGLM``);
the client is built exactly as users get it, by ``llm.factory.load_llm(settings)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import PromptTemplate

from app.services import Services
from chains import Answer, KnowledgeBaseQAChain, Sources, StreamLLMChain, Summary, Token
from chains.summarize import documents_from_text, stream_summary
from configs import Settings
from kb import KnowledgeBase
from llm import ChatGLM, LLMServerError, ModelLoadError, OpenAICompatibleChat, estimate_tokens, load_llm
from llm.factory import llm_configured
from tests.test_api import (
    ANSWER,
    KB,
    KEY,
    MODEL,
    ScriptedChatGLM,
    chat_text,
    collect_stream,
    free_port,
    make_settings,
    running,
    scripted,
    user,
)

KEY_ENV = "GLMKB_TEST_SERVER_KEY"  # not GLMKB_*-prefixed settings: conftest clears those
CORPUS_CHARS = 40_000


# ------------------------------------------------------------------------------ helpers


def client_settings(base_url: str, **llm: Any) -> Settings:
    """Settings for the openai backend pointed at ``base_url`` (key from ``$KEY_ENV``)."""
    fields: dict[str, Any] = {
        "backend": "openai",
        "base_url": base_url,
        "model": MODEL,
        "api_key_env": KEY_ENV,
        "request_timeout": 30,
        "max_input_tokens": 2048,
        **llm,
    }
    return Settings(embedding={"model": "none"}, llm=fields)


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        if token:
            self.tokens.append(token)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sanguo_text(sanguo_path: Path) -> str:
    return sanguo_path.read_text(encoding="utf-8")[:CORPUS_CHARS]


@pytest.fixture(scope="module")
def kb_root(tmp_path_factory: pytest.TempPathFactory, sanguo_text: str) -> Path:
    root = tmp_path_factory.mktemp("openai_kb_root")
    KnowledgeBase.from_settings(make_settings(root), name=KB, create=True).add_texts({"sanguo.txt": sanguo_text})
    return root


@pytest.fixture(scope="module")
def server_llm(tiny_chatglm: ChatGLM) -> ScriptedChatGLM:
    return scripted(tiny_chatglm)


@pytest.fixture(scope="module")
def base_url(kb_root: Path, server_llm: ScriptedChatGLM) -> Iterator[str]:
    """glmkb's API with the scripted tiny model, requiring the key ``KEY``."""
    with running(Services(make_settings(kb_root), llm=server_llm, api_key=KEY)) as url:
        yield f"{url}/v1"


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def chat(base_url: str, key_env: None) -> OpenAICompatibleChat:
    llm = load_llm(client_settings(base_url))
    assert isinstance(llm, OpenAICompatibleChat)
    return llm


# ------------------------------------------------------------------------------ the factory


def test_factory_builds_the_configured_backend(tiny_glm_dir: Path, key_env: None) -> None:
    local = Settings(llm={"model_path": str(tiny_glm_dir), "device": "cpu"})
    assert llm_configured(local) and isinstance(load_llm(local), ChatGLM)
    remote = client_settings("http://127.0.0.1:1/v1")
    assert llm_configured(remote)
    chat = load_llm(remote)
    assert isinstance(chat, OpenAICompatibleChat)
    assert (chat.model_name, chat.openai_api_base, chat.request_timeout) == (MODEL, "http://127.0.0.1:1/v1", 30)
    assert chat.openai_api_key.get_secret_value() == KEY
    assert chat.streaming and chat.stream_usage
    assert not llm_configured(Settings()) and not llm_configured(Settings(llm={"backend": "openai"}))


@pytest.mark.parametrize(
    ("llm", "fragment"),
    [
        ({"backend": "openai", "model": "glm-4"}, "llm.base_url is not set"),
        ({"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}, "llm.model is not set"),
        ({"backend": "local"}, "llm.model_path"),
    ],
)
def test_factory_says_which_setting_is_missing(llm: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ModelLoadError, match=fragment):
        load_llm(Settings(llm=llm))


def test_without_a_key_variable_a_placeholder_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    chat = load_llm(client_settings("http://127.0.0.1:1/v1"))
    assert chat.openai_api_key.get_secret_value() == "EMPTY"


# ------------------------------------------------------------------------------ token counting


def test_token_counts_need_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard: ChatOpenAI counts with tiktoken, whose first use downloads BPE files
    (fails offline, and counts GPT tokens); the chains' prompt budgets call get_num_tokens."""
    import tiktoken

    def no_tiktoken(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tiktoken must not be used")

    monkeypatch.setattr(tiktoken, "get_encoding", no_tiktoken)
    monkeypatch.setattr(tiktoken, "encoding_for_model", no_tiktoken)
    chat = load_llm(client_settings("http://127.0.0.1:1/v1"))
    assert chat.get_num_tokens("刘备字玄德。") == 6
    assert chat.get_num_tokens("hello world") == math.ceil(11 / 3)
    assert chat.get_num_tokens("") == 0
    from langchain_core.messages import HumanMessage, SystemMessage

    assert chat.get_num_tokens_from_messages([SystemMessage("你好"), HumanMessage("刘备")]) == 2 + 4 + 2 + 4


def test_the_estimate_counts_cjk_characters_and_grows_with_every_character(sanguo_text: str) -> None:
    """One token per CJK character (real GLM tokenizers need ~0.6-0.8), one per three other
    characters; prefix counts never shrink, which truncate_to_tokens' binary search needs."""
    text = sanguo_text[:3000]
    counts = [estimate_tokens(text[:n]) for n in range(0, 600)]
    assert counts == sorted(counts) and counts[-1] >= 0.9 * 599
    assert estimate_tokens("滚滚长江东逝水，浪花淘尽英雄。") == 15
    assert estimate_tokens("ＡＢＣ「あいう」한국") == 10
    assert estimate_tokens("GLM-4 9B chat") == 5
    assert estimate_tokens("刘备 said hi") == 2 + 3


def test_a_local_tokenizer_counts_exactly(tiny_glm_dir: Path, tiny_chatglm: ChatGLM, sanguo_text: str) -> None:
    chat = load_llm(client_settings("http://127.0.0.1:1/v1", model_path=str(tiny_glm_dir)))
    for text in (sanguo_text[:777], "hello 刘备", ""):
        assert chat.get_num_tokens(text) == tiny_chatglm.get_num_tokens(text)
    assert chat.get_token_ids("刘备") == tiny_chatglm.get_token_ids("刘备")


# ------------------------------------------------------------------------------ against the server


def test_stream_arrives_token_by_token(chat: OpenAICompatibleChat, server_llm: ScriptedChatGLM) -> None:
    chunks = list(chat.stream("刘备字什么？"))
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3 and "".join(texts) == ANSWER
    assert server_llm.prompts[-1] == server_llm.render_prompt("刘备字什么？")
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == len(server_llm.answer_ids()) + 1


def test_invoke_stop_sequences_and_generation_settings(base_url: str, key_env: None, server_llm: ScriptedChatGLM) -> None:
    chat = load_llm(client_settings(base_url))
    reply = chat.invoke("刘备字什么？", stop=["，"])
    assert reply.content == ANSWER.split("，")[0]
    assert reply.response_metadata["finish_reason"] == "stop"
    short = load_llm(client_settings(base_url, generation={"max_new_tokens": 3}))
    reply = short.invoke("刘备字什么？")
    assert reply.content == server_llm.tokenizer.decode(server_llm.answer_ids()[:3])
    assert reply.response_metadata["finish_reason"] == "length"


def test_system_prompt_setting_is_sent(base_url: str, key_env: None, server_llm: ScriptedChatGLM) -> None:
    chat = load_llm(client_settings(base_url, system_prompt="你是三国专家。"))
    assert chat.invoke("刘备是谁？").content == ANSWER
    assert server_llm.prompts[-1] == server_llm.render_prompt("刘备是谁？", system_prompt="你是三国专家。")


def test_async_stream(chat: OpenAICompatibleChat) -> None:
    async def collect() -> list[str]:
        return [c.text async for c in chat.astream("刘备字什么？") if c.text]

    texts = asyncio.run(collect())
    assert len(texts) >= 3 and "".join(texts) == ANSWER


def test_stream_llm_chain_streams_over_the_openai_backend(chat: OpenAICompatibleChat, server_llm: ScriptedChatGLM) -> None:
    chain = StreamLLMChain(llm=chat, prompt=PromptTemplate.from_template("用一句话介绍{name}。"))
    recorder = TokenRecorder()
    pieces = list(chain.stream_predict(name="刘备", callbacks=[recorder]))
    assert len(pieces) >= 3 and "".join(pieces) == ANSWER
    assert recorder.tokens == pieces
    assert server_llm.prompts[-1] == server_llm.render_prompt("用一句话介绍刘备。")
    assert chain.predict(name="关羽") == ANSWER


def test_knowledge_base_qa_over_the_openai_backend(
    chat: OpenAICompatibleChat, kb_root: Path, sanguo_text: str, server_llm: ScriptedChatGLM
) -> None:
    settings = make_settings(kb_root)
    kb = KnowledgeBase.from_settings(settings, name=KB)
    chain = KnowledgeBaseQAChain.from_settings(kb.as_retriever(k=2), chat, settings)
    events = list(chain.stream_answer("桃园结义的是哪三个人？"))
    assert isinstance(events[0], Sources) and isinstance(events[-1], Answer)
    tokens = [e.text for e in events if isinstance(e, Token)]
    assert len(tokens) >= 3 and "".join(tokens) == events[-1].text == ANSWER
    sources = events[-1].sources
    assert 1 <= len(sources) <= 2
    for source in sources:
        assert sanguo_text[source.start : source.end] == source.text
        assert source.text in server_llm.prompts[-1]


@pytest.mark.parametrize("counting", ["estimate", "tokenizer"])
def test_qa_prompt_budget_holds(
    base_url: str, key_env: None, kb_root: Path, server_llm: ScriptedChatGLM, tiny_glm_dir: Path, counting: str
) -> None:
    """Passages are cut so the prompt fits max_input_tokens as the client counts it; with
    llm.model_path pointing at the served model's tokenizer, that is the server's exact count."""
    extra = {"model_path": str(tiny_glm_dir)} if counting == "tokenizer" else {}
    chat = load_llm(client_settings(base_url, **extra))
    settings = make_settings(kb_root, llm={"max_input_tokens": 300})
    kb = KnowledgeBase.from_settings(settings, name=KB)
    chain = KnowledgeBaseQAChain.from_settings(kb.as_retriever(k=5), chat, settings)
    question = "刘备关羽张飞在哪里结义？"
    result = chain.invoke({"question": question})
    assert result["answer"] == ANSWER and result["source_documents"]
    assert result["source_documents"][-1].metadata.get("truncated")  # the budget did bite
    prompt = chain.render_prompt(result["source_documents"], question)
    assert server_llm.prompts[-1] == server_llm.render_prompt(prompt)
    assert 250 < chat.get_num_tokens(prompt) <= 300
    if counting == "tokenizer":
        assert server_llm.get_num_tokens(prompt) == chat.get_num_tokens(prompt)


def test_summarizer_over_the_openai_backend(chat: OpenAICompatibleChat, sanguo_text: str) -> None:
    docs = documents_from_text(sanguo_text[:6000], source="sanguo.txt", chapters="1-2")
    events = list(stream_summary(docs, llm=chat, max_input_tokens=1024))
    tokens = [e.text for e in events if isinstance(e, Token)]
    summary = events[-1]
    assert isinstance(summary, Summary) and summary.text == ANSWER == "".join(tokens)
    assert len(tokens) >= 3 and summary.intermediate and all(s == ANSWER for s in summary.intermediate)


def test_glmkb_api_can_front_another_openai_compatible_server(base_url: str, key_env: None, kb_root: Path) -> None:
    """glmkb-api with llm.backend openai: chat completions pass through a LangChain chat model."""
    front = Services(make_settings(kb_root), llm=load_llm(client_settings(base_url)))
    with running(front) as url, httpx.Client(base_url=url, timeout=60) as c:
        events = collect_stream(c, "/v1/chat/completions", {"messages": user("刘备字什么？"), "stop": "汉景帝"})
        assert chat_text(events) == ANSWER.split("汉景帝")[0]
        assert len([e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]) >= 3
        body = c.post("/v1/chat/completions", json={"messages": user("刘备字什么？")}).json()
        assert body["choices"][0]["message"]["content"] == ANSWER
        assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 0
        kb_answer = c.post(f"/v1/kb/{KB}/chat/completions", json={"messages": user("桃园结义的是谁？")}).json()
        assert kb_answer["choices"][0]["message"]["content"] == ANSWER and kb_answer["sources"]


# ------------------------------------------------------------------------------ errors


def assert_one_line(error: BaseException, *fragments: str) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("call", ["invoke", "stream"])
def test_server_down_is_one_clear_line_naming_base_url(key_env: None, call: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    chat = load_llm(client_settings(url))
    started = time.monotonic()
    with pytest.raises(LLMServerError) as info:
        chat.invoke("你好") if call == "invoke" else list(chat.stream("你好"))
    assert_one_line(info.value, f"cannot reach the model server at {url}", "Connection refused", "llm.base_url")
    assert time.monotonic() - started < 15


def test_server_down_in_a_chain_reaches_the_caller_clearly(key_env: None, kb_root: Path) -> None:
    settings = make_settings(kb_root)
    chat = load_llm(client_settings(f"http://127.0.0.1:{free_port()}/v1"))
    chain = KnowledgeBaseQAChain.from_settings(KnowledgeBase.from_settings(settings, name=KB).as_retriever(), chat, settings)
    with pytest.raises(LLMServerError, match="cannot reach the model server"):
        list(chain.stream_answer("刘备是谁？"))


@pytest.mark.parametrize("key", ["wrong-key", None])
def test_a_rejected_key_says_which_variable_to_set(base_url: str, monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)
    chat = load_llm(client_settings(base_url))
    for call in (lambda: chat.invoke("你好"), lambda: list(chat.stream("你好"))):
        with pytest.raises(LLMServerError) as info:
            call()
        message = assert_one_line(info.value, "rejected the API key", "HTTP 401", KEY_ENV, "llm.api_key_env")
        assert KEY not in message


def test_a_slow_server_times_out_with_the_setting_to_raise(key_env: None) -> None:
    with silent_server() as url:
        chat = load_llm(client_settings(url, request_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(LLMServerError) as info:
            list(chat.stream("你好"))
        elapsed = time.monotonic() - started
    assert_one_line(info.value, url, "did not answer within 0.5 s", "llm.request_timeout")
    assert elapsed < 10


def test_an_unknown_model_and_a_rejected_request_say_why(base_url: str, key_env: None) -> None:
    with pytest.raises(LLMServerError) as info:
        load_llm(client_settings(base_url, model="gpt-4o")).invoke("你好")
    assert_one_line(info.value, "HTTP 404", "'gpt-4o'", "llm.model", f"{base_url}/models")
    chat = load_llm(client_settings(base_url))
    with pytest.raises(LLMServerError) as info:
        chat.invoke("你好", stop=[str(i) for i in range(20)])
    assert_one_line(info.value, "HTTP 400", "at most 16 stop sequences")


def test_glmkb_api_in_front_of_a_server_that_is_down_says_so(key_env: None, kb_root: Path) -> None:
    upstream = f"http://127.0.0.1:{free_port()}/v1"
    front = Services(make_settings(kb_root), llm=load_llm(client_settings(upstream)))
    with running(front) as url, httpx.Client(base_url=url, timeout=60) as c:
        response = c.post("/v1/chat/completions", json={"messages": user("你好")})
        assert response.status_code == 502
        assert f"cannot reach the model server at {upstream}" in response.json()["error"]["message"]
        events = collect_stream(c, "/v1/chat/completions", {"messages": user("你好")})
        assert events[-1] == "[DONE]" and "error" in events[-2]
        assert f"cannot reach the model server at {upstream}" in events[-2]["error"]["message"]
