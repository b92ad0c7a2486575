"""The rebuilt ChatGLM2/3 tokenizer gives exactly the ids of THUDM's tokenization_chatglm.py.

Expected ids are computed here with the ORIGINAL algorithm: sentencepiece ``encode`` of each
text piece plus the special ids at sentencepiece size + offset (SPTokenizer), the ChatGLM3
``build_chat_input`` message layout and the ChatGLM2 ``build_prompt`` text.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
import shutil
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm.chatglm_tokenizer import detect_variant, load_chatglm_tokenizer
from tests.fixtures.chatglm_legacy import CHATGLM2_SPECIALS, CHATGLM3_SPECIALS

# ----- the original algorithm -------------------------------------------------------------


class OriginalChatGLM:
    """ids as THUDM's SPTokenizer / ChatGLMTokenizer compute them."""

    def __init__(self, sp_model: Path, specials: list[str]) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(sp_model))
        n = self.sp.vocab_size()
        self.special = {token: n + offset for offset, token in enumerate(specials)}

    def encode(self, text: str) -> list[int]:
        """tokenizer(text): prefix [gMASK] sop, then sentencepiece ids."""
        return [self.special["[gMASK]"], self.special["sop"], *self.sp.encode(text)]

    def chatglm3_chat(self, history: list[dict[str, Any]], query: str, role: str = "user") -> list[int]:
        """build_chat_input: per message <|role|> + sp(metadata + "\\n") + sp(content), then <|assistant|>."""
        ids = [self.special["[gMASK]"], self.special["sop"]]
        for item in [*history, {"role": role, "content": query}]:
            content = item["content"]
            if item["role"] == "system" and "tools" in item:
                content = content + "\n" + json.dumps(item["tools"], indent=4, ensure_ascii=False)
            ids += [self.special[f"<|{item['role']}|>"], *self.sp.encode(f"{item.get('metadata', '')}\n")]
            ids += self.sp.encode(content)
        return ids + [self.special["<|assistant|>"]]

    def chatglm2_chat(self, history: list[tuple[str, str]], query: str) -> list[int]:
        """build_prompt + tokenizer(): rounds numbered from 1, the whole prompt one sentencepiece text."""
        prompt = ""
        for i, (old_query, response) in enumerate(history):
            prompt += f"[Round {i + 1}]\n\n问：{old_query}\n\n答：{response}\n\n"
        prompt += f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："
        return self.encode(prompt)


@pytest.fixture(scope="module")
def original3(chatglm_sp_model: Path) -> OriginalChatGLM:
    return OriginalChatGLM(chatglm_sp_model, CHATGLM3_SPECIALS)


@pytest.fixture(scope="module")
def tokenizer3(chatglm3_legacy_path: Path) -> Any:
    return load_chatglm_tokenizer(chatglm3_legacy_path, variant="chatglm3")


@pytest.fixture(scope="module")
def tokenizer2(chatglm2_legacy_path: Path) -> Any:
    return load_chatglm_tokenizer(chatglm2_legacy_path, variant="chatglm2")


def as_messages(history: list[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    return [*history, {"role": "user", "content": query}]


def chat_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])


# ----- special tokens ---------------------------------------------------------------------


def test_fixture_vocab_is_laid_out_like_chatglms(original3: OriginalChatGLM) -> None:
    """ChatGLM's tokenizer.model: <unk> <s> </s>, then the 256 byte pieces ("\\n" is id 13)."""
    sp = original3.sp
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert all(sp.is_byte(i) for i in range(3, 259))
    assert sp.encode("\n") == [sp.piece_to_id("▁"), 13]


def test_special_tokens_sit_after_the_sentencepiece_vocab(tokenizer3: Any, original3: OriginalChatGLM) -> None:
    n = original3.sp.vocab_size()
    assert tokenizer3.convert_tokens_to_ids(CHATGLM3_SPECIALS) == list(range(n, n + len(CHATGLM3_SPECIALS)))
    assert len(tokenizer3) == n + len(CHATGLM3_SPECIALS)
    assert (tokenizer3.eos_token_id, tokenizer3.pad_token_id, tokenizer3.padding_side) == (2, 0, "left")


def test_chatglm2_has_no_role_tokens(tokenizer2: Any, chatglm_sp_model: Path) -> None:
    n = spm.SentencePieceProcessor(model_file=str(chatglm_sp_model)).vocab_size()
    assert tokenizer2.convert_tokens_to_ids(CHATGLM2_SPECIALS) == list(range(n, n + 5))
    assert len(tokenizer2) == n + 5
    assert "<|user|>" not in tokenizer2.get_vocab()


def test_plain_encode_adds_gmask_sop_prefix(tokenizer3: Any, original3: OriginalChatGLM) -> None:
    """tokenizer(text) == the original's build_inputs_with_special_tokens: [gMASK] sop + sp ids."""
    text = "话说天下大势，分久必合，合久必分。"
    assert tokenizer3(text)["input_ids"] == original3.encode(text)
    assert tokenizer3.encode(text, add_special_tokens=False) == original3.sp.encode(text)


def test_sop_inside_words_is_plain_text(tokenizer3: Any, original3: OriginalChatGLM) -> None:
    """Regression: "sop"/"eop" are special tokens; inside "Aesop", "people", "的sop" they are plain text."""
    for text in ("Aesop's fables", "isopropyl", "的sop流程", "people", "Peoples Republic", "geopolitics"):
        assert tokenizer3.encode(text, add_special_tokens=False) == original3.sp.encode(text)


# ----- ChatGLM3 chat prompts --------------------------------------------------------------

CHATGLM3_CASES = [
    ([], "你好"),
    ([{"role": "system", "content": "你是一个乐于助人的助手。"}], "曹操是谁？"),
    (
        [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好👋！我是人工智能助手 ChatGLM3-6B，很高兴见到你。"},
        ],
        "晚上睡不着应该怎么办",
    ),
    (
        [{"role": "user", "content": "  leading spaces"}, {"role": "assistant", "content": "\n换行开头"}],
        "tab\tand  two spaces ",
    ),
    ([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}], ""),
    (
        [
            {"role": "system", "content": "Answer with tools.", "tools": [{"name": "track", "参数": {"id": 1}}]},
            {"role": "user", "content": "查询"},
            {"role": "assistant", "metadata": "track", "content": "```python\ntool_call(id=1)\n```"},
            {"role": "observation", "content": '{"status": "ok"}'},
        ],
        "结果如何？",
    ),
    ([], "What is 曹操's courtesy name (字)? Answer: 孟德."),
]


@pytest.mark.parametrize(("history", "query"), CHATGLM3_CASES)
def test_chatglm3_chat_template_matches_build_chat_input(
    tokenizer3: Any, original3: OriginalChatGLM, history: list[dict[str, Any]], query: str
) -> None:
    """Role tokens as special ids, "\\n" and content as separate sentencepiece texts, no stray spaces."""
    assert chat_ids(tokenizer3, as_messages(history, query)) == original3.chatglm3_chat(history, query)


def test_chatglm3_prompt_text_renders_roles_and_newlines(tokenizer3: Any) -> None:
    text = tokenizer3.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "你好"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "[gMASK]sop<|system|>\n S<|user|>\n 你好<|assistant|>"


def test_rendered_text_retokenizes_to_the_same_ids(tokenizer3: Any, original3: OriginalChatGLM) -> None:
    """ChatGLM renders the template to text, then encodes it without special tokens: same ids."""
    history, query = CHATGLM3_CASES[2]
    text = tokenizer3.apply_chat_template(as_messages(history, query), tokenize=False, add_generation_prompt=True)
    assert tokenizer3(text, add_special_tokens=False)["input_ids"] == original3.chatglm3_chat(history, query)


def test_unknown_role_is_refused(tokenizer3: Any) -> None:
    with pytest.raises(Exception, match="roles are"):
        tokenizer3.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_chatglm3_answer_decodes_like_the_original(tokenizer3: Any, original3: OriginalChatGLM) -> None:
    """The model answers sp("\\n") + sp(content) then <|user|>; decode drops the special stop token."""
    content = "滚滚长江东逝水，浪花淘尽英雄。"
    answer = [*original3.sp.encode("\n"), *original3.sp.encode(content), original3.special["<|user|>"]]
    text = tokenizer3.decode(answer, skip_special_tokens=True)
    assert text == original3.sp.decode(answer[:-1])
    assert text.strip() == content  # ChatGLM3's process_response strips the answer


# ----- ChatGLM2 prompts -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "query"),
    [
        ([], "你好"),
        ([("你好", "你好👋！我是人工智能助手 ChatGLM2-6B。"), ("第二问", "第二答")], "晚上睡不着应该怎么办"),
    ],
)
def test_chatglm2_chat_template_matches_build_prompt(
    tokenizer2: Any, chatglm_sp_model: Path, history: list[tuple[str, str]], query: str
) -> None:
    original = OriginalChatGLM(chatglm_sp_model, CHATGLM2_SPECIALS)
    messages = [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    messages.append({"role": "user", "content": query})
    assert chat_ids(tokenizer2, messages) == original.chatglm2_chat(history, query)


def test_chatglm2_system_prompt_goes_before_the_first_round(tokenizer2: Any) -> None:
    text = tokenizer2.apply_chat_template(
        [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "问题"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "[gMASK]sop你是助手\n\n[Round 1]\n\n问：问题\n\n答："


# ----- sentencepiece parity and round trips -----------------------------------------------


def novel_slices(path: Path, count: int, *, seed: int) -> list[str]:
    import random

    text = path.read_text(encoding="utf-8")
    rng = random.Random(seed)
    return [text[i : i + rng.randint(1, 400)] for i in (rng.randrange(len(text) - 400) for _ in range(count))]


def test_encoding_matches_sentencepiece_on_both_novels(
    tokenizer3: Any, original3: OriginalChatGLM, sanguo_path: Path, xiyouji_path: Path
) -> None:
    """Trained on 三国演义 only; 西游记 brings unseen characters (byte fallback)."""
    texts = novel_slices(sanguo_path, 300, seed=1) + novel_slices(xiyouji_path, 300, seed=2)
    for text in texts:
        ids = original3.sp.encode(text)
        assert tokenizer3.encode(text, add_special_tokens=False) == ids, text[:40]
        assert tokenizer3.decode(ids) == text


def test_whole_chapter_round_trips(tokenizer3: Any, original3: OriginalChatGLM, xiyouji_path: Path) -> None:
    chapter = xiyouji_path.read_text(encoding="utf-8")[:20_000]
    ids = tokenizer3.encode(chapter, add_special_tokens=False)
    assert ids == original3.sp.encode(chapter)
    assert tokenizer3.decode(ids) == chapter


def tokenizers_word_char(char: str) -> bool:
    """What ``tokenizers`` counts as part of a word for ``single_word`` tokens: letters, marks,
    Nd/Nl digits and "_" (not No numerals such as "¼" or "²", which Python's ``\\w`` includes)."""
    category = unicodedata.category(char)
    return category[0] in "LM" or category in ("Nd", "Nl") or char == "_"


def standing_alone(text: str, words: tuple[str, ...]) -> bool:
    """Whether one of ``words`` occurs in ``text`` with no word character right before or after it."""
    for word in words:
        for match in re.finditer(re.escape(word), text):
            before = text[match.start() - 1] if match.start() else ""
            after = text[match.end()] if match.end() < len(text) else ""
            if not (before and tokenizers_word_char(before)) and not (after and tokenizers_word_char(after)):
                return True
    return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(
        st.one_of(
            st.sampled_from(list("曹操刘备关羽张飞孙权，。！？、：“”《》 \n\t")),
            st.sampled_from(["  ", "▁", "sop", "eop", "[", "]", "<", "|", "<0x0A>", "Aesop", "people"]),
            st.characters(codec="utf-8", exclude_categories=("Cs",)),
        ),
        max_size=30,
    ).map("".join)
)
def test_any_text_encodes_like_sentencepiece(tokenizer3: Any, original3: OriginalChatGLM, text: str) -> None:
    """Arbitrary text (spaces, tabs, emoji, rare characters, ▁): ids and decoding as sentencepiece."""
    if any(token in text for token in ("[gMASK]", "[MASK]", "[sMASK]", "<|", "</s>", "<s>", "<unk>")):
        return  # special-token text is matched as special tokens by design
    if standing_alone(text, ("sop", "eop")):
        return  # so are "sop"/"eop" standing alone as words
    ids = original3.sp.encode(text)
    assert tokenizer3.encode(text, add_special_tokens=False) == ids
    assert tokenizer3.decode(ids) == original3.sp.decode(ids)


# ----- ChatGLM2 or ChatGLM3? --------------------------------------------------------------


def test_variant_from_remote_code_then_config_name(
    chatglm3_legacy_path: Path, chatglm2_legacy_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert detect_variant(chatglm3_legacy_path, {}) == "chatglm3"
    assert detect_variant(chatglm2_legacy_path, {}) == "chatglm2"
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(chatglm3_legacy_path / "tokenizer.model", bare)
    assert detect_variant(bare, {"_name_or_path": "THUDM/chatglm2-6b"}) == "chatglm2"
    with caplog.at_level(logging.WARNING):
        assert detect_variant(bare, {}) == "chatglm3"
    assert "assuming ChatGLM3" in caplog.text
