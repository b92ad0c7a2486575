"""Concurrent generations of one model, run together as one batch.

A model generates one batch at a time on its worker thread (``llm.streaming.model_worker``).
Without this module every request waits for the whole answers of those before it. Here a
request that arrives while the model is busy waits in a bounded queue; when the running batch
ends, every waiting request with the same sampling settings starts together as one batch
(left-padded prompts), each row streaming to its own consumer and ending on its own eos,
``max_new_tokens`` or cancellation, without disturbing the others. On a GPU a decode step of
16 rows costs about what one row costs (the batched map stage: 12x one-by-one, docs/
PERFORMANCE.md), so 16 users are served in about the time of one.

Rows join at batch boundaries, not inside a running batch: a request that arrives mid-batch
waits for that batch to end (at most one answer's length). Past ``max_queue`` waiting
requests, ``Busy`` (503, "retry") answers at once instead of an unbounded wait.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from configs.errors import Unavailable
from llm.per_model import PerModel

_END = object()
# Arguments that differ per row; every other generate argument must match to share a batch.
ROW_ARGS = frozenset({"input_ids", "attention_mask", "max_new_tokens", "stopping_criteria", "streamer"})


class Busy(Unavailable):
    """The model's queue is full; the client should retry later (HTTP 503)."""


@dataclass(eq=False)
class Row:
    """One request in a batch: its prompt, its budget, its consumer's queue and cancel event."""

    prompt: list[int]
    max_new_tokens: int
    cancel: threading.Event
    shared: dict[str, Any]
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    done: bool = False
    last_token_pending: bool = False
    finished: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple[Any, ...]:
        """Rows with equal keys can share a generate call (same sampling settings and processors)."""
        return tuple(sorted((k, _hashable(v)) for k, v in self.shared.items()))

    def close(self, item: Any = _END) -> None:
        if not self.done:
            self.done = True
            self.out.put(item)
        self.finished.set()


class RowDispatcher(BaseStreamer):
    """Hands each row's new token to that row's consumer; ignores padding after a row ended."""

    def __init__(self, rows: Sequence[Row], eos_ids: set[int]) -> None:
        self.rows = rows
        self.eos_ids = eos_ids
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # generate() first pushes the prompts
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            if row.done:
                continue
            row.out.put(token)
            if token in self.eos_ids or row.last_token_pending:
                row.close()

    def end(self) -> None:
        for row in self.rows:
            row.close()


class RowStopCriteria(StoppingCriteria):
    """Per-row stop: a row ends at its own ``max_new_tokens``, on cancel, or once it ended.

    transformers evaluates stopping criteria before it hands the step's tokens to the streamer,
    so a row that reaches its budget is only marked here; the dispatcher closes it after
    delivering that last token.
    """

    def __init__(self, rows: Sequence[Row], prompt_length: int) -> None:
        self.rows = rows
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        produced = input_ids.shape[1] - self.prompt_length
        stop = []
        for row in self.rows:
            if row.cancel.is_set():
                row.close()
            elif not row.done and produced >= row.max_new_tokens:
                row.last_token_pending = True
            stop.append(row.done or row.last_token_pending)
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)


class BatchScheduler:
    """The waiting rows of one model and the loop that runs them in batches on its worker."""

    def __init__(self, model: Any, *, max_batch: int = 16, max_queue: int = 64) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._pending: list[Row] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def stream(self, generate_kwargs: dict[str, Any], cancel: threading.Event) -> Iterator[int]:
        """Queue one generation (``input_ids`` of one row) and yield its new token ids as they come.

        Closing the iterator cancels the row (it stops within a token; other rows go on).
        """
        row = self._enqueue(generate_kwargs, cancel)
        try:
            while True:
                item = row.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()
            with self._lock:
                if row in self._pending:  # never started: leave the queue now
                    self._pending.remove(row)
                    row.close()
            row.finished.wait()

    def _enqueue(self, generate_kwargs: dict[str, Any], cancel: threading.Event) -> Row:
        ids = generate_kwargs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("BatchScheduler.stream takes one prompt at a time")
        mask = generate_kwargs.get("attention_mask")
        prompt = ids[0][mask[0].bool()].tolist() if mask is not None else ids[0].tolist()
        shared = {k: v for k, v in generate_kwargs.items() if k not in ROW_ARGS}
        row = Row(prompt, int(generate_kwargs.get("max_new_tokens") or 256), cancel, shared)
        with self._lock:
            if len(self._pending) >= self.max_queue:
                raise Busy(f"the model is busy ({self.max_queue} requests waiting); retry in a moment")
            self._pending.append(row)
            start = not self._scheduled
            self._scheduled = True
        if start:
            # Taking the worker's lock can wait for another generation: never on the caller.
            threading.Thread(target=self._submit, name="glmkb-batch-submit", daemon=True).start()
        return row

    def _submit(self) -> None:
        from llm.streaming import model_worker

        model_worker(self.model).submit(self._run_batches)

    def _run_batches(self) -> None:
        """On the worker thread: run batches until no row waits."""
        while True:
            with self._lock:
                batch = self._take_batch()
                if not batch:
                    self._scheduled = False
                    return
            try:
                with torch.inference_mode():
                    self._generate(batch)
            except BaseException as e:  # every row's consumer re-raises it
                for row in batch:
                    row.close(e)
            finally:
                for row in batch:
                    row.close()

    def _take_batch(self) -> list[Row]:
        """The first waiting row and up to ``max_batch - 1`` later rows with its settings."""
        if not self._pending:
            return []
        key = self._pending[0].key()
        batch = [row for row in self._pending if row.key() == key][: self.max_batch]
        for row in batch:
            self._pending.remove(row)
        return batch

    def _generate(self, rows: list[Row]) -> None:
        """One ``generate`` over the rows, prompts left-padded to one length."""
        pad_id = _pad_token_id(self.model)
        length = max(len(row.prompt) for row in rows)
        device = self.model.device
        input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, length - len(row.prompt) :] = torch.tensor(row.prompt)
            attention_mask[i, length - len(row.prompt) :] = 1
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max(row.max_new_tokens for row in rows),
            streamer=RowDispatcher(rows, eos_ids),
            stopping_criteria=[RowStopCriteria(rows, length)],
            pad_token_id=pad_id,
            **rows[0].shared,
        )


def _pad_token_id(model: Any) -> int:
    config = model.generation_config
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    eos = config.eos_token_id
    return int(eos[0] if isinstance(eos, list) else eos or 0)


def _hashable(value: Any) -> Any:
    """A key part for a generate argument: values by value, objects (processors) by identity."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return ("id", id(value))


batch_scheduler: PerModel[BatchScheduler] = PerModel(BatchScheduler)
"""The scheduler of one model object, shared by every ChatGLM using it."""
