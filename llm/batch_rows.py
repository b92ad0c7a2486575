"""The rows of a batch (``llm.batching``): one request each, its batch key, and the streamer that
hands each row its own tokens.

A row keeps the tokens it produced: when its generation yields to waiting requests
(``llm.batch_yield``) it starts again from its prompt and those tokens (``Row.context``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.streamers import BaseStreamer

from llm.streaming import END

if TYPE_CHECKING:
    from llm.batch_yield import YieldRequest

# Arguments that differ per row; every other generate argument must match to share a batch.
ROW_ARGS = frozenset({"input_ids", "attention_mask", "max_new_tokens", "stopping_criteria", "streamer"})
DEFAULT_BUDGET = 256  # max_new_tokens of a call that names none


@dataclass(eq=False)
class Row:
    """One request in a batch: its prompt, its budget, its consumer's queue and cancel event, and the
    tokens it has produced (part of its context when it starts again after a yield)."""

    prompt: list[int]
    max_new_tokens: int
    cancel: threading.Event
    shared: dict[str, Any]
    fast_decode: Any = None
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    done: bool = False
    produced: int = 0
    tokens: list[int] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    _key: tuple[Any, ...] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, generate_kwargs: dict[str, Any], cancel: threading.Event, fast_decode: Any) -> Row:
        """The row of a one-prompt ``generate`` call (its unmasked ids, its budget, its shared arguments)."""
        ids = generate_kwargs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("BatchScheduler.stream takes one prompt at a time")
        mask = generate_kwargs.get("attention_mask")
        prompt = ids[0][mask[0].bool()].tolist() if mask is not None else ids[0].tolist()
        budget = int(generate_kwargs.get("max_new_tokens") or DEFAULT_BUDGET)
        shared = {k: v for k, v in generate_kwargs.items() if k not in ROW_ARGS}
        return cls(prompt, budget, cancel, shared, fast_decode or None)

    def key(self) -> tuple[Any, ...]:
        """Rows with equal keys can share a generate call (same sampling settings, processors and path)."""
        if self._key is None:
            parts = sorted((k, _hashable(v)) for k, v in self.shared.items())
            self._key = (*parts, ("fast_decode", self.fast_decode))
        return self._key

    def context(self) -> list[int]:
        """What the row's next generation reads: its prompt and the tokens it produced so far."""
        return self.prompt + self.tokens

    def remaining(self) -> int:
        return self.max_new_tokens - self.produced

    def take(self, token: int) -> None:
        """A token the row produced, handed to its consumer."""
        self.out.put(token)
        self.tokens.append(token)
        self.produced += 1

    def close(self, item: Any = END) -> None:
        if not self.done:
            self.done = True
            self.out.put(item)
        self.finished.set()


class RowDispatcher(BaseStreamer):
    """Hands each row's new token to that row's consumer and ends the row on its own eos, its own
    ``max_new_tokens`` or its cancel event; ignores the tokens of ended rows and filler rows. At the
    generation's end it ends the rows still open, unless the generation yielded (``yielding``): those
    start again."""

    def __init__(self, rows: Sequence[Row], eos_ids: set[int], yielding: YieldRequest | None = None) -> None:
        self.rows = rows
        self.eos_ids = eos_ids
        self.yielding = yielding
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # generate() first pushes the prompts
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):  # filler rows come last
            if row.done:
                continue
            if row.cancel.is_set():
                row.close()
                continue
            row.take(token)
            if token in self.eos_ids or row.produced >= row.max_new_tokens:
                row.close()

    def end(self) -> None:
        if self.yielding is not None and self.yielding.fired:
            return
        for row in self.rows:
            row.close()


class RowsDone:
    """An event-like flag (``is_set``) that is set once every row ended or was cancelled: wrapped
    in ``CancelCriteria`` it ends ``generate`` and the decode graph's loop alike."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = rows

    def is_set(self) -> bool:
        return all(row.done or row.cancel.is_set() for row in self.rows)


def eos_ids(model: Any, shared: dict[str, Any]) -> set[int]:
    """The token ids that end a row: the call's ``eos_token_id``, else the model's."""
    eos = shared.get("eos_token_id", model.generation_config.eos_token_id)
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def pad_token_id(model: Any, shared: dict[str, Any]) -> int:
    """The call's ``pad_token_id``, else the model's, else its first eos id."""
    if shared.get("pad_token_id") is not None:
        return int(shared["pad_token_id"])
    config = model.generation_config
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = config.eos_token_id
    return int(eos[0] if isinstance(eos, list) else eos or 0)


def left_padded(contexts: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``contexts`` left-padded to one length, on the CPU."""
    length = max(len(c) for c in contexts)
    input_ids = torch.full((len(contexts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(contexts), length), dtype=torch.long)
    for i, context in enumerate(contexts):
        input_ids[i, length - len(context) :] = torch.tensor(context)
        attention_mask[i, length - len(context) :] = 1
    return input_ids, attention_mask


def min_new_tokens(shared: dict[str, Any], rows: Sequence[Row]) -> dict[str, int]:
    """A shared ``min_new_tokens`` counted from where the rows are: less what the least advanced row
    produced before a yield (one value for the batch: a row further on keeps eos off a little longer)."""
    if not shared.get("min_new_tokens"):
        return {}
    return {"min_new_tokens": max(0, int(shared["min_new_tokens"]) - min(row.produced for row in rows))}


def batch_bucket(size: int) -> int:
    """The batch size a fast-path batch of ``size`` rows runs at: the next power of two."""
    return 1 << (size - 1).bit_length()


def _hashable(value: Any) -> Any:
    """A key part for a generate argument: values by value, objects (processors) by identity."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return ("id", id(value))
