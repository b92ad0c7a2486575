"""``GenerationRouting``: where a ``ChatGLM`` generation runs on the shared model (a mixin).

Two choices per generation, both from ``ChatGLM`` fields and the model's state: the fast decode
path of ``llm.fast_decode`` or plain ``generate`` (``fast_decode``, ``fast_decode_options``), and
alone on the model's worker or batched with concurrent streamed requests in its
``llm.batching.BatchScheduler`` (``batch_concurrent``, ``max_concurrent_batch``, ``max_queue``).
``warm_up`` builds the fast path's shapes ahead of the first generations that would need them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from llm.batching import BatchScheduler, batch_scheduler
from llm.fast_decode import (
    STATIC_CACHE,
    FastDecodeOptions,
    fast_decode_report,
    fast_decode_state,
    unsupported_reason,
)
from llm.solo_stream import run_alone
from llm.streaming import CancelCriteria, run_generate, stream_token_ids

__all__ = ["GenerationRouting"]

# ChatGLM's logger: its warnings kept their logger name when this mixin moved out of llm/chatglm.py.
logger = logging.getLogger("llm.chatglm")

WARM_UP_TEXT = "你好"


class GenerationRouting:
    """Fast path or plain ``generate``, alone or batched: the routing half of ``ChatGLM``."""

    if TYPE_CHECKING:  # ChatGLM's fields this mixin reads
        model: Any
        fast_decode: bool | None
        fast_decode_options: FastDecodeOptions
        batch_concurrent: bool
        max_concurrent_batch: int
        max_queue: int

        def _generate_kwargs(self, prompts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]: ...

    # ----- fast decode ----------------------------------------------------------------------

    @property
    def fast_decode_active(self) -> bool:
        """Whether generations take the fast path (``fast_decode`` setting, model support, no failure)."""
        if self.fast_decode is False:
            return False
        reason = unsupported_reason(self.model, self.fast_decode_options)
        reason = reason or fast_decode_state(self.model).off.get(STATIC_CACHE)
        if reason is not None:
            if self.fast_decode:
                _warn_once(self.model, f"fast_decode=True but it is off for this model: {reason}")
            return False
        return True

    @property
    def fast_decode_report(self) -> dict[str, str | None]:
        """Each fast-path part (``llm.fast_decode.PATHS``) -> None where it runs, else why it is off."""
        if self.fast_decode is False:
            return {path: "fast_decode=False" for path in fast_decode_report(self.model, self.fast_decode_options)}
        return fast_decode_report(self.model, self.fast_decode_options)

    def _fast_decode(self) -> FastDecodeOptions | None:
        """The options generations run the fast path with, None for plain ``generate``."""
        return self.fast_decode_options if self.fast_decode_active else None

    def warm_up(self, *, prompt_tokens: Sequence[int] = (16,), batch_sizes: Sequence[int] = (1,)) -> float | None:
        """Compile and capture the fast path for each prompt length at each batch size; the seconds it took,
        or None where generations do not take the fast path (nothing to compile).

        Otherwise the first generation of each shape waits for it: 26-42 s for the ChatGLM3-6B shape
        (the decode step's compile, the GEMV tiles' timing, the capture), 11-13 s for another cache
        bucket or batch size once the kernels are compiled (docs/PERFORMANCE.md, run 32). Each call runs
        a prompt of that many tokens (rows of it, for a batch) with the default generation options, so
        the shape key (rows, the cache-length bucket of prompt + ``max_new_tokens``) and the sampling
        kind are a default question's; its cancel event is set from the start, so the graph is built and
        the prompt pass captured and no token is decoded. Batches of concurrent requests run at powers
        of two (``llm.batch_rows``): warm those. It runs on the model's worker outside the batch queue: a
        question arriving meanwhile waits for it, as it would have waited for its own compile.
        """
        fast = self._fast_decode()
        if fast is None:
            return None
        started = time.perf_counter()
        for length in prompt_tokens:
            kwargs = _padded_prompt(self._generate_kwargs([WARM_UP_TEXT], {}), length)
            for rows in batch_sizes:
                run_generate(self.model, _cancelled_rows(kwargs, rows), fast_decode=fast)
        seconds = time.perf_counter() - started
        logger.info("fast decode warmed up for prompts of %s tokens at batch sizes %s (%.1f s)", list(prompt_tokens),
                    list(batch_sizes), seconds)
        return seconds

    # ----- alone or batched ------------------------------------------------------------------

    def _token_ids(
        self, generate_kwargs: dict[str, Any], cancel: threading.Event, scheduler: BatchScheduler | None
    ) -> Iterator[int]:
        """New token ids of one streamed generation: alone on the model's worker when the model is
        free, else queued in the model's ``BatchScheduler`` (which the caller ``arrive``d at) to
        start with the others waiting.

        Why not every request through the scheduler: a lone request then pays a thread hand-off
        and the per-row dispatcher for nothing; here it runs exactly the single-row fast path it
        ran before batching existed (239 tok/s, TTFT 12.6 ms on the H200, docs/PERFORMANCE.md).
        Requests with their own stopping criteria (the summary's cancel scope) never batch.
        """
        fast = self._fast_decode()
        if scheduler is None or generate_kwargs.get("stopping_criteria"):
            if scheduler is not None:
                scheduler.leave()
            return stream_token_ids(self.model, generate_kwargs, cancel, fast_decode=fast)
        if scheduler.admit_solo(arrived=True):
            return run_alone(scheduler, generate_kwargs, cancel, fast_decode=fast)
        return scheduler.stream(generate_kwargs, cancel, fast_decode=fast, arrived=True)

    def _scheduler(self) -> BatchScheduler:
        scheduler = batch_scheduler(self.model)
        scheduler.max_batch, scheduler.max_queue = self.max_concurrent_batch, self.max_queue
        return scheduler

    def check_capacity(self) -> None:
        """Raise ``llm.batching.Busy`` (HTTP 503, "retry") when the model's queue is full right now;
        servers call it before they start a streamed response, which could not change its status."""
        if self.batch_concurrent:
            self._scheduler().check_capacity()


def _cancelled_rows(generate_kwargs: dict[str, Any], rows: int) -> dict[str, Any]:
    """``generate_kwargs`` of one prompt as ``rows`` copies of it, cancelled before the first decode step."""
    stop = threading.Event()
    stop.set()
    criteria = [*(generate_kwargs.get("stopping_criteria") or []), CancelCriteria(stop)]
    tensors = {name: generate_kwargs[name].repeat(rows, 1) for name in ("input_ids", "attention_mask")}
    return {**generate_kwargs, **tensors, "stopping_criteria": criteria}


def _padded_prompt(generate_kwargs: dict[str, Any], length: int) -> dict[str, Any]:
    """``generate_kwargs`` with its one prompt grown to ``length`` tokens (copies of its first token in front):
    a warm-up needs a prompt's shape, not its words."""
    ids = generate_kwargs["input_ids"]
    missing = length - ids.shape[1]
    if missing <= 0:
        return generate_kwargs
    ids = torch.cat([ids[:, :1].expand(ids.shape[0], missing), ids], dim=1)
    return {**generate_kwargs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}


_WARNED: set[tuple[int, str]] = set()


def _warn_once(model: Any, message: str) -> None:
    key = (id(model), message)
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)
