"""Concurrent generations batched together (llm.batching) on the tiny GLM: each row gets
exactly its own tokens, ends on its own, is cancelled on its own, and greedy batched output
equals the same request run alone."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from llm.batching import BatchScheduler, Busy
from tests.helpers import hold_worker


class ForcedPerPrompt:
    """A logits processor forcing, for each row, the answer scripted for that row's prompt."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], *, eos_id: int, pad_id: int) -> None:
        self.answers = answers
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.prompt_length: int | None = None
        self.batch_sizes: list[int] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prompt_length is None or input_ids.shape[1] <= self.prompt_length:
            self.prompt_length = input_ids.shape[1]
            self.batch_sizes.append(input_ids.shape[0])
        step = input_ids.shape[1] - self.prompt_length
        forced = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(input_ids[:, : self.prompt_length].tolist()):
            prompt = tuple(t for t in row if t != self.pad_id) or tuple(row)
            answer = next((a for p, a in self.answers.items() if tuple(prompt[-len(p):]) == p), [])
            forced[i, answer[step] if step < len(answer) else self.eos_id] = 0.0
        return forced


@pytest.fixture(scope="module")
def model(tiny_glm_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()


def _kwargs(prompt: list[int], **extra: Any) -> dict[str, Any]:
    return {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long), **extra}


def _collect(scheduler: BatchScheduler, kwargs: dict[str, Any], out: dict[int, list[int]], key: int) -> None:
    out[key] = list(scheduler.stream(kwargs, threading.Event()))


def test_concurrent_rows_each_get_their_own_answer(model: Any) -> None:
    eos = model.generation_config.eos_token_id[0]
    pad = model.generation_config.pad_token_id
    prompts = {i: [5 + i, 40 + i, 80 + i] for i in range(4)}
    answers = {tuple(p): [200 + 10 * i + j for j in range(3 + i)] for i, p in prompts.items()}
    forced = ForcedPerPrompt(answers, eos_id=eos, pad_id=pad)
    scheduler = BatchScheduler(model)
    release = hold_worker(model)
    out: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=_collect, args=(scheduler, _kwargs(p, logits_processor=[forced], do_sample=False, max_new_tokens=16), out, i))
        for i, p in prompts.items()
    ]
    for t in threads:
        t.start()
    while len(scheduler._pending) < 4:
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(30)
    assert forced.batch_sizes == [4]  # one generate for the four waiting requests
    for i, p in prompts.items():
        assert out[i] == answers[tuple(p)] + [eos]  # its own tokens, its own eos, no padding


def test_greedy_batched_equals_solo(model: Any) -> None:
    """Left padding must not change a row's greedy tokens."""
    scheduler = BatchScheduler(model)
    prompts = [[7, 8, 9, 10, 11, 12], [300, 301], [42, 43, 44, 45]]
    solo = {i: list(scheduler.stream(_kwargs(p, do_sample=False, max_new_tokens=8), threading.Event())) for i, p in enumerate(prompts)}
    release = hold_worker(model)
    out: dict[int, list[int]] = {}
    threads = [threading.Thread(target=_collect, args=(scheduler, _kwargs(p, do_sample=False, max_new_tokens=8), out, i)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    while len(scheduler._pending) < len(prompts):
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(30)
    assert out == solo


def test_cancelled_row_stops_and_others_finish(model: Any) -> None:
    eos = model.generation_config.eos_token_id[0]
    pad = model.generation_config.pad_token_id
    long_answer = list(range(500, 560))
    answers = {(1, 2, 3): long_answer, (4, 5, 6): long_answer}
    forced = ForcedPerPrompt(answers, eos_id=eos, pad_id=pad)
    scheduler = BatchScheduler(model)
    release = hold_worker(model)
    first = scheduler.stream(_kwargs([1, 2, 3], logits_processor=[forced], do_sample=False, max_new_tokens=61), threading.Event())
    out: dict[int, list[int]] = {}
    other = threading.Thread(target=_collect, args=(scheduler, _kwargs([4, 5, 6], logits_processor=[forced], do_sample=False, max_new_tokens=61), out, 1))
    got: list[int] = []

    def consume_three() -> None:
        for token in first:
            got.append(token)
            if len(got) == 3:
                first.close()  # the consumer hangs up
                return

    consumer = threading.Thread(target=consume_three)
    consumer.start()
    other.start()
    while len(scheduler._pending) < 2:
        threading.Event().wait(0.01)
    release.set()
    consumer.join(30)
    other.join(30)
    assert got == long_answer[:3]
    assert out[1] == long_answer + [eos]


def test_full_queue_answers_busy_at_once(model: Any) -> None:
    scheduler = BatchScheduler(model, max_queue=1)
    release = hold_worker(model)
    try:
        waiting = scheduler.stream(_kwargs([1, 2], do_sample=False, max_new_tokens=2), threading.Event())
        threading.Thread(target=lambda: list(waiting), daemon=True).start()
        while len(scheduler._pending) < 1:
            threading.Event().wait(0.01)
        with pytest.raises(Busy, match="retry"):
            list(scheduler.stream(_kwargs([3, 4], do_sample=False, max_new_tokens=2), threading.Event()))
    finally:
        release.set()


def test_different_sampling_settings_run_in_separate_batches(model: Any) -> None:
    scheduler = BatchScheduler(model)
    release = hold_worker(model)
    out: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=_collect, args=(scheduler, _kwargs([9, 9], do_sample=False, max_new_tokens=3), out, 0)),
        threading.Thread(target=_collect, args=(scheduler, _kwargs([9, 9], do_sample=True, temperature=0.7, max_new_tokens=3), out, 1)),
    ]
    for t in threads:
        t.start()
    while len(scheduler._pending) < 2:
        threading.Event().wait(0.01)
    assert scheduler._pending[0].key() != scheduler._pending[1].key()
    release.set()
    for t in threads:
        t.join(30)
    assert len(out[0]) >= 1 and len(out[1]) >= 1
