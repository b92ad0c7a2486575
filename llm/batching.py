"""Concurrent generations of one model, run together as one batch.

A model generates one batch at a time on its worker thread (``llm.streaming.model_worker``).
Without this module every request waits for the whole answers of those before it. Here a
request that arrives while the model is busy waits in a bounded queue; when the running batch
ends (or yields to it, below), every waiting request with the same sampling settings starts
together as one batch (left-padded prompts), each row streaming to its own consumer and ending
on its own eos, ``max_new_tokens`` or cancellation, without disturbing the others. On a GPU a
decode step of 16 rows costs about what one row costs (the batched map stage: 12x one-by-one,
docs/PERFORMANCE.md), so 16 users are served in about the time of one.

Rows join at step boundaries: a generation (a batch, or a request running alone) that has run
``YIELD_AFTER_S`` and ``1 + PROMPT_PASS_SHARE`` times its own prompt pass while a request that
could share its batch waits, and has room for it, stops at the next token (``YieldRequest``, polled
with the cancel events). Its unfinished rows go back to the front of the queue with the tokens they
produced as part of their context, and start again at once with the waiting ones: one prompt pass
over those contexts instead of per-row cache positions in the decode graph. A consumer sees one
unbroken stream. Past ``max_queue`` waiting requests, ``Busy`` (503, "retry") answers at once
instead of an unbounded wait.

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
from collections.abc import Callable, Iterator, Sequence
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
# When a running generation yields to a waiting request: after YIELD_AFTER_S (a newcomer's time to
# first token, at most, when the batch has room and prompt passes are short), and not before it has run
# PROMPT_PASS_SHARE times as long as its own prompt pass took. Each yield costs one prompt pass over the
# running rows' contexts (prompt and answer so far): for 8 rows of 2k-token RAG prompts on the 6B model
# that is ~0.5 s, and yielding every 0.25 s under a steady stream of arrivals would leave no time to
# decode; this way prompt passes take at most ~1/PROMPT_PASS_SHARE of the time.
YIELD_AFTER_S = 0.25
PROMPT_PASS_SHARE = 4.0
# Arguments that differ per row; every other generate argument must match to share a batch.
ROW_ARGS = frozenset({"input_ids", "attention_mask", "max_new_tokens", "stopping_criteria", "streamer"})


class Busy(Unavailable):
    """The model's queue is full; the client should retry later (HTTP 503)."""


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

    def key(self) -> tuple[Any, ...]:
        """Rows with equal keys can share a generate call (same sampling settings, processors and path)."""
        if self._key is None:
            self._key = row_key(self.shared, self.fast_decode)
        return self._key

    def context(self) -> list[int]:
        """What the row's next generation reads: its prompt and the tokens it produced so far."""
        return self.prompt + self.tokens

    def remaining(self) -> int:
        return self.max_new_tokens - self.produced

    def close(self, item: Any = END) -> None:
        if not self.done:
            self.done = True
            self.out.put(item)
        self.finished.set()


def row_key(shared: dict[str, Any], fast_decode: Any) -> tuple[Any, ...]:
    """The batch key of a generation's shared arguments (``Row.key``; a request running alone has one too)."""
    return (*sorted((k, _hashable(v)) for k, v in shared.items()), ("fast_decode", fast_decode or None))


def shared_arguments(generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The generate arguments rows of one batch must share (all but the per-row ones)."""
    return {k: v for k, v in generate_kwargs.items() if k not in ROW_ARGS}


def eos_ids(model: Any, shared: dict[str, Any]) -> set[int]:
    """The token ids that end a row: the call's ``eos_token_id``, else the model's."""
    eos = shared.get("eos_token_id", model.generation_config.eos_token_id)
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


class YieldRequest:
    """Event-like (``is_set``): True once the running generation should stop at this token so that
    waiting requests can start with its unfinished rows. Polled every step, with the cancel events,
    by generate's stopping criteria and the fast path's loop: cheap until a request waits.

    It fires when a waiting request has the generation's batch key, the generation has room (fewer
    live rows than the batch size) and has run ``YIELD_AFTER_S`` and ``PROMPT_PASS_SHARE`` times its
    prompt pass (measured as the time to the first poll, which comes with the first token). For a
    request running alone it also counts that request's rest as arriving, so the next batch waits
    (``GATHER_S``) for its consumer to queue it (``SoloStream``)."""

    def __init__(self, scheduler: BatchScheduler, key: tuple[Any, ...], live: Callable[[], int], *, solo: bool) -> None:
        self.scheduler = scheduler
        self.key = key
        self.live = live
        self.solo = solo
        self.started = time.monotonic()
        self.not_before: float | None = None  # known at the first poll
        self.fired = False

    def is_set(self) -> bool:
        if self.fired:
            return True
        now = time.monotonic()
        if self.not_before is None:  # the first token: the prompt pass is over
            self.not_before = self.started + max(YIELD_AFTER_S, (1 + PROMPT_PASS_SHARE) * (now - self.started))
        scheduler = self.scheduler
        if not scheduler._pending or now < self.not_before:
            return False
        with scheduler._lock:
            if self.live() >= scheduler.max_batch or not any(row.key() == self.key for row in scheduler._pending):
                return False
            self.fired = True
            if self.solo:
                scheduler._arriving += 1  # the rest of the request, queued by its consumer
        return True


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
            row.out.put(token)
            row.tokens.append(token)
            row.produced += 1
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

    def resume(
        self, generate_kwargs: dict[str, Any], tokens: Sequence[int], cancel: threading.Event, *,
        fast_decode: FastDecode,
    ) -> Iterator[int]:
        """The rest of a request that ran alone and yielded (its ``YieldRequest`` fired): queued at the
        front with ``tokens``, what it produced so far, as part of its context; its new token ids."""
        row = self._row(generate_kwargs, cancel, fast_decode)
        row.tokens, row.produced = list(tokens), len(tokens)
        with self._lock:
            self._arriving = max(0, self._arriving - 1)  # counted when its yield fired
            self._pending.insert(0, row)
        self._schedule()
        return self._row_tokens(row)

    def solo_yield(self, generate_kwargs: dict[str, Any], *, fast_decode: FastDecode) -> YieldRequest:
        """The ``YieldRequest`` of a request admitted to run alone (``admit_solo``)."""
        return YieldRequest(self, row_key(shared_arguments(generate_kwargs), fast_decode), lambda: 1, solo=True)

    def _row(self, generate_kwargs: dict[str, Any], cancel: threading.Event, fast_decode: FastDecode) -> Row:
        ids = generate_kwargs["input_ids"]
        if ids.shape[0] != 1:
            raise ValueError("BatchScheduler.stream takes one prompt at a time")
        mask = generate_kwargs.get("attention_mask")
        prompt = ids[0][mask[0].bool()].tolist() if mask is not None else ids[0].tolist()
        budget = int(generate_kwargs.get("max_new_tokens") or 256)
        return Row(prompt, budget, cancel, shared_arguments(generate_kwargs), fast_decode or None)

    def _enqueue(
        self, generate_kwargs: dict[str, Any], cancel: threading.Event, fast_decode: FastDecode, *, arrived: bool
    ) -> Row:
        row = self._row(generate_kwargs, cancel, fast_decode)
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
        pad_id = shared.get("pad_token_id")
        pad_id = _pad_token_id(self.model) if pad_id is None else int(pad_id)
        prompts = [row.context() for row in rows]
        if rows[0].fast_decode is not None:
            prompts += [prompts[0]] * (batch_bucket(len(rows)) - len(rows))
        length = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, length - len(prompt) :] = torch.tensor(prompt)
            attention_mask[i, length - len(prompt) :] = 1
        device = self.model.device
        yielding = YieldRequest(self, rows[0].key(), lambda: sum(not row.done for row in rows), solo=False)
        kwargs = {
            **shared,
            "input_ids": input_ids.to(device),
            "attention_mask": attention_mask.to(device),
            "max_new_tokens": max(row.remaining() for row in rows),
            **_min_new_tokens(shared, rows),
            "streamer": RowDispatcher(rows, eos_ids(self.model, shared), yielding),
            "stopping_criteria": [CancelCriteria(RowsDone(rows)), CancelCriteria(yielding)],  # type: ignore[arg-type]
            "pad_token_id": pad_id,
        }
        generate_on_worker(self.model, kwargs, fast_decode=rows[0].fast_decode)
        if not yielding.fired:
            return []
        return [row for row in rows if not row.done and not row.cancel.is_set() and row.remaining() > 0]


class SoloStream:
    """The token ids of a request admitted to run alone (``BatchScheduler.admit_solo``), telling the
    scheduler once its solo run is over (ended or closed, even before its first token).

    With ``rest`` (what ``GenerationRouting`` gives it): when the solo run ended because it yielded
    (its ``YieldRequest`` fired) before its eos, budget or cancellation, the rest of the answer is
    queued (``BatchScheduler.resume``) and its tokens follow in the same stream."""

    def __init__(self, token_ids: Iterator[int], scheduler: BatchScheduler, rest: SoloRest | None = None) -> None:
        self.token_ids = token_ids
        self.scheduler: BatchScheduler | None = scheduler
        self.rest = rest
        self.tokens: list[int] = []

    def __iter__(self) -> SoloStream:
        return self

    def __next__(self) -> int:
        while True:
            try:
                token = next(self.token_ids)
            except StopIteration:
                if self._queue_rest():
                    continue
                self.close()
                raise
            except BaseException:
                self.close()
                raise
            self.tokens.append(token)
            return token

    def _queue_rest(self) -> bool:
        """After the solo run ended: True when it yielded mid-answer and its rest now streams in
        ``token_ids``."""
        rest, scheduler = self.rest, self.scheduler
        if rest is None or scheduler is None or not rest.yielding.fired:
            return False
        self.rest, self.scheduler = None, None
        scheduler.solo_done()
        ended = (self.tokens and self.tokens[-1] in rest.eos) or len(self.tokens) >= rest.budget or rest.cancel.is_set()
        if ended:
            scheduler.leave()  # its counted arrival will not come
            return False
        self.token_ids = scheduler.resume(rest.generate_kwargs, self.tokens, rest.cancel, fast_decode=rest.fast_decode)
        return True

    def close(self) -> None:
        try:
            self.token_ids.close()  # type: ignore[attr-defined]
        finally:
            if self.rest is not None:
                self.rest.cancel.set()
            if self.scheduler is not None:
                self.scheduler, scheduler = None, self.scheduler
                scheduler.solo_done()
                if self.rest is not None and self.rest.yielding.fired:
                    scheduler.leave()
            self.rest = None

    def __del__(self) -> None:
        self.close()


@dataclass
class SoloRest:
    """What a request running alone needs to queue the rest of its answer after a yield."""

    generate_kwargs: dict[str, Any]
    cancel: threading.Event
    fast_decode: FastDecode
    yielding: YieldRequest
    eos: set[int]
    budget: int


def _min_new_tokens(shared: dict[str, Any], rows: Sequence[Row]) -> dict[str, int]:
    """A shared ``min_new_tokens`` counted from where the rows are: less what the least advanced row
    produced before a yield (one value for the batch: a row further on keeps eos off a little longer)."""
    if not shared.get("min_new_tokens"):
        return {}
    return {"min_new_tokens": max(0, int(shared["min_new_tokens"]) - min(row.produced for row in rows))}


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
