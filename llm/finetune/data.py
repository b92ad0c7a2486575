"""Conversations (ChatGLM3's JSONL ``{"conversations": [{"role", "content"}, ...]}``) as token ids and labels.

Each conversation is rendered with the model's own chat template (the text glmkb feeds the model
at inference), one message at a time: message ``k``'s text is what the template adds for it after
messages ``0..k-1``, so ids are the concatenation of per-message pieces. Messages start at role
tokens (ChatGLM3, GLM-4), so this equals tokenizing the whole text; for ChatGLM2 (no role tokens)
it is the official script's split (prompt and answer encoded separately).

Labels (the loss): every assistant turn's tokens after its role header (ChatGLM3: the
``<|assistant|>`` token; what ``add_generation_prompt`` adds), and its end token: the next
message's first token when that is a stop token (``<|user|>``/``<|observation|>``), or an appended
``</s>`` after the last turn; nothing else (system, user, observation, role headers, padding) is
-100. ``last_turn_only`` keeps only the last assistant turn, as ChatGLM2's ``ptuning/main.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.errors import BadInput

IGNORE = -100
ROLES = ("system", "user", "assistant", "observation")


@dataclass(frozen=True)
class Example:
    """One tokenized conversation: ids and labels of equal length (labels -100 where no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def read_conversations(path: str | Path) -> list[list[dict[str, Any]]]:
    """The conversations of a JSONL file, each checked: known roles, string contents, an assistant turn."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read training data {file}: {e}") from e
    conversations = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            conversations.append(parse_line(line, where=f"{file} line {number}"))
    if not conversations:
        raise BadInput(f"{file} holds no conversations; write one JSON object per line: {{\"conversations\": [...]}}")
    return conversations


def parse_line(line: str, *, where: str) -> list[dict[str, Any]]:
    """One JSONL line's messages, or a one-line ``BadInput`` naming the line and the fix."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{where}: not valid JSON ({e.msg})") from e
    messages = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise BadInput(f'{where}: needs a non-empty "conversations" list of {{"role", "content"}} messages')
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise BadInput(f"{where}: every message needs a role among {', '.join(ROLES)} (got {message!r:.80})")
        if not isinstance(message.get("content", ""), str):
            raise BadInput(f"{where}: message content must be a string")
    if not any(message["role"] == "assistant" for message in messages):
        raise BadInput(f"{where}: no assistant turn, so nothing to learn from; every conversation needs an assistant message")
    return messages


def tokenize_conversation(
    messages: list[dict[str, Any]],
    tokenizer: Any,
    *,
    stop_ids: set[int],
    last_turn_only: bool = False,
    max_length: int | None = None,
) -> Example:
    """Ids and labels for one conversation (see the module docstring), cut to ``max_length``."""
    header = assistant_header(tokenizer, messages)
    ids: list[int] = []
    labels: list[int] = []
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    previous = ""  # the first piece also holds the template's opening ("[gMASK]sop")
    ends_turn = False  # the previous message was a trained assistant turn
    for k, message in enumerate(messages):
        text = render(tokenizer, messages[: k + 1])
        piece = text[len(previous) :]
        previous = text
        trained = message["role"] == "assistant" and (not last_turn_only or k == last_assistant)
        piece_ids, piece_labels = encode_piece(tokenizer, piece, header=header if trained else None, where=k)
        if ends_turn and piece_ids and piece_ids[0] in stop_ids:
            piece_labels[0] = piece_ids[0]
        ids += piece_ids
        labels += piece_labels
        ends_turn = trained
    if ends_turn:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return Example(ids, labels)


def encode_piece(tokenizer: Any, piece: str, *, header: str | None, where: int) -> tuple[list[int], list[int]]:
    """A message's ids; with ``header`` (a trained assistant turn) everything after the header is labelled."""
    if header is None:
        ids = encode(tokenizer, piece)
        return ids, [IGNORE] * len(ids)
    at = piece.find(header)
    if at < 0:
        raise BadInput(f"message {where}: the chat template does not open assistant turns with {header!r}")
    cut = at + len(header)
    head, body = encode(tokenizer, piece[:cut]), encode(tokenizer, piece[cut:])
    return head + body, [IGNORE] * len(head) + body


def assistant_header(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """What the template adds to open an assistant turn (``add_generation_prompt``): ChatGLM3 ``<|assistant|>``."""
    first_user = [m for m in messages if m["role"] != "assistant"][:1] or [{"role": "user", "content": "x"}]
    plain = render(tokenizer, first_user)
    prompted = render(tokenizer, first_user, generation_prompt=True)
    return prompted[len(plain) :]


def render(tokenizer: Any, messages: list[dict[str, Any]], *, generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja's TemplateError from raise_exception (e.g. a role ChatGLM2 has not)
        raise BadInput(f"the model's chat template cannot render this conversation: {e}") from e


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens that end an answer at inference (the model's eos list, e.g. ChatGLM3's ``<|user|>``)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def load_examples(
    path: str | Path, tokenizer: Any, *, stop_ids: set[int], last_turn_only: bool, max_length: int
) -> list[Example]:
    """Every conversation of ``path`` tokenized; ones left without a trained token after cutting are refused."""
    examples = []
    for number, messages in enumerate(read_conversations(path), start=1):
        example = tokenize_conversation(
            messages, tokenizer, stop_ids=stop_ids, last_turn_only=last_turn_only, max_length=max_length
        )
        if not example.trained_tokens:
            raise BadInput(
                f"{path} conversation {number}: no assistant token within the first {max_length} tokens; "
                "raise --max-length or shorten the conversation"
            )
        examples.append(example)
    return examples
