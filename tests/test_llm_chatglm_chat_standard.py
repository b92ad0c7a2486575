"""LangChain's standard chat-model suites (langchain-tests) against ChatGLMChat on the tiny GLM.

Tools, structured output, JSON mode and image/audio/PDF inputs are declared unsupported; the
random tiny model is made to answer non-empty text (``min_new_tokens``) so content checks hold.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from llm import ChatGLM, ChatGLMChat


@pytest.fixture(scope="module")
def standard_llm(tiny_chatglm: ChatGLM) -> ChatGLM:
    """The tiny GLM answering at least 4 and at most 16 tokens (random weights could end at once)."""
    return tiny_chatglm.model_copy(update={"max_new_tokens": 16})


class _Params:
    """What both suites share: the class, its parameters, and what a local text model lacks."""

    _llm: ChatGLM | None = None

    @pytest.fixture(autouse=True)
    def _use_tiny_model(self, standard_llm: ChatGLM) -> None:
        type(self)._llm = standard_llm

    @property
    def chat_model_class(self) -> type[ChatGLMChat]:
        return _MinTokensChat

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": self._llm, "model_name": "tiny-glm"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


class _MinTokensChat(ChatGLMChat):
    """ChatGLMChat whose calls generate at least 4 tokens (the suites check for non-empty text)."""

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"min_new_tokens": 4, **super()._options(kwargs)}


class TestChatGLMChatUnit(_Params, ChatModelUnitTests):
    pass


class TestChatGLMChatIntegration(_Params, ChatModelIntegrationTests):
    pass


def test_the_suites_own_defaults_see_no_tools_and_no_structured_output() -> None:
    """Bug guarded: ChatGLMChat overrode ``bind_tools`` only to raise NotImplementedError, and the
    standard suites read any override as support (``has_tool_calling``, and from it
    ``has_structured_output``), so a suite configured with its defaults ran the tool and structured-
    output tests against a model that has neither. Checked through the suites' own properties."""

    class Defaults(ChatModelUnitTests):
        chat_model_class = ChatGLMChat  # type: ignore[assignment]

    suite = Defaults()
    assert suite.has_tool_calling is False and suite.has_structured_output is False
