"""The API's one completion job (``app.api.chat_jobs.ChatJob``) and KB chat's usage counter
over chat models, without a server: the local ``ChatGLMChat`` and a fake remote chat model."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, LLMResult

from app.api.chat_jobs import ChatJob, RequestError
from app.api.kb_chat import UsageCounter
from app.api.schemas import ChatCompletionRequest
from app.services import Services
from configs import Settings
from llm import ChatGLM, ChatGLMChat
from tests.fixtures.models import ForcedTokens

ANSWER = "刘备字玄德。"


class RecordingChat(ChatGLMChat):
    """``ChatGLMChat`` forced to say ``ANSWER``; records the per-call options it got."""

    calls: list[dict[str, Any]] = []

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        self.calls.append(dict(kwargs))
        ids = self.llm.tokenizer.encode(ANSWER, add_special_tokens=False)
        kwargs["logits_processor"] = [ForcedTokens(ids, eos_id=self.llm.tokenizer.eos_token_id)]
        return super()._stream(messages, stop, run_manager, **kwargs)


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "刘备字什么？"}], **fields)


@pytest.fixture
def chat(tiny_chatglm: ChatGLM) -> RecordingChat:
    RecordingChat.calls = []
    return RecordingChat(llm=tiny_chatglm)


def test_the_local_job_reports_the_models_own_usage_and_fits_max_tokens(chat: RecordingChat) -> None:
    job = ChatJob.from_request(chat, request(repetition_penalty=1.1, temperature=0))
    assert job.params["max_tokens"] == chat.llm.max_new_tokens  # the model's default, room permitting
    assert "".join(p.answer for p in job.pieces()) == ANSWER
    (call,) = chat.calls
    assert call["repetition_penalty"] == 1.1 and call["temperature"] == 0
    prompt = chat.get_num_tokens_from_messages([HumanMessage("刘备字什么？")])
    answer = len(chat.llm.tokenizer.encode(ANSWER, add_special_tokens=False)) + 1  # and the eos
    assert job.outcome.usage() == {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}
    assert job.outcome.finish_reason == "stop"
    cut = ChatJob.from_request(chat, request(max_tokens=2))
    assert len(list(cut.pieces())) >= 1 and cut.outcome.finish_reason == "length" and cut.outcome.completion_tokens == 2
    with pytest.raises(RequestError, match="lower max_tokens"):
        ChatJob.from_request(chat, request(max_tokens=10_000))


def test_a_remote_model_without_usage_is_counted_and_gets_no_repetition_penalty() -> None:
    remote = GenericFakeChatModel(messages=iter([AIMessage("玄德")]), custom_get_token_ids=lambda text: list(map(ord, text)))
    job = ChatJob.from_request(remote, request(repetition_penalty=1.1, max_tokens=5))
    assert job.params == {"max_tokens": 5}  # no context known: passed as asked, no vLLM extension
    assert "".join(p.answer for p in job.pieces()) == "玄德"
    assert job.outcome.completion_tokens == 2 and job.outcome.prompt_tokens > len("刘备字什么？")  # one per character


def test_a_remote_servers_own_finish_reason_reaches_the_client_as_stop() -> None:
    """Bug: a server behind ``llm.backend: openai`` that ends with a finish_reason outside OpenAI's set
    (vLLM's "abort") failed the openai types glmkb answers in: a 400 for the whole answer, an error event
    at the end of a stream whose text had arrived. It reaches the client as "stop"."""
    import json

    from app.api.wire import chat_completion_body, chat_sse

    class AbortingServer(GenericFakeChatModel):
        def _stream(self, *args: Any, **kwargs: Any) -> Any:
            yield ChatGenerationChunk(message=AIMessageChunk("玄德"))
            yield ChatGenerationChunk(message=AIMessageChunk("", response_metadata={"finish_reason": "abort"}))

    def job() -> ChatJob:
        remote = AbortingServer(messages=iter([]), custom_get_token_ids=lambda text: list(map(ord, text)))
        return ChatJob.from_request(remote, request(max_tokens=5))

    whole = job()
    body = chat_completion_body(whole, list(whole.pieces()), model="m")
    assert body["choices"][0]["finish_reason"] == "stop" and body["choices"][0]["message"]["content"] == "玄德"
    events = [json.loads(e) for e in chat_sse(job(), model="m", include_usage=False) if e != "[DONE]"]
    assert "error" not in events[-1] and events[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_glmkb_in_front_of_another_server_forwards_its_extensions() -> None:
    """Bug: with ``llm.backend: openai`` the API dropped a request's ``repetition_penalty`` and
    ``chat_template_kwargs.enable_thinking`` (the client had neither): the server behind it never saw
    them. They now reach its request body, beside the settings' own, and only where asked for."""
    from llm.openai_compatible_chat import OpenAICompatibleChat

    remote = OpenAICompatibleChat(model="m", base_url="http://127.0.0.1:9/v1", api_key="k", max_tokens=None,
                                  extra_body={"top_k": 5}, custom_get_token_ids=lambda text: list(map(ord, text)))
    asked = request(repetition_penalty=1.1, chat_template_kwargs={"enable_thinking": False}, max_tokens=5)
    job = ChatJob.from_request(remote, asked)
    assert job.params == {"max_tokens": 5, "repetition_penalty": 1.1, "enable_thinking": False}
    body = remote._get_request_payload([HumanMessage("刘备字什么？")], **job.params)
    switch = {"chat_template_kwargs": {"enable_thinking": False}}
    assert body["extra_body"] == {"top_k": 5, "repetition_penalty": 1.1, **switch}
    plain = remote._get_request_payload([HumanMessage("刘备字什么？")], **ChatJob.from_request(remote, request()).params)
    assert plain["extra_body"] == {"top_k": 5}


def test_services_hand_out_one_chat_face_over_the_shared_model(tiny_chatglm: ChatGLM, tmp_path: Any) -> None:
    services = Services(Settings(kb_root=tmp_path), llm=tiny_chatglm)
    chat = services.require_chat_model()
    assert isinstance(chat, ChatGLMChat) and chat.llm is tiny_chatglm and services.require_chat_model() is chat
    remote = GenericFakeChatModel(messages=iter([]))
    assert Services(Settings(kb_root=tmp_path), llm=remote).require_chat_model() is remote


def test_kb_usage_takes_a_chat_models_usage_and_counts_a_prompt_llms(chat: RecordingChat) -> None:
    usage = UsageCounter(chat, max_new_tokens=3)
    run = uuid4()
    usage.on_chat_model_start({}, [[HumanMessage("问")]], run_id=run)
    reported = AIMessage("答", usage_metadata={"input_tokens": 40, "output_tokens": 3, "total_tokens": 43},
                         response_metadata={"finish_reason": "length"})
    usage.on_llm_end(LLMResult(generations=[[ChatGeneration(message=reported)]]), run_id=run)
    assert usage.usage() == {"prompt_tokens": 40, "completion_tokens": 3, "total_tokens": 43}
    assert usage.finish_reason == "length"
    run = uuid4()
    usage.on_llm_start({}, ["问"], run_id=run)  # the local ChatGLM (a prompt-string LLM)
    usage.on_llm_end(LLMResult(generations=[[Generation(text="刘备")]]), run_id=run)
    prompt = chat.get_num_tokens_from_messages([HumanMessage("问")])  # as the chat template renders it
    assert usage.prompt_tokens == 40 + prompt and usage.completion_tokens == 3 + chat.get_num_tokens("刘备")
    assert usage.finish_reason == "stop"
