"""The tokenizer of original GLM-4 folders (THUDM/glm-4-9b-chat, codegeex4), as a transformers fast tokenizer.

THUDM's ``tokenization_chatglm.py`` for GLM-4 (remote code, ``ChatGLM4Tokenizer``) is tiktoken:
``tokenizer.model`` is not sentencepiece but one ``base64(token bytes) rank`` line per token,
split by a cl100k-style regex, and 14 special tokens follow the ranks in a fixed order
(``<|endoftext|>`` = number of ranks, 151329 in the real model). Converting that to a byte-level
BPE ``tokenizers`` model is what transformers' ``TikTokenConverter`` does (the -hf releases were
made that way); we only read the rank file ourselves, so the tiktoken package is not needed at
run time (the tests compare against it).

The chat template is the folder's own (``tokenizer_config.json``'s ``chat_template``, data the
authors ship), else GLM-4's message format: ``[gMASK]<sop>``, then ``<|role|>`` + metadata + "\\n"
+ content per message (``build_single_message``), then ``<|assistant|>``.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from llm.errors import ModelLoadError

# ChatGLM4Tokenizer's pre-tokenizer regex (cl100k's, digits in groups of at most three).
GLM4_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# In id order, right after the ranks.
GLM4_SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
)
EOS_TOKEN = "<|endoftext|>"
STOP_TOKENS = (EOS_TOKEN, "<|user|>", "<|observation|>")  # as the released generation_config's eos_token_id
GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message.get('metadata') or '' }}{{ '\\n' }}{{ message['content'] or '' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def is_tiktoken_file(file: Path) -> bool:
    """Whether ``file`` starts like a tiktoken rank file (``base64 rank``), not a sentencepiece protobuf."""
    try:
        with file.open("rb") as handle:
            first = handle.readline(4096).split()
    except OSError:
        return False
    return len(first) == 2 and first[1].isdigit() and _is_base64(first[0])


def _is_base64(data: bytes) -> bool:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def read_tiktoken_ranks(file: Path) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a tiktoken file; ranks must be 0..n-1 (the special ids follow them)."""
    ranks: dict[bytes, int] = {}
    try:
        lines = file.read_bytes().splitlines()
    except OSError as e:
        raise ModelLoadError(f"cannot read {file} ({e}); copy tokenizer.model from the model's download again") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as e:
            raise ModelLoadError(
                f"{file}, line {number}: not a 'base64-token rank' line of a GLM-4 tiktoken tokenizer ({e})"
            ) from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ModelLoadError(f"{file}: token ranks are not 0..{len(ranks) - 1} without gaps; the file is damaged")
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise ModelLoadError(
            f"{file} lacks {len(missing)} of the 256 single-byte tokens a byte-level tokenizer needs to encode any "
            "text (e.g. byte 0x%02x); it is not a complete GLM-4 tokenizer.model" % missing[0]
        )
    return ranks


class _RanksConverter(TikTokenConverter):
    """transformers' tiktoken -> byte-level BPE conversion, over ranks already read."""

    def __init__(self, ranks: dict[bytes, int]) -> None:
        super().__init__(vocab_file="", pattern=GLM4_PATTERN, extra_special_tokens=list(GLM4_SPECIAL_TOKENS))
        self._ranks = ranks

    def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:  # type: ignore[override]
        return self._ranks


def load_glm4_tokenizer(path: Path, *, file_name: str = "tokenizer.model") -> PreTrainedTokenizerFast:
    """The GLM-4 folder's tokenizer with its chat template, special ids checked against the ranks."""
    file = path / file_name
    ranks = read_tiktoken_ranks(file)
    backend = _RanksConverter(ranks).converted()
    check_special_ids(backend, first_id=len(ranks), file=file)
    backend.post_processor = glm4_post_processor(backend)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,  # as ChatGLM4Tokenizer's tokenizer_config.json
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=folder_chat_template(path) or GLM4_CHAT_TEMPLATE,
    )


def check_special_ids(backend: Tokenizer, *, first_id: int, file: Path) -> None:
    """Each special token at number of ranks + its offset, as ChatGLM4Tokenizer numbers them."""
    from llm.chatglm_tokenizer import require_id

    for offset, token in enumerate(GLM4_SPECIAL_TOKENS):
        require_id(backend, token, first_id + offset, file=file, rule="ranks + offset", model="GLM-4")


def glm4_post_processor(backend: Tokenizer) -> processors.PostProcessor:
    """``[gMASK] <sop>`` before a text (build_inputs_with_special_tokens), bytes kept as they are."""
    ids = [(token, backend.token_to_id(token)) for token in ("[gMASK]", "<sop>", EOS_TOKEN)]
    return processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="[gMASK] <sop> $A", pair=f"[gMASK] <sop> $A $B:1 {EOS_TOKEN}:1",
                                      special_tokens=ids),
    ])


def folder_chat_template(path: Path) -> str | None:
    """``chat_template`` from the folder's tokenizer_config.json (a string; None if absent or unreadable)."""
    config_file = path / "tokenizer_config.json"
    try:
        config: Any = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    return template if isinstance(template, str) and template.strip() else None
