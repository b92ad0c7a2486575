"""A request that runs alone on a free model (``BatchScheduler.admit_solo``) and yields to the
requests that arrive while it runs (``llm.batch_yield``): its rest joins them as a batch row.

Alone, a request runs exactly the single-row path it ran before batching existed
(``stream_token_ids``: 239 tok/s, TTFT 12.6 ms on the H200, docs/PERFORMANCE.md).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm.batch_rows import Row, eos_ids
from llm.batch_yield import YieldRequest
from llm.streaming import CancelCriteria, FastDecode, stream_token_ids

if TYPE_CHECKING:
    from llm.batching import BatchScheduler


def run_alone(
    scheduler: BatchScheduler, generate_kwargs: dict[str, Any], cancel: threading.Event, *, fast_decode: FastDecode
) -> SoloStream:
    """The token ids of a request the scheduler admitted to run alone. Its run watches ``cancel``
    through a criterion and gets a cancel event of its own (which ending the run sets), so that
    ``cancel`` still stops the rest if it yields."""
    row = Row.of(generate_kwargs, cancel, fast_decode)
    rest = SoloRest(row, YieldRequest(scheduler, row.key(), lambda: 1, solo=True), eos_ids(scheduler.model, row.shared))
    solo_kwargs = {**generate_kwargs, "stopping_criteria": [CancelCriteria(cancel), CancelCriteria(rest.yielding)]}
    token_ids = stream_token_ids(scheduler.model, solo_kwargs, threading.Event(), fast_decode=fast_decode)
    return SoloStream(token_ids, scheduler, rest)


@dataclass
class SoloRest:
    """What a request running alone needs to queue the rest of its answer after a yield: its row (the
    tokens it produces are added as they pass), its ``YieldRequest``, its eos ids."""

    row: Row
    yielding: YieldRequest
    eos: set[int]


class SoloStream:
    """The token ids of a request admitted to run alone (``BatchScheduler.admit_solo``), telling the
    scheduler once its solo run is over (ended or closed, even before its first token).

    With ``rest``: when the solo run ended because it yielded (its ``YieldRequest`` fired) before its
    eos, budget or cancellation, the rest of the answer is queued (``BatchScheduler.resume``) and its
    tokens follow in the same stream."""

    def __init__(self, token_ids: Iterator[int], scheduler: BatchScheduler, rest: SoloRest | None = None) -> None:
        self.token_ids = token_ids
        self.scheduler: BatchScheduler | None = scheduler
        self.rest = rest

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
            if self.rest is not None:
                self.rest.row.tokens.append(token)
            return token

    def _queue_rest(self) -> bool:
        """After the solo run ended: True when it yielded mid-answer and its rest now streams in
        ``token_ids``."""
        rest, scheduler = self.rest, self.scheduler
        if rest is None or scheduler is None or not rest.yielding.fired:
            return False
        self.rest, self.scheduler = None, None
        scheduler.solo_done()
        row = rest.row
        row.produced = len(row.tokens)
        if (row.tokens and row.tokens[-1] in rest.eos) or row.remaining() <= 0 or row.cancel.is_set():
            scheduler.leave()  # its counted arrival will not come
            return False
        self.token_ids = scheduler.resume(row)
        return True

    def close(self) -> None:
        try:
            self.token_ids.close()  # type: ignore[attr-defined]
        finally:
            if self.rest is not None:
                self.rest.row.cancel.set()
            if self.scheduler is not None:
                self.scheduler, scheduler = None, self.scheduler
                scheduler.solo_done()
                if self.rest is not None and self.rest.yielding.fired:
                    scheduler.leave()
            self.rest = None

    def __del__(self) -> None:
        self.close()
