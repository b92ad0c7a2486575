"""Answer text from generated token ids (the one place that cleans it), streamed or batched.

Both paths of ``ChatGLM`` keep a reasoning model's thinking apart from the answer
(``llm.reasoning``), drop the answer's leading whitespace and end it before the first stop sequence:
``answer_pieces`` for a streamed generation (characters never split, a stop sequence never half
emitted), ``batch_answers`` for the rows of a batched ``generate``. Stop sequences apply to the
answer, not to the thinking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llm.reasoning import CLOSE, OPEN, ReasoningSplitter, Split, prompt_opens_reasoning, split_reasoning
from llm.streaming import GenerationStats, IncrementalDetokenizer, StopSequenceFilter, cut_at_stop

__all__ = ["answer_pieces", "batch_answers"]


def answer_pieces(
    token_ids: Iterator[int], *, tokenizer: Any, stop: Sequence[str] | None, stats: GenerationStats,
    thinking: bool = False,
) -> Iterator[Split]:
    """Thinking and answer pieces of streamed ``token_ids``, each token counted in ``stats``; closing this
    closes ``token_ids`` (stops generation). ``thinking``: the prompt opened a ``<think>`` block. An empty
    answer still yields one (empty) piece."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    tags = _skipped_tags(tokenizer)
    reasoning = ReasoningSplitter(thinking=thinking)
    stops = StopSequenceFilter(stop)
    answer_started = False
    emitted = False

    def clean(split: Split) -> Split:
        nonlocal answer_started
        text = split.answer
        if not answer_started:
            # GLM-4 answers start with "\n", ChatGLM3 with " \n" after <|assistant|>; drop both (as the originals do).
            text = text.lstrip()
            answer_started = bool(text)
        return Split(split.reasoning, stops.feed(text))

    try:
        for token_id in token_ids:
            stats.add(token_id)
            text = (detokenizer.flush() + tags[token_id]) if token_id in tags else detokenizer.add(token_id)
            piece = clean(reasoning.feed(text))
            if piece.reasoning or piece.answer:
                emitted = emitted or bool(piece.answer)
                yield piece
            if stops.stopped:
                stats.stop_sequence_seen()
                return
        last = reasoning.feed(detokenizer.flush())
        end = reasoning.finish()
        tail = clean(Split(last.reasoning + end.reasoning, last.answer + end.answer))
        tail = Split(tail.reasoning, tail.answer + stops.flush())
        if tail.reasoning or tail.answer or not emitted:
            yield tail  # an empty answer still yields one (empty) piece
    finally:
        token_ids.close()  # type: ignore[attr-defined]


def batch_answers(output: Any, *, prompt_length: int, tokenizer: Any, stop: Sequence[str] | None) -> list[Split]:
    """The thinking and the answer of each row of a batched ``generate`` ``output``: new tokens decoded,
    cleaned as streams are."""
    tags = _skipped_tags(tokenizer)
    special = set(tokenizer.all_special_ids) - set(tags) if tags else set()
    splits = []
    for row in output.tolist():
        new_ids = [i for i in row[prompt_length:] if i not in special]
        text = tokenizer.decode(new_ids, skip_special_tokens=not tags)
        split = split_reasoning(text, thinking=prompt_opens_reasoning(row[:prompt_length], tokenizer=tokenizer))
        splits.append(Split(split.reasoning, cut_at_stop(split.answer.lstrip(), stop)))
    return splits


def _skipped_tags(tokenizer: Any) -> dict[int, str]:
    """``<think>`` and ``</think>`` by id where the tokenizer counts them as special tokens, which decoding
    skips: their text is put back so that the thinking can still be told apart."""
    try:
        special = set(tokenizer.all_special_ids)
        ids = {tag: tokenizer.convert_tokens_to_ids(tag) for tag in (OPEN, CLOSE)}
    except (AttributeError, KeyError, TypeError, ValueError):  # a tokenizer without these lookups
        return {}
    unknown = getattr(tokenizer, "unk_token_id", None)
    return {i: tag for tag, i in ids.items() if isinstance(i, int) and i in special and i != unknown}
