"""Concurrent generations of one model, run together as one batch.

A model generates one batch at a time on its worker thread (``llm.streaming.model_worker``).
Without this module every request waits for the whole answers of those before it. Here a
request that arrives while the model is busy waits in a bounded queue; when the running batch
ends (or yields to it, below), every waiting request with the same sampling settings starts
together as one batch (left-padded prompts), each row streaming to its own consumer and ending
on its own eos, ``max_new_tokens`` or cancellation, without disturbing the others. On a GPU a
decode step of 16 rows costs about what one row costs (the batched map stage: 12x one-by-one,
docs/PERFORMANCE.md), so 16 users are served in about the time of one.

Rows join at step boundaries: a generation (a batch, or a request running alone) that has run a
while (``llm.batch_yield``) when a request that could share its batch waits, and has room for it,
stops at the next token (``YieldRequest``, polled with the cancel events). Its unfinished rows go
back to the front of the queue with the tokens they produced as part of their context, and start
again at once with the waiting ones. A consumer sees one unbroken stream. Past ``max_queue``
waiting requests, ``Busy`` (503, "retry") answers at once instead of an unbounded wait.

A request that finds the model free runs alone, exactly as without this module (``admit_solo``;
``llm.solo_stream.run_alone``, through ``stream_token_ids``). Batches take the fast decode path when
the rows ask for it: per-row eos, budget and cancellation live in the ``RowDispatcher`` (the
streamer, ``llm.batch_rows``), and the loop ends once every row ended (``RowsDone``, a
cancel event the decode graph polls), so a batch is one ``fast_generate`` call. Batches are
padded with filler rows to a power of two, so the compiled decode graphs come in a few batch
sizes (1, 2, 4, 8, 16...) instead of one compile per size.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from configs.errors import Unavailable
from llm.batch_rows import (
    Row,
    RowDispatcher,
    RowsDone,
    batch_bucket,
    eos_ids,
    left_padded,
    min_new_tokens,
    pad_token_id,
)
from llm.batch_yield import YieldRequest
from llm.per_model import PerModel
from llm.streaming import CancelCriteria, FastDecode, generate_on_worker, model_is_busy, model_worker, queued_items

GATHER_S = 0.05  # longest a batch waits for requests still being tokenized (only while there are some)


class Busy(Unavailable):
    """The model's queue is full; the client should retry later (HTTP 503)."""


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

    def resume(self, row: Row) -> Iterator[int]:
        """The rest of a request that ran alone and yielded (its ``YieldRequest`` fired): its ``row``,
        with the tokens it produced so far as part of its context, queued at the front; its new token
        ids."""
        with self._lock:
            self._arriving = max(0, self._arriving - 1)  # counted when its yield fired
            self._pending.insert(0, row)
        self._schedule()
        return self._row_tokens(row)

    def waiting(self) -> bool:
        """Whether any request waits (read without the lock: a ``YieldRequest``'s cheap first check)."""
        return bool(self._pending)

    def take_yield(self, key: tuple[Any, ...], *, live: int, solo: bool) -> bool:
        """Whether a running generation of ``live`` rows and batch ``key`` should yield now: a waiting
        request shares its key and the batch has room. A request running alone (``solo``) that yields
        is counted as arriving, so that the next batch waits (``GATHER_S``) for its consumer to queue
        its rest (``SoloStream``)."""
        with self._lock:
            if live >= self.max_batch or not any(row.key() == key for row in self._pending):
                return False
            if solo:
                self._arriving += 1
            return True

    def _enqueue(
        self, generate_kwargs: dict[str, Any], cancel: threading.Event, fast_decode: FastDecode, *, arrived: bool
    ) -> Row:
        row = Row.of(generate_kwargs, cancel, fast_decode)
        with self._lock:
            if arrived:
                self._arriving = max(0, self._arriving - 1)
            if len(self._pending) >= self.max_queue:
                raise Busy(f"the model is busy ({self.max_queue} requests waiting); retry in a moment")
            self._pending.append(row)
        self._schedule()
        return row

    def _schedule(self) -> None:
        """Make sure a ``_run_batches`` is on its way to the model's worker."""
        with self._lock:
            start = not self._scheduled
            self._scheduled = True
        if start:
            # Taking the worker's lock can wait for another generation: never on the caller.
            threading.Thread(target=self._submit, name="glmkb-batch-submit", daemon=True).start()

    def _submit(self) -> None:
        model_worker(self.model).submit(self._run_batches)

    def _run_batches(self) -> None:
        """On the worker thread: run batches until no row waits. Rows of a batch that yielded go back
        to the front of the queue, not closed."""
        while True:
            self._gather()
            with self._lock:
                batch = self._take_batch()
                if not batch:
                    self._scheduled = False
                    return
            rest: list[Row] = []
            try:
                with torch.inference_mode():
                    rest = self._generate(batch)
                with self._lock:
                    self._pending[:0] = rest
            except BaseException as e:  # every row's consumer re-raises it
                rest = []
                for row in batch:
                    row.close(e)
            finally:
                for row in batch:
                    if row not in rest:
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

    def _generate(self, rows: list[Row]) -> list[Row]:
        """One ``generate`` (or fast path) call over the rows' contexts, left-padded to one length; on
        the fast path filler rows (the first context again) round the batch up to a power of two.
        Returns the rows to start again (the call yielded to waiting requests before they ended)."""
        shared = dict(rows[0].shared)
        pad_id = pad_token_id(self.model, shared)
        contexts = [row.context() for row in rows]
        if rows[0].fast_decode is not None:
            contexts += [contexts[0]] * (batch_bucket(len(rows)) - len(rows))
        input_ids, attention_mask = left_padded(contexts, pad_id)
        yielding = YieldRequest(self, rows[0].key(), lambda: sum(not row.done for row in rows), solo=False)
        kwargs = {
            **shared,
            "input_ids": input_ids,  # moved to the model's device by generate_on_worker
            "attention_mask": attention_mask,
            "max_new_tokens": max(row.remaining() for row in rows),
            **min_new_tokens(shared, rows),
            "streamer": RowDispatcher(rows, eos_ids(self.model, shared), yielding),
            "stopping_criteria": [CancelCriteria(RowsDone(rows)), CancelCriteria(yielding)],  # type: ignore[arg-type]
            "pad_token_id": pad_id,
        }
        generate_on_worker(self.model, kwargs, fast_decode=rows[0].fast_decode)
        if not yielding.fired:
            return []
        return [row for row in rows if not row.done and not row.cancel.is_set() and row.remaining() > 0]


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
