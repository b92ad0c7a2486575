"""glmkb's OpenAI-compatible API server, over real HTTP against uvicorn on 127.0.0.1.

The chat model is the tiny GLM of ``tests.fixtures.models``; ``ScriptedChatGLM`` makes it say
a known answer (``ForcedTokens``) and records the exact prompt the model received, so the
tests can check text, chunks, stop sequences, token counts and prompts exactly.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import Field

from app.api import command as api_command
from app.auth import AuthConfigError, resolve_api_key
from app.services import Services
from configs import Settings
from configs.settings import APISettings
from kb import KnowledgeBase
from llm import ChatGLM
from llm.streaming import model_is_busy
from tests.fixtures.models import ForcedTokens
from tests.helpers import api_server, clean_env, free_port, http_ok, wait_until

REPO = Path(__file__).resolve().parent.parent
CORPUS_CHARS = 40_000  # chapters 1-5 of 三国演义
KB = "sanguo"
DENSE_KB = "sanguo_dense"
ANSWER = "刘备字玄德，涿郡涿县人，汉景帝阁下玄孙。"
MODEL = "glmkb-test"
KEY = "test-key-2b7f"


# ------------------------------------------------------------------------------ helpers


class ScriptedChatGLM(ChatGLM):
    """The tiny ChatGLM forced to say ``answer`` (then eos); records each prompt it was given.

    ``processor`` (when set) is used instead of a fresh ``ForcedTokens``, so a test can pause
    or inspect the generation in flight.
    """

    answer: str = ANSWER
    processor: Any = Field(default=None, exclude=True)
    prompts: list[str] = Field(default_factory=list, exclude=True)

    def forced(self) -> ForcedTokens:
        return ForcedTokens(self.answer_ids(), eos_id=self.tokenizer.eos_token_id)

    def answer_ids(self) -> list[int]:
        return self.tokenizer.encode(self.answer, add_special_tokens=False)

    def _generate_kwargs(self, prompts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        out = super()._generate_kwargs(prompts, kwargs)
        self.prompts.append(self.tokenizer.decode(out["input_ids"][0]))
        out["logits_processor"] = [self.processor or self.forced()]
        return out


def scripted(tiny_chatglm: ChatGLM, **fields: Any) -> ScriptedChatGLM:
    fields.setdefault("max_new_tokens", 64)
    return ScriptedChatGLM(model=tiny_chatglm.model, tokenizer=tiny_chatglm.tokenizer, temperature=0.0, **fields)


running = api_server  # serve an Services on a free loopback port; yields the base URL


def make_settings(kb_root: Path, **sections: Any) -> Settings:
    """Settings built directly: keyword-only retrieval defaults, the tiny model's context."""
    base: dict[str, Any] = {
        "kb_root": kb_root,
        "kb_name": KB,
        "embedding": {"model": "none"},
        "retrieval": {"mode": "bm25", "top_k": 3},
        "llm": {"max_input_tokens": 2048},
        "api": {"served_model_name": MODEL},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return Settings(**base)


def sse_events(response: httpx.Response) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream, checking the framing on the way."""
    buffer = ""
    for text in response.iter_text():
        buffer += text
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            assert event.startswith("data: "), event
            yield event[len("data: ") :]
    assert buffer == ""


def collect_stream(client: httpx.Client, path: str, body: dict[str, Any], **kwargs: Any) -> list[dict[str, Any] | str]:
    """POST a streaming request; the decoded events, with ``"[DONE]"`` as the string."""
    with client.stream("POST", path, json={**body, "stream": True}, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [e if e == "[DONE]" else json.loads(e) for e in sse_events(response)]


def chat_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict) and e["choices"])


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assert_openai_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sanguo_text(sanguo_path: Path) -> str:
    return sanguo_path.read_text(encoding="utf-8")[:CORPUS_CHARS]


@pytest.fixture(scope="module")
def kb_root(tmp_path_factory: pytest.TempPathFactory, sanguo_text: str, tiny_embedding_path: Path) -> Path:
    """A keyword-only KB ``sanguo`` (chapters 1-5) and a dense one ``sanguo_dense`` (chapter 1-2)."""
    root = tmp_path_factory.mktemp("api_kb_root")
    settings = make_settings(root)
    KnowledgeBase.from_settings(settings, name=KB, create=True).add_texts({"sanguo.txt": sanguo_text})
    dense = KnowledgeBase.from_settings(settings, name=DENSE_KB, create=True, embedding_model=str(tiny_embedding_path))
    dense.add_texts({"sanguo_head.txt": sanguo_text[:8000]})
    return root


@pytest.fixture(scope="module")
def llm(tiny_chatglm: ChatGLM) -> ScriptedChatGLM:
    return scripted(tiny_chatglm)


@pytest.fixture(scope="module")
def settings(kb_root: Path, tiny_embedding_path: Path) -> Settings:
    return make_settings(kb_root, embedding={"model": str(tiny_embedding_path)})


@pytest.fixture(scope="module")
def url(settings: Settings, llm: ScriptedChatGLM) -> Iterator[str]:
    with running(Services(settings, llm=llm)) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


# ------------------------------------------------------------------------------ models


def test_models_lists_the_served_chat_model_and_the_embedding_model(client: httpx.Client, tiny_embedding_path: Path) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids == [MODEL, str(tiny_embedding_path.resolve())]
    assert all(m["object"] == "model" for m in body["data"])


# ------------------------------------------------------------------------------ chat completions


def test_chat_completion_returns_the_answer_with_real_token_usage(client: httpx.Client, llm: ScriptedChatGLM) -> None:
    response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": user("刘备字什么？")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-")
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": ANSWER}
    assert choice["finish_reason"] == "stop"
    prompt = llm.render_prompt("刘备字什么？")
    assert llm.prompts[-1] == prompt
    prompt_tokens = len(llm.tokenizer.encode(prompt, add_special_tokens=False))
    completion_tokens = len(llm.answer_ids()) + 1  # the answer, then eos
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def test_streaming_sends_chunks_token_by_token_and_ends_with_done(client: httpx.Client, llm: ScriptedChatGLM) -> None:
    events = collect_stream(client, "/v1/chat/completions", {"model": MODEL, "messages": user("刘备字什么？")})
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(content) >= len(llm.answer_ids()) // 2 >= 3  # several pieces, not one blob
    assert "".join(content) == ANSWER
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}
    assert "usage" not in chunks[-1]


def test_stream_options_include_usage_adds_a_final_usage_chunk(client: httpx.Client, llm: ScriptedChatGLM) -> None:
    events = collect_stream(
        client,
        "/v1/chat/completions",
        {"messages": user("你好"), "stream_options": {"include_usage": True}},
    )
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert last["choices"] == []
    prompt_tokens = len(llm.tokenizer.encode(llm.render_prompt("你好"), add_special_tokens=False))
    assert last["usage"]["prompt_tokens"] == prompt_tokens
    assert last["usage"]["completion_tokens"] == len(llm.answer_ids()) + 1
    assert all(e["usage"] is None for e in events[:-2])


@pytest.mark.parametrize("stop", ["，", ["汉景帝", "，"], ["不会出现"]])
@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_cut_the_answer(client: httpx.Client, stop: str | list[str], stream: bool) -> None:
    stops = [stop] if isinstance(stop, str) else stop
    cuts = [ANSWER.find(s) for s in stops if s in ANSWER]
    expected = ANSWER[: min(cuts)] if cuts else ANSWER
    body = {"messages": user("刘备字什么？"), "stop": stop}
    if stream:
        events = collect_stream(client, "/v1/chat/completions", body)
        text, finish = chat_text(events), events[-2]["choices"][0]["finish_reason"]
    else:
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
    assert text == expected
    assert finish == "stop"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_ends_with_finish_reason_length(client: httpx.Client, llm: ScriptedChatGLM, field: str) -> None:
    body = client.post("/v1/chat/completions", json={"messages": user("你好"), field: 3}).json()
    ids = llm.answer_ids()[:3]
    assert body["choices"][0]["message"]["content"] == llm.tokenizer.decode(ids)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_system_prompt_and_history_reach_the_model_in_order(client: httpx.Client, llm: ScriptedChatGLM) -> None:
    messages = [
        {"role": "system", "content": "你是三国专家。"},
        {"role": "user", "content": "刘备是谁？"},
        {"role": "assistant", "content": "蜀汉的开国皇帝。"},
        {"role": "user", "content": [{"type": "text", "text": "他的字"}, {"type": "text", "text": "是什么？"}]},
    ]
    assert client.post("/v1/chat/completions", json={"messages": messages}).status_code == 200
    assert llm.prompts[-1] == (
        "[gMASK]<sop><|system|>\n你是三国专家。<|user|>\n刘备是谁？<|assistant|>\n蜀汉的开国皇帝。"
        "<|user|>\n他的字是什么？<|assistant|>"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "messages: Field required"),
        ({"messages": []}, "messages"),
        ({"messages": user("hi"), "temperature": 3}, "temperature"),
        ({"messages": user("hi"), "temperature": "hot"}, "temperature"),
        ({"messages": user("hi"), "top_p": -0.1}, "top_p"),
        ({"messages": user("hi"), "top_p": 1.5}, "top_p"),
        ({"messages": user("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": user("hi"), "n": 2}, "only n=1"),
        ({"messages": user("hi"), "stop": [""]}, "stop"),
        ({"messages": user("hi"), "stop": [str(i) for i in range(20)]}, "at most 16 stop sequences"),
        ({"messages": user("hi"), "tools": [{"type": "function"}]}, "tool calling is not supported"),
        ({"messages": user("hi"), "response_format": {"type": "json_object"}}, "text response format"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "must have role 'user'"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "must have role 'user'"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "only text"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "needs a string 'text'"),
        ({"messages": "hello"}, "messages"),
    ],
)
def test_bad_requests_get_a_400_in_openai_error_shape(client: httpx.Client, body: dict[str, Any], fragment: str) -> None:
    error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400, fragment)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"{not json", "the request body is not valid JSON"), (b"[]", "must be a JSON object"), (b"", "must be a JSON object")],
)
def test_malformed_bodies_are_a_400(client: httpx.Client, content: bytes, fragment: str) -> None:
    response = client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert assert_openai_error(response, 400, fragment)["param"] is None


def test_unknown_model_is_a_404(client: httpx.Client) -> None:
    error = assert_openai_error(
        client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": user("hi")}), 404, "'gpt-4o'", MODEL
    )
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_unknown_paths_and_methods_answer_json(client: httpx.Client) -> None:
    assert_openai_error(client.get("/v1/nothing-here"), 404, "/v1/nothing-here")
    assert_openai_error(client.get("/v1/chat/completions"), 405, "GET /v1/chat/completions")


def test_prompt_longer_than_the_context_is_a_400(client: httpx.Client, sanguo_text: str) -> None:
    """The tiny model has 4096 positions; generating past them would crash inside the model."""
    error = assert_openai_error(
        client.post("/v1/chat/completions", json={"messages": user(sanguo_text[:12000])}), 400, "4096"
    )
    assert error["code"] == "context_length_exceeded"
    response = client.post("/v1/chat/completions", json={"messages": user(sanguo_text[:1500]), "max_tokens": 4000})
    assert_openai_error(response, 400, "lower max_tokens")


def test_concurrent_streams_do_not_block_the_server_and_each_get_their_answer(
    settings: Settings, tiny_chatglm: ChatGLM
) -> None:
    """While one generation is paused (holding the model) and a second stream waits for the
    model, the event loop still answers other requests at once; then both streams finish. The
    second gets a processor of its own: sharing the first's (one step count for both) let it join
    the first's batch when that ran long enough to yield (a loaded machine) and say the end of the
    answer only."""
    paused = scripted(tiny_chatglm)
    processor = ForcedTokens(paused.answer_ids(), eos_id=paused.tokenizer.eos_token_id, pause_at=2, pause_timeout=30)
    paused.processor = processor
    results: dict[str, str] = {}

    with running(Services(settings, llm=paused)) as base:

        def ask(name: str) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                results[name] = chat_text(collect_stream(c, "/v1/chat/completions", {"messages": user(name)}))

        first = threading.Thread(target=ask, args=("第一",))
        first.start()
        # Wait until it is parked at step 2, holding the model (``steps`` reaches 2 one step
        # earlier: clearing pause_at then let the first generation run through, a flaky race).
        assert processor.parked.wait(30)
        processor.pause_at = None  # only the first generation pauses
        paused.processor = None  # the second's own ForcedTokens
        second = threading.Thread(target=ask, args=("第二",))
        second.start()
        with httpx.Client(base_url=base, timeout=5) as c:
            started = time.monotonic()
            assert c.get("/health").json() == {"status": "ok"}
            assert c.get("/v1/models").status_code == 200
            assert c.get("/v1/kb").status_code == 200
            assert time.monotonic() - started < 3
        assert model_is_busy(paused.model) and first.is_alive() and second.is_alive()
        processor.resume.set()
        first.join(60)
        second.join(60)
    assert results == {"第一": ANSWER, "第二": ANSWER}


@pytest.mark.parametrize("path", ["/v1/chat/completions", f"/v1/kb/{KB}/chat/completions"])
def test_client_disconnect_stops_generation(settings: Settings, tiny_chatglm: ChatGLM, path: str) -> None:
    """Regression guard: a client that goes away mid-stream must not leave the model generating
    (3000 forced tokens would hold it for many seconds)."""
    long_answer = scripted(tiny_chatglm, answer="刘备关羽张飞" * 1500, max_new_tokens=3000)
    processor = long_answer.forced()
    long_answer.processor = processor
    with running(Services(settings, llm=long_answer)) as base:
        with httpx.Client(base_url=base, timeout=60) as c:
            with c.stream("POST", path, json={"messages": user("桃园结义讲个长故事"), "stream": True}) as r:
                events = sse_events(r)
                for _ in range(5):
                    next(events)
        # The connection is closed; generation stops within a token or so.
        assert wait_until(lambda: not model_is_busy(long_answer.model), timeout=10)
        steps = processor.steps
        time.sleep(0.3)
        assert processor.steps == steps < 500


# ------------------------------------------------------------------------------ auth


@pytest.fixture(scope="module")
def auth_url(settings: Settings, llm: ScriptedChatGLM) -> Iterator[str]:
    with running(Services(settings, llm=llm, api_key=KEY)) as base:
        yield base


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}],
)
def test_a_key_is_required_when_configured(auth_url: str, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=auth_url, timeout=30, headers=headers) as c:
        for response in (
            c.get("/v1/models"),
            c.post("/v1/chat/completions", json={"messages": user("hi")}),
            c.get("/v1/kb"),
            c.post(f"/v1/kb/{KB}/query", json={"query": "刘备"}),
        ):
            error = assert_openai_error(response, 401, "API key")
            assert error["code"] == "invalid_api_key" and KEY not in response.text


def test_the_right_key_is_accepted_and_health_needs_none(auth_url: str) -> None:
    with httpx.Client(base_url=auth_url, timeout=30) as c:
        assert c.get("/health").status_code == 200
        ok = c.post("/v1/chat/completions", json={"messages": user("hi")}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == ANSWER


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_serves_without_a_key(host: str) -> None:
    assert resolve_api_key(APISettings(host=host), environ={}) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.2", "my-server"])
def test_other_hosts_need_a_key_or_an_explicit_opt_out(host: str) -> None:
    with pytest.raises(AuthConfigError, match=f"refusing to serve on {host} without an API key"):
        resolve_api_key(APISettings(host=host), environ={})
    assert resolve_api_key(APISettings(host=host, allow_no_auth=True), environ={}) is None
    assert resolve_api_key(APISettings(host=host), environ={"GLMKB_API_KEY": "k"}) == "k"
    assert resolve_api_key(APISettings(host=host, api_key_env="MY_KEY"), environ={"MY_KEY": "s"}) == "s"


def test_refusing_to_start_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env()
    env["GLMKB_KB_ROOT"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "app.api", "--host", "0.0.0.0", "--port", str(port), "--model-path", "/no/such/model"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("glmkb-api: error: refusing to serve on 0.0.0.0 without an API key")
    assert "GLMKB_API_KEY" in lines[0] and "--allow-no-auth" in lines[0]


def test_the_model_is_loaded_once_for_concurrent_first_requests(settings: Settings, tiny_chatglm: ChatGLM) -> None:
    calls: list[float] = []

    def factory() -> ScriptedChatGLM:
        calls.append(time.monotonic())
        time.sleep(0.5)  # a slow load: the other requests arrive meanwhile
        return scripted(tiny_chatglm)

    with running(Services(settings, llm_factory=factory)) as base:

        def ask() -> int:
            with httpx.Client(base_url=base, timeout=60) as c:
                return c.post("/v1/chat/completions", json={"messages": user("你好")}).status_code

        threads = [threading.Thread(target=lambda: statuses.append(ask())) for _ in range(3)]
        statuses: list[int] = []
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert statuses == [200, 200, 200] and len(calls) == 1


@pytest.mark.slow
def test_the_command_line_entry_point_serves_and_stops_cleanly(tiny_glm_dir: Path, tmp_path: Path) -> None:
    """``python -m app.api`` with flags: loads the model, answers, exits 0 on Ctrl-C."""
    import signal

    port = free_port()
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.api", "--port", str(port), "--model-path", str(tiny_glm_dir), "--device", "cpu",
         "--kb-root", str(tmp_path), "--embedding", "none", "--served-model-name", "tiny"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: http_ok(f"{base}/health"), timeout=90), proc.stderr.read() if proc.poll() is not None else "not up"
        body = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "tiny", "messages": user("你好"), "max_tokens": 4, "temperature": 0},
            timeout=60,
        ).json()
        assert body["usage"]["completion_tokens"] <= 4 and body["choices"][0]["finish_reason"] in ("stop", "length")
        assert httpx.get(f"{base}/v1/kb", timeout=10).json() == {"object": "list", "data": []}
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"glmkb-api: serving http://127.0.0.1:{port}/v1 (model 'tiny', API key off)" in err
    assert "Traceback" not in err


def test_cli_flags_override_settings(tmp_path: Path) -> None:
    s = api_command.settings_from_argv(
        ["--host", "0.0.0.0", "--port", "9001", "--model-path", "/m", "--kb-root", str(tmp_path),
         "--device", "cpu", "--served-model-name", "glm-4", "--allow-no-auth", "--embedding", "none"]
    )
    assert (s.api.host, s.api.port, s.api.served_model_name, s.api.allow_no_auth) == ("0.0.0.0", 9001, "glm-4", True)
    assert (s.llm.model_path, s.llm.device, s.kb_root, s.embedding.model) == ("/m", "cpu", tmp_path, "none")
    defaults = api_command.settings_from_argv([])
    assert (defaults.api.host, defaults.api.port, defaults.api.allow_no_auth) == ("127.0.0.1", 8000, False)


# ------------------------------------------------------------------------------ without a model


@pytest.fixture(scope="module")
def no_llm_url(kb_root: Path) -> Iterator[str]:
    with running(Services(make_settings(kb_root))) as base:
        yield base


def test_without_a_model_chat_is_503_with_how_to_configure(no_llm_url: str) -> None:
    with httpx.Client(base_url=no_llm_url, timeout=30) as c:
        for path in ("/v1/chat/completions", f"/v1/kb/{KB}/chat/completions"):
            for stream in (False, True):
                response = c.post(path, json={"messages": user("刘备"), "stream": stream})
                error = assert_openai_error(response, 503, "--model-path", "llm.backend: openai")
                assert error["type"] == "server_error"
        assert c.get("/v1/models").json()["data"] == []


def test_without_a_model_knowledge_base_queries_still_work(no_llm_url: str) -> None:
    with httpx.Client(base_url=no_llm_url, timeout=30) as c:
        hits = c.post(f"/v1/kb/{KB}/query", json={"query": "桃园结义"}).json()["data"]
    assert hits and all(h["source"] == "sanguo.txt" for h in hits)


def test_without_an_embedding_model_embeddings_are_503(no_llm_url: str) -> None:
    with httpx.Client(base_url=no_llm_url, timeout=30) as c:
        assert_openai_error(c.post("/v1/embeddings", json={"input": "刘备"}), 503, "--embedding")


def test_a_model_that_fails_to_load_answers_503_with_the_reason(kb_root: Path) -> None:
    settings = make_settings(kb_root, llm={"model_path": str(kb_root / "no-such-model")})
    with running(Services.from_settings(settings)) as base, httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(2):  # the failure is remembered, not retried on every request
            response = c.post("/v1/chat/completions", json={"messages": user("hi")})
            assert_openai_error(response, 503, "failed to load", "no-such-model")


# ------------------------------------------------------------------------------ embeddings


def test_embeddings_of_a_string_and_a_list(client: httpx.Client, tiny_embedding_path: Path) -> None:
    from kb.embedding import load_embeddings

    reference = load_embeddings(str(tiny_embedding_path), device="cpu")
    texts = ["刘备", "关羽字云长"]
    one = client.post("/v1/embeddings", json={"input": texts[0], "model": str(tiny_embedding_path)}).json()
    assert one["object"] == "list" and one["model"] == str(tiny_embedding_path)
    assert len(one["data"]) == 1 and one["data"][0]["index"] == 0
    assert np.allclose(one["data"][0]["embedding"], reference.embed_query(texts[0]), atol=1e-5)
    many = client.post("/v1/embeddings", json={"input": texts}).json()
    vectors = [d["embedding"] for d in many["data"]]
    assert [d["index"] for d in many["data"]] == [0, 1] and len(vectors[0]) == 32
    assert np.allclose(vectors, reference.embed_documents(texts), atol=1e-5)
    assert many["usage"]["prompt_tokens"] == 2 + 5 and many["usage"]["total_tokens"] == 7  # one token per character


def test_embeddings_in_base64_match_the_floats(client: httpx.Client) -> None:
    floats = client.post("/v1/embeddings", json={"input": "张飞"}).json()["data"][0]["embedding"]
    encoded = client.post("/v1/embeddings", json={"input": "张飞", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"input": [1, 2, 3]}, 400, "token arrays are not supported"),
        ({"input": []}, 400, "must not be empty"),
        ({}, 400, "input: Field required"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "not served here"),
        ({"input": "x", "dimensions": 8}, 400, "32-dimensional"),
    ],
)
def test_bad_embedding_requests(client: httpx.Client, body: dict[str, Any], status: int, fragment: str) -> None:
    assert_openai_error(client.post("/v1/embeddings", json=body), status, fragment)


# ------------------------------------------------------------------------------ knowledge bases


def test_kb_list_has_document_and_chunk_counts(client: httpx.Client, settings: Settings, tiny_embedding_path: Path) -> None:
    data = {kb["name"]: kb for kb in client.get("/v1/kb").json()["data"]}
    assert set(data) == {KB, DENSE_KB}
    for name, entry in data.items():
        docs = KnowledgeBase.from_settings(settings, name=name).list_documents()
        assert entry["documents"] == len(docs) == 1
        assert entry["chunks"] == sum(d.chunks for d in docs) > 5
    assert data[KB]["keyword_only"] and data[KB]["embedding_model"] == "none"
    assert data[DENSE_KB]["embedding_model"] == str(tiny_embedding_path.resolve())


@pytest.mark.parametrize(("name", "mode"), [(KB, "bm25"), (KB, None), (DENSE_KB, "dense"), (DENSE_KB, "hybrid")])
def test_kb_query_returns_passages_with_exact_sources(
    client: httpx.Client, sanguo_text: str, name: str, mode: str | None
) -> None:
    body = client.post(f"/v1/kb/{name}/query", json={"query": "刘备 关羽 张飞 桃园结义", "k": 4, "mode": mode}).json()
    assert body["mode"] == (mode or "bm25")
    hits = body["data"]
    assert 1 <= len(hits) <= 4
    for hit in hits:
        assert {"text", "source", "chapter", "chapter_title", "start", "end", "score"} <= set(hit)
        assert sanguo_text[hit["start"] : hit["end"]] == hit["text"]
        assert isinstance(hit["score"], float)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    if name == KB:
        assert hits[0]["chapter"] == 1 and "桃园" in hits[0]["chapter_title"]


@pytest.mark.parametrize(
    ("name", "body", "status", "fragment"),
    [
        ("no_such_kb", {"query": "刘备"}, 404, "does not exist"),
        ("bad*name", {"query": "刘备"}, 400, "invalid knowledge base name"),
        (".hidden", {"query": "刘备"}, 400, "invalid knowledge base name"),
        (KB, {"query": "刘备", "mode": "dense"}, 400, "keyword-only"),
        (KB, {"query": "刘备", "mode": "fuzzy"}, 400, "mode"),
        (KB, {"query": "   "}, 400, "query"),
        (KB, {"query": "刘备", "k": 0}, 400, "k"),
        (KB, {}, 400, "query: Field required"),
    ],
)
def test_bad_kb_queries(client: httpx.Client, name: str, body: dict[str, Any], status: int, fragment: str) -> None:
    assert_openai_error(client.post(f"/v1/kb/{name}/query", json=body), status, fragment)


def test_kb_chat_streams_the_answer_and_ends_with_its_sources(
    client: httpx.Client, llm: ScriptedChatGLM, sanguo_text: str
) -> None:
    events = collect_stream(client, f"/v1/kb/{KB}/chat/completions", {"messages": user("桃园结义的是哪三个人？"), "k": 2})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chat_text(chunks) == ANSWER
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) >= 3
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["refused"] is False and final["standalone_question"] == "桃园结义的是哪三个人？"
    sources = final["sources"]
    assert 1 <= len(sources) <= 2
    for source in sources:
        assert source["source"] == "sanguo.txt" and sanguo_text[source["start"] : source["end"]] == source["text"]
        assert source["text"] in llm.prompts[-1]  # the passages the model was given
    assert all("sources" not in c for c in chunks[:-1])


def test_kb_chat_without_streaming_has_top_level_sources_and_uses_history(
    client: httpx.Client, llm: ScriptedChatGLM
) -> None:
    messages = [
        {"role": "user", "content": "刘备是谁？"},
        {"role": "assistant", "content": "刘备是蜀汉的开国皇帝。"},
        {"role": "user", "content": "他的结义兄弟是谁？"},
    ]
    before = len(llm.prompts)
    body = client.post(f"/v1/kb/{KB}/chat/completions", json={"messages": messages, "mode": "bm25"}).json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert body["sources"] and all(s["source"] == "sanguo.txt" for s in body["sources"])
    # With history, the chain first condenses the follow-up (one more model call, seeing the history).
    assert len(llm.prompts) == before + 2 and "刘备是蜀汉的开国皇帝。" in llm.prompts[before]
    assert body["standalone_question"] == ANSWER  # what the (scripted) condense call answered


def test_kb_chat_with_an_empty_question_is_a_400_streamed_too(client: httpx.Client) -> None:
    """Bug: with ``stream: true`` a whitespace question got HTTP 200 and then an in-stream error event
    (the question was checked only once the answer's stream ran); without streaming it was a 400."""
    for stream in (False, True):
        body = {"messages": user("  "), "stream": stream}
        assert_openai_error(client.post(f"/v1/kb/{KB}/chat/completions", json=body), 400, "non-empty")


def test_kb_chat_errors(client: httpx.Client) -> None:
    assert_openai_error(client.post("/v1/kb/none_here/chat/completions", json={"messages": user("x")}), 404, "does not exist")
    assert_openai_error(
        client.post(f"/v1/kb/{KB}/chat/completions", json={"messages": user("x"), "mode": "dense"}), 400, "keyword-only"
    )
    assert_openai_error(
        client.post(f"/v1/kb/{KB}/chat/completions", json={"messages": user("x"), "stop": "。"}), 400, "stop"
    )
    assert_openai_error(
        client.post(f"/v1/kb/{KB}/chat/completions", json={"model": "gpt-4o", "messages": user("x")}), 404, "gpt-4o"
    )


# ------------------------------------------------------------------------------ the official SDK


def test_the_openai_sdk_works_against_the_server(auth_url: str, tiny_embedding_path: Path) -> None:
    """The ``openai`` package parses our responses: streaming chunks, usage, embeddings (which
    it requests base64-encoded by default), models, and raises its own errors for ours."""
    import openai

    client = openai.OpenAI(base_url=f"{auth_url}/v1", api_key=KEY, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL, messages=user("刘备字什么？"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    reply = client.chat.completions.create(model=MODEL, messages=user("刘备字什么？"), stop="，")
    assert reply.choices[0].message.content == ANSWER.split("，")[0] and reply.usage.total_tokens > 0
    vectors = client.embeddings.create(model=str(tiny_embedding_path), input=["刘备", "曹操"])
    assert [len(d.embedding) for d in vectors.data] == [32, 32]
    assert [m.id for m in client.models.list()][0] == MODEL
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=MODEL, messages=user("hi"), temperature=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{auth_url}/v1", api_key="nope", max_retries=0).models.list()


def test_the_sdk_retrieves_each_listed_model_and_404s_others(url: str, tiny_embedding_path: Path) -> None:
    """``client.models.retrieve(id)`` (GET /v1/models/{id}) was a bare "Not Found" 404 even for the
    served model; an embedding model's id is a path, which the SDK sends percent-encoded."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    for listed in client.models.list():
        assert client.models.retrieve(listed.id).model_dump() == listed.model_dump()
    assert client.models.retrieve(str(tiny_embedding_path)).object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert caught.value.body == {"message": "model 'gpt-4o' does not exist here (GET /v1/models)",
                                 "type": "invalid_request_error", "param": "model", "code": "model_not_found"}


def test_stream_null_means_false(client: httpx.Client) -> None:
    """OpenAI's ``stream`` is "boolean or null" (the SDK sends ``stream=None`` as null): it was a 400
    "stream: Input should be a valid boolean"; now null answers as a plain completion."""
    for path in ("/v1/chat/completions", f"/v1/kb/{KB}/chat/completions"):
        response = client.post(path, json={"messages": user("刘备字什么？"), "max_tokens": 3, "stream": None})
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "chat.completion"


def test_legacy_functions_are_refused_like_tools(url: str) -> None:
    """``functions`` (the SDK's deprecated tool calling) was silently dropped, so the client got plain
    text where it waited for a ``function_call``; it is refused with a 400 as ``tools`` is."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    functions = [{"name": "f", "parameters": {}}]
    with pytest.raises(openai.BadRequestError, match="tool calling is not supported") as caught:
        client.chat.completions.create(model=MODEL, messages=user("你好"), functions=functions)
    assert caught.value.body["param"] == "functions"
    assert client.chat.completions.create(model=MODEL, messages=user("你好"), max_tokens=2, functions=[]).choices


def test_embedding_input_with_a_lone_surrogate_is_a_400(client: httpx.Client) -> None:
    """``{"input": "a\\ud800"}`` reached the embedding tokenizer, whose TypeError was a 500 (and the
    server dropped the keep-alive connection); like chat messages it is now refused up front."""
    for text in ("刘备\ud800", ["关羽", "\udc00"]):
        content = json.dumps({"input": text}).encode()  # json.dumps escapes the surrogate as \ud800
        response = client.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
        assert assert_openai_error(response, 400, "surrogate")["param"] == "input"
    assert client.post("/v1/embeddings", json={"input": "刘备"}).status_code == 200


class CrashingProcessor:
    """A logits processor that fails like a bug inside generation (an unexpected exception)."""

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        raise RuntimeError("a bug inside generation")


def test_an_unexpected_500_closes_its_connection_cleanly(settings: Settings, tiny_chatglm: ChatGLM) -> None:
    """Starlette re-raises an unexpected error after our 500 and uvicorn then drops the connection, which
    the 500 kept alive: the client's next request on it failed with "connection reset by peer". The 500
    now says ``Connection: close``, so clients open a new connection."""
    broken = scripted(tiny_chatglm)
    broken.processor = CrashingProcessor()
    with running(Services(settings, llm=broken)) as base, httpx.Client(base_url=base, timeout=30) as c:
        for _ in range(2):
            response = c.post("/v1/chat/completions", json={"messages": user("你好")})
            assert assert_openai_error(response, 500, "internal server error")["type"] == "server_error"
            assert response.headers["connection"] == "close"
        assert c.get("/v1/models").status_code == 200
        assert "connection" not in c.post("/v1/chat/completions", json={"messages": user("你好"), "n": 2}).headers


def test_knowledge_bases_built_or_dropped_while_serving(tmp_path: Path, sanguo_text: str) -> None:
    settings = make_settings(tmp_path / "kb_root")
    with running(Services(settings)) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/v1/kb").json()["data"] == []
        assert_openai_error(c.post("/v1/kb/late/query", json={"query": "刘备"}), 404, "does not exist")
        late = KnowledgeBase.from_settings(settings, name="late", create=True)
        late.add_texts({"sanguo.txt": sanguo_text[:5000]})
        assert [kb["name"] for kb in c.get("/v1/kb").json()["data"]] == ["late"]
        assert c.post("/v1/kb/late/query", json={"query": "刘备"}).json()["data"]
        late.drop()
        assert_openai_error(c.post("/v1/kb/late/query", json={"query": "刘备"}), 404, "does not exist")
        assert c.get("/v1/kb").json()["data"] == []


def test_kb_chat_honours_max_tokens(client: httpx.Client, llm: ScriptedChatGLM) -> None:
    body = client.post(f"/v1/kb/{KB}/chat/completions", json={"messages": user("桃园结义"), "max_tokens": 3}).json()
    assert body["choices"][0]["message"]["content"] == llm.tokenizer.decode(llm.answer_ids()[:3])


# ------------------------------------------------------------------------------ issue 20 / 17 regressions


def test_unauthenticated_requests_are_refused_on_their_headers(auth_url: str) -> None:
    """Issue 20 #5: the body was read and parsed before the key was checked (invalid JSON
    without a key got 400, 100 MB bodies were read whole). Now: 401 from the headers alone."""
    with httpx.Client(base_url=auth_url, timeout=30) as c:
        response = c.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert assert_openai_error(response, 401, "API key")["code"] == "invalid_api_key"

        def endless() -> Iterator[bytes]:  # a chunked body the server must never read to the end
            for _ in range(200):
                yield b"x" * 65536

        started = time.monotonic()
        response = c.post("/v1/chat/completions", content=endless(), headers={"content-type": "application/json"})
        assert response.status_code == 401 and time.monotonic() - started < 10


def test_bodies_over_the_limit_are_a_413_before_parsing(settings: Settings, llm: ScriptedChatGLM) -> None:
    """Issue 20 #5: no body size limit. A declared or streamed body over api.max_body_bytes is 413."""
    small = settings.model_copy(update={"api": settings.api.model_copy(update={"max_body_bytes": 4096})})
    with running(Services(small, llm=llm)) as base, httpx.Client(base_url=base, timeout=30) as c:
        big = {"messages": user("刘" * 5000)}
        assert assert_openai_error(c.post("/v1/chat/completions", json=big), 413, "api.max_body_bytes")["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams in
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"a" * 1024
            yield b'"}]}'

        response = c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert_openai_error(response, 413, "api.max_body_bytes")
        assert c.post("/v1/chat/completions", json={"messages": user("你好"), "max_tokens": 2}).status_code == 200


def test_huge_messages_are_refused_by_length_before_tokenizing(client: httpx.Client) -> None:
    """Issue 20 #6: a 30 MB message was tokenized whole (54 s of CPU, +3.6 GiB) before the
    context check. Text longer than context x 8 characters is refused at once."""
    text = "刘备" * 20_000  # 40k characters > 4096 x 8
    for path in ("/v1/chat/completions", f"/v1/kb/{KB}/chat/completions"):
        started = time.monotonic()
        error = assert_openai_error(client.post(path, json={"messages": user(text)}), 400, "characters")
        assert error["code"] == "context_length_exceeded" and time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": user("你好"), "repetition_penalty": 1e-300}, "repetition_penalty"),
        ({"messages": user("你好\ud800")}, "surrogate"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "\udc00"}]}]}, "surrogate"),
        ({"messages": user("你好"), "logprobs": True}, "logprobs"),
        ({"messages": user("你好"), "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_inputs_that_used_to_crash_are_a_400(client: httpx.Client, body: dict[str, Any], fragment: str) -> None:
    """Issue 20 #16: ``repetition_penalty: 1e-300`` and a lone surrogate gave 500s; issue 17:
    ``logprobs: true`` was silently dropped."""
    content = json.dumps(body).encode()  # json.dumps escapes the surrogate as \ud800
    for path in ("/v1/chat/completions", f"/v1/kb/{KB}/chat/completions"):
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert_openai_error(response, 400, fragment)
    if "surrogate" in fragment:
        query = json.dumps({"query": "刘备\ud800"}).encode()
        response = client.post(f"/v1/kb/{KB}/query", content=query, headers={"content-type": "application/json"})
        assert_openai_error(response, 400)  # pydantic refuses it as a string already


def test_kb_chat_reports_usage_and_length_and_bounds_max_tokens(client: httpx.Client) -> None:
    """Issue 17 (API conformance) and issue 20 #8: KB chat had no ``usage``, ignored
    ``stream_options.include_usage``, said "stop" when max_tokens cut the answer, and let
    max_tokens run past the context."""
    path = f"/v1/kb/{KB}/chat/completions"
    body = client.post(path, json={"messages": user("刘备是谁？"), "max_tokens": 3}).json()
    assert body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] > 50
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    full = client.post(path, json={"messages": user("刘备是谁？")}).json()
    assert full["choices"][0]["finish_reason"] == "stop" and full["choices"][0]["message"]["content"] == ANSWER
    events = collect_stream(client, path, {"messages": user("刘备是谁？"), "stream_options": {"include_usage": True}})
    chunks = events[:-1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert all(c["usage"] is None for c in chunks[:-1])
    error = assert_openai_error(client.post(path, json={"messages": user("x"), "max_tokens": 5000}), 400, "max_tokens")
    assert error["code"] == "context_length_exceeded"


def test_kb_chat_sources_name_files_not_server_paths(tmp_path: Path, llm: ScriptedChatGLM, sanguo_text: str) -> None:
    """Issue 18 #12: KB chat returned absolute server paths in ``sources``."""
    settings = make_settings(tmp_path)
    source = tmp_path / "books" / "sanguo.txt"
    source.parent.mkdir()
    source.write_text(sanguo_text[:6000], encoding="utf-8")
    KnowledgeBase.from_settings(settings, name="paths", create=True).add_files([source])
    with running(Services(settings, llm=llm)) as base, httpx.Client(base_url=base, timeout=60) as c:
        body = c.post("/v1/kb/paths/chat/completions", json={"messages": user("刘备")}).json()
        hits = c.post("/v1/kb/paths/query", json={"query": "刘备"}).json()["data"]
    assert body["sources"] and all(s["source"] == "sanguo.txt" for s in body["sources"])
    assert hits and all(h["source"] == "sanguo.txt" for h in hits)
    assert str(tmp_path) not in json.dumps(body) + json.dumps(hits)


class SlowQueries(Services):
    """Services whose KB searches take ``delay`` seconds (a 2 MB query's cost, simulated)."""

    delay = 2.0

    def search_mode(self, kb: Any, mode: Any, *, fallback: bool) -> Any:
        time.sleep(self.delay)
        return super().search_mode(kb, mode, fallback=fallback)


def test_listing_knowledge_bases_never_waits_behind_queries(settings: Settings, llm: ScriptedChatGLM) -> None:
    """Issue 20 #7: six slow KB queries filled the default thread pool and ``GET /v1/kb`` waited
    71 s. Queries have their own bounded pool; listing and models answer at once."""
    slow = settings.model_copy(update={"api": settings.api.model_copy(update={"kb_workers": 2})})
    with running(SlowQueries(slow, llm=llm)) as base, ThreadPoolExecutor(6) as pool:
        with httpx.Client(base_url=base, timeout=60) as c:
            queries = [pool.submit(c.post, f"/v1/kb/{KB}/query", json={"query": "刘备"}) for _ in range(6)]
            time.sleep(0.5)
            started = time.monotonic()
            assert c.get("/v1/kb").status_code == 200 and c.get("/v1/models").status_code == 200
            assert time.monotonic() - started < 1.5
            assert all(q.result().status_code == 200 for q in queries)


def test_non_streaming_kb_chat_stops_when_the_client_hangs_up(settings: Settings, tiny_chatglm: ChatGLM) -> None:
    """Issue 20 #8: a non-streaming KB chat whose client left kept the model busy (the next
    request waited 359 s). Generation now stops soon after the disconnect."""
    long_answer = scripted(tiny_chatglm, answer="刘备关羽张飞" * 1500, max_new_tokens=3000)
    processor = long_answer.forced()
    long_answer.processor = processor
    with running(Services(settings, llm=long_answer)) as base:
        with httpx.Client(base_url=base, timeout=1.5) as c, pytest.raises(httpx.ReadTimeout):
            c.post(f"/v1/kb/{KB}/chat/completions", json={"messages": user("讲个长故事")})
        assert wait_until(lambda: not model_is_busy(long_answer.model), timeout=10)
        steps = processor.steps
        time.sleep(0.3)
        assert processor.steps == steps < 2000


def test_an_api_key_with_surrounding_whitespace_is_stripped(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20 #16: a key pasted with a newline made authentication impossible, with no hint."""
    with caplog.at_level("WARNING"):
        assert resolve_api_key(APISettings(), environ={"GLMKB_API_KEY": " k3y\n"}) == "k3y"
    assert "whitespace" in caplog.text and "k3y" not in caplog.text


def test_slow_clients_are_disconnected_when_their_headers_do_not_arrive(settings: Settings, llm: ScriptedChatGLM) -> None:
    """Issue 20 #16: no timeout for slow clients (300 trickling connections held for 60 s).
    A connection whose request headers are incomplete after the deadline is closed."""
    import socket

    from app.api.cli import uvicorn_options
    from app.slow_clients import HeaderTimeoutH11Protocol, protocol_with_timeout

    assert issubclass(uvicorn_options(settings, verbose=False)["http"], HeaderTimeoutH11Protocol)
    with running(Services(settings, llm=llm), http=protocol_with_timeout(1.0)) as base:
        port = int(base.rsplit(":", 1)[1])
        for payload in (b"", b"GET /health HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(payload)
                conn.settimeout(10)
                started = time.monotonic()
                assert conn.recv(100) == b""  # closed by the server
                assert time.monotonic() - started < 5
        assert httpx.get(f"{base}/health", timeout=10).status_code == 200


def test_a_kept_alive_connection_trickling_its_next_request_is_closed(settings: Settings, llm: ScriptedChatGLM) -> None:
    """Bug guarded: the header deadline held only for a connection's first request; after one
    answered request, a client trickling the next one's headers (a byte a second: uvicorn cancels
    its keep-alive timer at the first byte) kept the connection forever."""
    import socket

    from app.slow_clients import protocol_with_timeout

    with running(Services(settings, llm=llm), http=protocol_with_timeout(1.0), timeout_keep_alive=30) as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.settimeout(10)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_health(conn).startswith(b"HTTP/1.1 200")
            conn.sendall(b"GET /health HTTP/1.1\r\n")  # the next request's headers, never finished
            started = time.monotonic()
            assert conn.recv(100) == b""  # closed by the server
            assert time.monotonic() - started < 5
        with socket.create_connection(("127.0.0.1", port)) as conn:  # a prompt second request is served
            conn.settimeout(10)
            request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            for _ in range(2):
                conn.sendall(request)
                assert read_health(conn).startswith(b"HTTP/1.1 200")
                time.sleep(0.6)


def read_health(conn: Any) -> bytes:
    """One whole ``GET /health`` response read from the socket ``conn`` (b"" once it closes)."""
    got = b""
    while not got.endswith(b'{"status":"ok"}'):
        chunk = conn.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_models_lists_only_an_embedding_model_that_loads(tmp_path: Path, llm: ScriptedChatGLM) -> None:
    """Issue 18 #12: ``/v1/models`` listed an embedding model that could not load."""
    settings = make_settings(tmp_path, embedding={"model": str(tmp_path / "no-such-embedder")})
    with running(Services.from_settings(settings)) as base, httpx.Client(base_url=base, timeout=30) as c:
        assert c.get("/v1/models").json()["data"] == []  # no chat model configured either
        assert_openai_error(c.post("/v1/embeddings", json={"input": "刘备"}), 503)


# ------------------------------------------------------------------------------ scope "book"


def test_book_scope_streams_progress_then_the_answer_with_its_sources(
    client: httpx.Client, llm: ScriptedChatGLM, sanguo_text: str
) -> None:
    """``scope: "book"``: progress chunks (``glmkb_progress``, empty delta), the answer as
    ``delta.content``, sources in the final chunk, all in the OpenAI chunk format."""
    path = f"/v1/kb/{KB}/chat/completions"
    body = {"messages": user("刘备做了哪些事？"), "scope": "book", "chapters": "第1-3回", "stream_options": {"include_usage": True}}
    events = collect_stream(client, path, body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    progress = [c["glmkb_progress"] for c in chunks if "glmkb_progress" in c]
    assert progress[0]["stage"] == "select" and 1 <= progress[0]["total"] <= 3
    assert [p["stage"] for p in progress].count("map") >= 2 and progress[-1]["done"] == progress[-1]["total"]
    assert all(c["choices"][0]["delta"] == {} for c in chunks if "glmkb_progress" in c)
    assert chat_text(chunks) == ANSWER  # the scripted model's answer (it cites no passage)
    final = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert final["choices"][0]["finish_reason"] == "stop" and final["refused"] is False
    assert final["sources"] and all(s["source"] == "sanguo.txt" and 1 <= s["chapter"] <= 3 for s in final["sources"])
    assert all(sanguo_text[s["start"] : s["end"]] == s["text"] for s in final["sources"])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0


def test_book_scope_without_streaming_and_its_bad_requests(client: httpx.Client) -> None:
    path = f"/v1/kb/{KB}/chat/completions"
    body = client.post(path, json={"messages": user("刘备做了哪些事？"), "scope": "book", "source": "sanguo.txt"}).json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == ANSWER
    assert body["sources"] and body["refused"] is False and body["usage"]["total_tokens"] > 0
    assert_openai_error(client.post(path, json={"messages": user("x"), "chapters": "1-3"}), 400, 'scope "book"')
    assert_openai_error(client.post(path, json={"messages": user("x"), "scope": "all"}), 400, "scope")
    assert_openai_error(
        client.post(path, json={"messages": user("x"), "scope": "book", "chapters": "第三到第一回"}), 400, "chapter range"
    )
    assert_openai_error(
        client.post(path, json={"messages": user("x"), "scope": "book", "source": "nope.txt"}), 404, "nope.txt"
    )


def test_book_scope_stops_inside_its_map_batch_when_the_client_hangs_up(settings: Settings, tiny_chatglm: ChatGLM) -> None:
    """Bug guarded: closing the stream only lands between events, so a whole-book answer whose
    client left kept generating its whole batched map step (3000 forced tokens here)."""
    long_answer = scripted(tiny_chatglm, answer="刘备关羽张飞" * 1500, max_new_tokens=3000)
    processor = long_answer.forced()
    long_answer.processor = processor
    body = {"messages": user("刘备做了哪些事？"), "scope": "book", "stream": True}
    with running(Services(settings, llm=long_answer)) as base:
        with httpx.Client(base_url=base, timeout=60) as c:
            with c.stream("POST", f"/v1/kb/{KB}/chat/completions", json=body) as r:
                events = sse_events(r)
                stages = [json.loads(next(events)).get("glmkb_progress") for _ in range(3)]
                assert stages[2] == {"stage": "map", "done": 0, "total": stages[1]["total"]}
                assert wait_until(lambda: processor.steps > 5, timeout=30)
        assert wait_until(lambda: not model_is_busy(long_answer.model), timeout=10)
        steps = processor.steps
        time.sleep(0.3)
        assert processor.steps == steps < 500


def test_top_p_zero_is_accepted_as_greedy(client: httpx.Client) -> None:
    """Regression: ``top_p: 0`` got a 400 although OpenAI's API takes 0..1; it means greedy."""
    response = client.post("/v1/chat/completions", json={"messages": user("hi"), "top_p": 0, "temperature": 1})
    assert response.status_code == 200, response.text


def test_head_requests_on_read_only_routes(client: httpx.Client) -> None:
    """Regression: ``HEAD /health`` and ``HEAD /v1/models`` were a 405 (FastAPI's GET routes take no
    HEAD), so load balancers and uptime checks that probe with HEAD marked the server down."""
    for path in ("/health", "/v1/models"):
        response = client.head(path)
        assert response.status_code == 200 and response.content == b"", path
    assert client.head("/v1/models/no-such-model").status_code == 404
