"""Fine-tuning data: the label mask covers exactly every assistant turn (and its end token), token by token.

The expected ids are built the way ChatGLM3's own tokenizer builds a conversation
(``build_single_message``: role token, ``sp.encode(metadata + "\\n")``, ``sp.encode(content)``),
with sentencepiece directly, not through glmkb's chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from configs.errors import BadInput
from llm.finetune.data import IGNORE, load_examples, read_conversations, tokenize_conversation

CONVERSATION = [
    {"role": "system", "content": "你是三国历史助手。"},
    {"role": "user", "content": "刘备的字是什么？"},
    {"role": "assistant", "content": "刘备字玄德。"},
    {"role": "user", "content": "他的结义兄弟是谁？"},
    {"role": "assistant", "content": "关羽和张飞，桃园三结义。"},
]


@pytest.fixture(scope="module")
def chatglm3_tokenizer(chatglm3_legacy_path: Path) -> Any:
    from llm.chatglm_tokenizer import load_chatglm_tokenizer

    return load_chatglm_tokenizer(chatglm3_legacy_path, variant="chatglm3")


def original_pieces(folder: Path, tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, list[int]]]:
    """``(role, ids)`` per message as ChatGLM3's build_single_message makes them, after [gMASK] sop."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    pieces = [("prefix", tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"]))]
    for m in messages:
        role_id = tokenizer.convert_tokens_to_ids(f"<|{m['role']}|>")
        pieces.append((m["role"], [role_id, *sp.encode("\n"), *sp.encode(m["content"])]))
    return pieces


def expected_labels(pieces: list[tuple[str, list[int]]], *, eos: int, only_last: bool) -> tuple[list[int], list[int]]:
    """Assistant turns after their role token, the next role token (<|user|>) and a final </s>."""
    last = max(i for i, (role, _) in enumerate(pieces) if role == "assistant")
    ids: list[int] = []
    labels: list[int] = []
    trained_before = False
    for i, (role, piece) in enumerate(pieces):
        trained = role == "assistant" and (not only_last or i == last)
        piece_labels = [IGNORE] + piece[1:] if trained else [IGNORE] * len(piece)
        if trained_before:
            piece_labels[0] = piece[0]  # the end token of the previous assistant turn
        ids += piece
        labels += piece_labels
        trained_before = trained
    if trained_before:
        ids.append(eos)
        labels.append(eos)
    return ids, labels


@pytest.mark.parametrize("only_last", [False, True], ids=["every-turn", "last-turn-only"])
def test_label_mask_token_by_token(chatglm3_legacy_path: Path, chatglm3_tokenizer: Any, only_last: bool) -> None:
    stop = set(chatglm3_tokenizer.convert_tokens_to_ids(["</s>", "<|user|>", "<|observation|>"]))
    example = tokenize_conversation(CONVERSATION, chatglm3_tokenizer, stop_ids=stop, last_turn_only=only_last)
    ids, labels = expected_labels(
        original_pieces(chatglm3_legacy_path, chatglm3_tokenizer, CONVERSATION), eos=2, only_last=only_last
    )
    assert example.input_ids == ids
    for position, (got, want) in enumerate(zip(example.labels, labels, strict=True)):
        token = chatglm3_tokenizer.convert_ids_to_tokens(ids[position])
        assert got == want, f"token {position} {token!r}: label {got}, expected {want}"
    trained = chatglm3_tokenizer.decode([t for t in example.labels if t != IGNORE])
    assert "刘备字玄德" in trained if not only_last else "刘备字玄德" not in trained
    assert "关羽和张飞" in trained and "他的结义兄弟" not in trained and "三国历史助手" not in trained


def test_inference_prompt_is_a_prefix_of_the_training_ids(chatglm3_tokenizer: Any) -> None:
    """What the model sees at inference (template + generation prompt) is exactly how training starts the answer."""
    example = tokenize_conversation(CONVERSATION[:3], chatglm3_tokenizer, stop_ids={2})
    prompt = chatglm3_tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    prompt_ids = chatglm3_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE for label in example.labels[: len(prompt_ids)])
    assert all(label != IGNORE for label in example.labels[len(prompt_ids) :])


def test_line_without_an_assistant_turn(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    lines = [{"conversations": CONVERSATION}, {"conversations": [{"role": "user", "content": "只有问题"}]}]
    data.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines), encoding="utf-8")
    with pytest.raises(BadInput) as e:
        read_conversations(data)
    assert str(e.value).startswith(f"{data} line 2: no assistant turn") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 1: not valid JSON"),
        ('{"messages": []}', 'line 1: needs a non-empty "conversations" list'),
        ('{"conversations": [{"role": "bot", "content": "x"}]}', "line 1: every message needs a role"),
    ],
)
def test_other_bad_lines(tmp_path: Path, line: str, message: str) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(BadInput, match=message):
        read_conversations(data)


def test_too_long_conversation_is_refused(tmp_path: Path, chatglm3_tokenizer: Any) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"conversations": CONVERSATION}, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(BadInput, match="no assistant token within the first 8 tokens"):
        load_examples(data, chatglm3_tokenizer, stop_ids={2}, last_turn_only=False, max_length=8)
