"""Regression: ChatGLM3 answers begin with "▁\\n" after <|assistant|>, which must not reach the user."""

from __future__ import annotations

from pathlib import Path

from llm import ChatGLM
from tests.fixtures.models import ForcedTokens


def test_chatglm3_answer_has_no_leading_space(chatglm3_legacy_path: Path) -> None:
    """Bug: streamed ChatGLM3 answers started with " " (only "\\n" was stripped, as for GLM-4)."""
    llm = ChatGLM.from_model_path(chatglm3_legacy_path, device="cpu", temperature=0, max_new_tokens=16)
    # The original emits "\n" then the content, each sentencepiece-encoded with its "▁" prefix.
    answer_ids = llm.tokenizer.encode("\n", add_special_tokens=False) + llm.tokenizer.encode(
        "你好，曹操", add_special_tokens=False
    )
    assert llm.tokenizer.decode(answer_ids).lstrip("\n")[:1].isspace()
    eos = llm.model.generation_config.eos_token_id
    eos_id = eos[0] if isinstance(eos, list) else eos

    streamed = "".join(
        llm.stream("你好", logits_processor=[ForcedTokens(answer_ids, eos_id=eos_id)])
    )
    batched = llm.batch(
        ["你好", "再说一遍"],
        logits_processor=[ForcedTokens(answer_ids, eos_id=eos_id)],
    )
    assert streamed == "你好，曹操"
    assert batched[0] == "你好，曹操"
