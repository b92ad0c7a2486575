"""Answer text from generated token ids (the one place that cleans it), streamed or batched.

Both paths of ``ChatGLM`` drop the answer's leading whitespace and end it before the first
stop sequence: ``answer_pieces`` for a streamed generation (characters never split, a stop
sequence never half emitted), ``batch_answers`` for the rows of a batched ``generate``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llm.streaming import GenerationStats, IncrementalDetokenizer, StopSequenceFilter, cut_at_stop

__all__ = ["answer_pieces", "batch_answers"]


def answer_pieces(
    token_ids: Iterator[int], *, tokenizer: Any, stop: Sequence[str] | None, stats: GenerationStats
) -> Iterator[str]:
    """Text pieces of streamed ``token_ids``, each counted in ``stats``; closing this closes
    ``token_ids`` (stops generation). An empty answer still yields one (empty) piece."""
    detokenizer = IncrementalDetokenizer(tokenizer)
    stops = StopSequenceFilter(stop)
    answer_started = False
    emitted = False

    def clean(text: str) -> str:
        nonlocal answer_started
        if not answer_started:
            # GLM-4 answers start with "\n", ChatGLM3 with " \n" after <|assistant|>; drop both (as the originals do).
            text = text.lstrip()
            answer_started = bool(text)
        return stops.feed(text)

    try:
        for token_id in token_ids:
            stats.add(token_id)
            piece = clean(detokenizer.add(token_id))
            if piece:
                emitted = True
                yield piece
            if stops.stopped:
                stats.stop_sequence_seen()
                return
        tail = clean(detokenizer.flush()) + stops.flush()
        if tail or not emitted:
            yield tail  # an empty answer still yields one (empty) chunk
    finally:
        token_ids.close()  # type: ignore[attr-defined]


def batch_answers(output: Any, *, prompt_length: int, tokenizer: Any, stop: Sequence[str] | None) -> list[str]:
    """The answers in a batched ``generate`` ``output``: new tokens decoded, cleaned as streams are."""
    new_ids = output[:, prompt_length:].tolist()
    texts = tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    return [cut_at_stop(text.lstrip(), stop) for text in texts]
