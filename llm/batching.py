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

A request that finds the model free runs alone, exactly as without this module
(``admit_solo``; ``llm.ChatGLM`` streams it through ``stream_token_ids``). Batches take the fast
decode path when the rows ask for it: per-row eos, budget and cancellation live in the
``RowDispatcher`` (the streamer), and the loop ends once every row ended (``RowsDone``, a
cancel event the decode graph polls), so a batch is one ``fast_generate`` call. Batches are
padded with filler rows to a power of two, so the compiled decode graphs come in a few batch
sizes (1, 2, 4, 8, 16...) instead of one compile per size.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from configs.errors import Unavailable
from llm.per_model import PerModel
from llm.streaming import (
    END,
    CancelCriteria,
    FastDecode,
    generate_on_worker,
    model_is_busy,
    model_worker,
    queued_items,
)

GATHER_S = 0.05  # longest a batch waits for requests still being tokenized (only while there are some)
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
    fast_decode: Any = None
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    done: bool = False
    produced: int = 0
    finished: threading.Event = field(default_factory=threading.Event)

    def key(self) -> tuple[Any, ...]:
        """Rows with equal keys can share a generate call (same sampling settings, processors and path)."""
        return (*sorted((k, _hashable(v)) for k, v in self.shared.items()), ("fast_decode", self.fast_decode))

    def close(self, item: Any = END) -> None:
        if not self.done:
            self.done = True
            self.out.put(item)
        self.finished.set()


class RowDispatcher(BaseStreamer):
    """Hands each row's new token to that row's consumer and ends the row on its own eos, its own
    ``max_new_tokens`` or its cancel event; ignores the tokens of ended rows and filler rows."""

    def __init__(self, rows: Sequence[Row], eos_ids: set[int]) -> None:
        self.rows = rows
        self.eos_ids = eos_ids
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
            row.out.put(token)
            row.produced += 1
            if token in self.eos_ids or row.produced >= row.max_new_tokens:
                row.close()

    def end(self) -> None:
        for row in self.rows:
            row.close()


class RowsDone:
    """An event-like flag (``is_set``) that is set once every row ended or was cancelled: wrapped
    in ``CancelCriteria`` it ends ``generate`` and the decode graph's loop alike."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = rows

    def is_set(self) -> bool:
        return all(row.done or row.cancel.is_set() for row in self.rows)


class BatchScheduler:
    """The waiting rows of one model and the loop that runs them in batches on its worker."""

    def __init__(self, model: Any, *, max_batch: int = 16, max_queue: int = 64) -> None:
        # Weakly: the per-model registry keeps schedulers in a WeakKeyDictionary keyed by the model.
        self._model = weakref.ref(model)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._pending: list[Row] = []
        self._lock = threading.Lock()
        self._scheduled = False
        self._solo = 0
        self._arriving = 0

    @property
    def model(self) -> Any:
        model = self._model()
        if model is None:
            raise RuntimeError("BatchScheduler: its model was freed")
        return model

    def arrive(self) -> None:
        """A request is being prepared (prompt rendered and tokenized): a batch about to start
        waits for it (at most ``GATHER_S``), so requests that arrive together start together."""
        with self._lock:
            self._arriving += 1

    def leave(self) -> None:
        """The ``arrive``d request will not be queued (it failed, or runs outside the scheduler)."""
        with self._lock:
            self._arriving = max(0, self._arriving - 1)

    def admit_solo(self, *, arrived: bool = False) -> bool:
        """True when the model is free and nobody waits or is arriving: the caller runs its request
        alone now (and calls ``solo_done`` after); False: it should queue (``stream``) to join the
        next batch. ``arrived``: the caller had called ``arrive`` (consumed here when admitted, else
        by ``stream``)."""
        with self._lock:
            others_arriving = self._arriving - (1 if arrived else 0)
            if self._solo or self._scheduled or self._pending or others_arriving > 0 or model_is_busy(self.model):
                return False  # the caller's arrival still counts until it is queued
            if arrived:
                self._arriving -= 1
            self._solo += 1
            return True

    def solo_done(self) -> None:
        with self._lock:
            self._solo = max(0, self._solo - 1)

    def check_capacity(self) -> None:
        """Raise ``Busy`` now when the queue is full (servers call it before starting a response)."""
        with self._lock:
            if len(self._pending) >= self.max_queue:
                raise Busy(f"the model is busy ({self.max_queue} requests waiting); retry in a moment")

    def stream(
        self,
        generate_kwargs: dict[str, Any],
        cancel: threading.Event,
        *,
        fast_decode: FastDecode = None,
        arrived: bool = False,
    ) -> Iterator[int]:
        """Queue one generation (``input_ids`` of one row) now (``Busy`` when the queue is full) and
        return an iterator of its new token ids as they come.

        ``fast_decode``: the options a batch of such rows runs the fast path with (rows with other
        options run in other batches). Closing the iterator cancels the row (it stops within a
        token; other rows go on). ``arrived``: the caller had called ``arrive``.
        """
        return self._row_tokens(self._enqueue(generate_kwargs, cancel, fast_decode, arrived=arrived))

    def _row_tokens(self, row: Row) -> Iterator[int]:
        """The queued ``row``'s token ids as they come; closing this cancels the row."""
        try:
            yield from queued_items(row.out)
        finally:
            row.cancel.set()
            with self._lock:
                if row in self._pending:  # never started: leave the queue now
                    self._pending.remove(row)
                    row.close()
            row.finished.wait()

    def _enqueue(
        self, generate_kwargs: dict[str, Any], cancel: threading.Event, fast_decode: FastDecode, *, arrived: bool
    ) -> Row:
        ids = generate_kwargs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("BatchScheduler.stream takes one prompt at a time")
        mask = generate_kwargs.get("attention_mask")
        prompt = ids[0][mask[0].bool()].tolist() if mask is not None else ids[0].tolist()
        shared = {k: v for k, v in generate_kwargs.items() if k not in ROW_ARGS}
        row = Row(prompt, int(generate_kwargs.get("max_new_tokens") or 256), cancel, shared, fast_decode or None)
        with self._lock:
            if arrived:
                self._arriving = max(0, self._arriving - 1)
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
        model_worker(self.model).submit(self._run_batches)

    def _run_batches(self) -> None:
        """On the worker thread: run batches until no row waits."""
        while True:
            self._gather()
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

    def _gather(self) -> None:
        """Wait (at most ``GATHER_S``) while requests are still being prepared and the batch has room.

        Why: requests sent together (a burst of users, a benchmark's start line) would otherwise
        split into a first batch of the one tokenized first and a second batch of all the others,
        which waits for the whole first answer (one answer's time, ~1 s at 256 tokens on 6B).
        """
        deadline = time.monotonic() + GATHER_S
        while time.monotonic() < deadline:
            with self._lock:
                if not self._arriving or len(self._pending) >= self.max_batch:
                    return
            time.sleep(0.0005)

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
        """One ``generate`` (or fast path) call over the rows, prompts left-padded to one length;
        on the fast path filler rows (the first prompt again) round the batch up to a power of two."""
        shared = dict(rows[0].shared)
        pad_id = shared.get("pad_token_id")
        pad_id = _pad_token_id(self.model) if pad_id is None else int(pad_id)
        prompts = [row.prompt for row in rows]
        if rows[0].fast_decode is not None:
            prompts += [rows[0].prompt] * (batch_bucket(len(rows)) - len(rows))
        length = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, length - len(prompt) :] = torch.tensor(prompt)
            attention_mask[i, length - len(prompt) :] = 1
        eos = shared.get("eos_token_id", self.model.generation_config.eos_token_id)
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        device = self.model.device
        kwargs = {
            **shared,
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "max_new_tokens": max(row.max_new_tokens for row in rows),
            "streamer": RowDispatcher(rows, eos_ids),
            "stopping_criteria": [CancelCriteria(RowsDone(rows))],  # type: ignore[arg-type]
            "pad_token_id": pad_id,
        }
        generate_on_worker(self.model, kwargs, fast_decode=rows[0].fast_decode)


class SoloStream:
    """The token ids of a request admitted to run alone (``BatchScheduler.admit_solo``), telling
    the scheduler once it is over (ended or closed, even before its first token)."""

    def __init__(self, token_ids: Iterator[int], scheduler: BatchScheduler) -> None:
        self.token_ids = token_ids
        self.scheduler: BatchScheduler | None = scheduler

    def __iter__(self) -> SoloStream:
        return self

    def __next__(self) -> int:
        try:
            return next(self.token_ids)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.token_ids.close()  # type: ignore[attr-defined]
        finally:
            if self.scheduler is not None:
                self.scheduler, scheduler = None, self.scheduler
                scheduler.solo_done()

    def __del__(self) -> None:
        self.close()


def batch_bucket(size: int) -> int:
    """The batch size a fast-path batch of ``size`` rows runs at: the next power of two."""
    return 1 << (size - 1).bit_length()


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


class _Schedulers(PerModel[BatchScheduler]):
    """``PerModel`` whose factory gets the model (a scheduler must know what it runs)."""

    def __call__(self, model: Any) -> BatchScheduler:
        with self._lock:
            item = self._items.get(model)
            if item is None:
                item = self._items[model] = BatchScheduler(model)
            return item


batch_scheduler: PerModel[BatchScheduler] = _Schedulers(lambda: None)  # type: ignore[arg-type,return-value]
"""The scheduler of one model object, shared by every ChatGLM using it."""
