"""A reasoning model's thinking, kept apart from its answer (``<think>...</think>``).

GLM-Z1 and the other reasoning models of the GLM family (and DeepSeek-R1's distillations, Qwen3) write
their thinking before the answer, between ``<think>`` and ``</think>``; their chat templates often open
the block in the generation prompt already (``<|assistant|>\\n<think>``), so the output then starts inside
it and only the closing tag appears. The thinking is no part of the answer: a knowledge-base answer's
citations, a summary's map outputs, the chat history (GLM-Z1's own template drops it from earlier turns)
and an API client's ``content`` must not carry it. ``llm.answer_text`` splits every generated text here,
streamed or batched; the thinking goes out beside the answer (``reasoning_content``, the name DeepSeek's
API and LangChain's chat models use; glmkb's API also sends it as ``reasoning``, vLLM's name).

Only a block at the start of the output counts (after whitespace): that is where these models think, and
a model that writes ``<think>`` later in an answer is quoting it. A tag split across streamed pieces is
held back until it is whole; the answer after the block starts at its first non-space character.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = [
    "CLOSE", "OPEN", "ReasoningSplitter", "Split", "close_reasoning", "message_chunk", "opens_reasoning",
    "prompt_opens_reasoning", "split_reasoning", "thinking_off", "with_thinking",
]

OPEN, CLOSE = "<think>", "</think>"
_PROMPT_TAIL_TOKENS = 16  # enough to read "<think>" and what follows it at a prompt's end


class Split(NamedTuple):
    """What one piece of generated text held: thinking, then answer (either may be empty)."""

    reasoning: str
    answer: str


def opens_reasoning(prompt: str) -> bool:
    """Whether a rendered prompt ends inside an open ``<think>`` block: its output starts as thinking."""
    end = prompt.rstrip()
    return end.endswith(OPEN)


def close_reasoning(prompt: str) -> str:
    """``prompt`` with an open ``<think>`` block at its end closed empty (the model answers at once), as a
    template's own no-thinking form renders it; any other prompt as it is."""
    return prompt + CLOSE + "\n" if opens_reasoning(prompt) else prompt


def with_thinking(llm: Any, enable_thinking: bool | None) -> Any:
    """A shallow copy of ``llm`` (weights shared) with its ``enable_thinking`` set, where it has that field
    (``ChatGLM``, ``ChatGLMChat``); ``llm`` itself where it has none or ``enable_thinking`` is None."""
    if enable_thinking is None or llm is None or "enable_thinking" not in getattr(type(llm), "model_fields", {}):
        return llm
    return llm.model_copy(update={"enable_thinking": enable_thinking})


def thinking_off(llm: Any) -> dict[str, Any]:
    """The per-call keywords that turn ``llm``'s thinking off for a step whose thinking nobody reads (a
    follow-up's rewrite, a summary's or a whole-book answer's map notes): ``enable_thinking=False`` where
    ``llm`` has that field. Thinking counts against the step's token cap, and a GLM-Z1 spent a rewrite's
    whole cap thinking and wrote nothing. Not for a model whose switch goes to a server only when the
    settings set it (``switch_thinking_unasked`` False, ``enable_thinking`` None): a server that refuses
    unknown parameters is never sent one nobody asked for."""
    if "enable_thinking" not in getattr(type(llm), "model_fields", {}):
        return {}
    if not getattr(llm, "switch_thinking_unasked", True) and getattr(llm, "enable_thinking", None) is None:
        return {}
    return {"enable_thinking": False}


def prompt_opens_reasoning(input_ids: Any, *, tokenizer: Any) -> bool:
    """Whether a prompt's last tokens (a row of ``input_ids``) open a ``<think>`` block."""
    tail = input_ids[-_PROMPT_TAIL_TOKENS:]
    # One ``tolist`` for a tensor row: ``int()`` of each element was 16 tensor operators per request
    tail = tail.tolist() if hasattr(tail, "tolist") else [int(i) for i in tail]
    return opens_reasoning(tokenizer.decode(tail, skip_special_tokens=False))


class ReasoningSplitter:
    """Splits streamed text into thinking and answer (``feed`` each piece, then ``finish``)."""

    def __init__(self, *, thinking: bool = False) -> None:
        self._state = "thinking" if thinking else "start"
        self._held = ""  # text that may still be the start of a tag

    def feed(self, text: str) -> Split:
        """The thinking and the answer text this piece completes."""
        held = self._held + text
        self._held = ""
        if self._state == "start":
            return self._at_start(held)
        if self._state == "thinking":
            return self._in_thinking(held)
        if self._state == "closed":
            return self._after_thinking(held)
        return Split("", held)

    def finish(self) -> Split:
        """What is still held at the end of the output (a tag that never completed is text)."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return Split(held, "")
        return Split("", held)

    def _at_start(self, text: str) -> Split:
        body = text.lstrip()
        if body.startswith(OPEN):
            self._state = "thinking"
            return self._in_thinking(body[len(OPEN):])
        if OPEN.startswith(body):  # empty, or a tag still arriving
            self._held = text
            return Split("", "")
        self._state = "answer"
        return Split("", text)

    def _in_thinking(self, text: str) -> Split:
        reasoning, tag, answer = text.partition(CLOSE)
        if tag:
            self._state = "closed"
            return Split(reasoning, self._after_thinking(answer).answer)
        keep = _partial_tag_length(reasoning, CLOSE)
        self._held = reasoning[len(reasoning) - keep:] if keep else ""
        return Split(reasoning[: len(reasoning) - keep], "")

    def _after_thinking(self, text: str) -> Split:
        """The answer after ``</think>`` starts at its first non-space character (the blank lines between
        the two are dropped)."""
        text = text.lstrip()
        if text:
            self._state = "answer"
        return Split("", text)


def _partial_tag_length(text: str, tag: str) -> int:
    """How many of ``text``'s last characters are the beginning of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def split_reasoning(text: str, *, thinking: bool = False) -> Split:
    """A whole generated text split (``thinking``: the prompt opened the block)."""
    splitter = ReasoningSplitter(thinking=thinking)
    first, last = splitter.feed(text), splitter.finish()
    return Split(first.reasoning + last.reasoning, first.answer + last.answer)


def message_chunk(piece: Split) -> Any:
    """A piece as a LangChain ``AIMessageChunk``: the answer as content, the thinking as
    ``additional_kwargs["reasoning_content"]`` (where LangChain's ChatDeepSeek puts it)."""
    from langchain_core.messages import AIMessageChunk

    extra = {"reasoning_content": piece.reasoning} if piece.reasoning else {}
    return AIMessageChunk(content=piece.answer, additional_kwargs=extra)
