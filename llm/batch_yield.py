"""When a running generation yields to waiting requests (``llm.batching``): rows join at a token.

A generation (a batch, or a request running alone) polls a ``YieldRequest`` with its cancel events.
Once a request that could share its batch waits, and the batch has room, the generation stops at
that token; its unfinished rows start again with the newcomers, their tokens so far part of their
context (one prompt pass over those contexts instead of per-row cache positions in the decode graph).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm.batching import BatchScheduler

# When a running generation yields to a waiting request: after YIELD_AFTER_S (a newcomer's time to
# first token, at most, when the batch has room and prompt passes are short), and not before it has run
# PROMPT_PASS_SHARE times as long as its own prompt pass took. Each yield costs one prompt pass over the
# running rows' contexts (prompt and answer so far): for 8 rows of 2k-token RAG prompts on the 6B model
# that is ~0.5 s, and yielding every 0.25 s under a steady stream of arrivals would leave no time to
# decode; this way prompt passes take at most ~1/PROMPT_PASS_SHARE of the time.
YIELD_AFTER_S = 0.25
PROMPT_PASS_SHARE = 4.0


class YieldRequest:
    """Event-like (``is_set``): True once the running generation should stop at this token so that
    waiting requests can start with its unfinished rows. Polled every step, with the cancel events,
    by generate's stopping criteria and the fast path's loop: cheap until a request waits.

    It fires when the generation has run ``YIELD_AFTER_S`` and ``1 + PROMPT_PASS_SHARE`` times its
    prompt pass (measured as the time to the first poll, which comes with the first token) and its
    scheduler says a waiting request can join (``BatchScheduler.take_yield``: same batch key, room
    for it)."""

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
        if now < self.not_before or not self.scheduler.waiting():
            return False
        self.fired = self.scheduler.take_yield(self.key, live=self.live(), solo=self.solo)
        return self.fired
