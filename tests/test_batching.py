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


class ForcedAfterPrompt:
    """Forces each row's scripted answer by how many tokens follow its prompt in the row (so a row
    that yielded and starts again with its answer so far in its context goes on where it was), one
    step at most every ``delay_s``; records each generate call's batch size."""

    def __init__(self, answers: dict[tuple[int, ...], list[int]], *, eos_id: int, pad_id: int, delay_s: float) -> None:
        self.answers = answers
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self._rows, self._length = 0, -1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if (input_ids.shape[0], input_ids.shape[1]) != (self._rows, self._length + 1):  # a new generate call
            self.batch_sizes.append(input_ids.shape[0])
        self._rows, self._length = input_ids.shape
        threading.Event().wait(self.delay_s)
        forced = torch.full_like(scores, float("-inf"))
        for i, row in enumerate(input_ids.tolist()):
            tokens = [t for t in row if t != self.pad_id]
            token = self.eos_id
            for prompt, answer in self.answers.items():
                starts = range(len(tokens) - len(prompt) + 1)
                at = next((j for j in starts if tuple(tokens[j : j + len(prompt)]) == prompt), None)
                if at is not None:
                    step = len(tokens) - at - len(prompt)
                    token = answer[step] if step < len(answer) else self.eos_id
            forced[i, token] = 0.0
        return forced


class SlowNoEos:
    """Greedy as the model picks, but never eos, one step at most every ``delay_s``."""

    def __init__(self, eos_ids: list[int], *, delay_s: float) -> None:
        self.eos_ids = eos_ids
        self.delay_s = delay_s

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        threading.Event().wait(self.delay_s)
        scores[:, self.eos_ids] = float("-inf")
        return scores


def _start_after(scheduler: BatchScheduler, first: dict[str, Any], second: dict[str, Any], *, tokens: int) -> tuple[
        list[int], list[int], list[str]]:
    """Stream ``first``; once it has ``tokens`` tokens, stream ``second``. Both answers, and the order
    in which they ended."""
    out: dict[int, list[int]] = {0: [], 1: []}
    ended: list[str] = []
    started = threading.Event()

    def run(key: int, kwargs: dict[str, Any]) -> None:
        for token in scheduler.stream(kwargs, threading.Event()):
            out[key].append(token)
            if key == 0 and len(out[0]) == tokens:
                started.set()
        ended.append(("first", "second")[key])

    a = threading.Thread(target=run, args=(0, first))
    a.start()
    assert started.wait(30)
    b = threading.Thread(target=run, args=(1, second))
    b.start()
    a.join(60)
    b.join(60)
    return out[0], out[1], ended


def test_a_request_joins_a_running_batch_at_a_step(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a request arriving during a long answer waited for that whole answer (rows joined
    only at batch boundaries). Now the running batch yields at the next token: its row starts again
    with its answer so far, together with the newcomer, and the short answer ends long before."""
    monkeypatch.setattr("llm.batch_yield.YIELD_AFTER_S", 0.0)
    eos = model.generation_config.eos_token_id[0]
    pad = model.generation_config.pad_token_id
    long_answer, short_answer = list(range(500, 540)), [700, 701, 702]
    forced = ForcedAfterPrompt({(1, 2, 3): long_answer, (4, 5, 6): short_answer}, eos_id=eos, pad_id=pad, delay_s=0.01)
    scheduler = BatchScheduler(model)
    common = {"logits_processor": [forced], "do_sample": False, "max_new_tokens": 50}
    first, second, ended = _start_after(scheduler, _kwargs([1, 2, 3], **common), _kwargs([4, 5, 6], **common), tokens=5)
    assert first == long_answer + [eos] and second == short_answer + [eos]
    assert ended == ["second", "first"]
    assert forced.batch_sizes == [1, 2]  # the long row alone, then both (no third call: no room needed)
    assert not scheduler._pending and scheduler._arriving == 0


def test_greedy_row_that_yielded_equals_it_run_alone(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row started again from its prompt and answer so far (one prompt pass over both) continues
    with the tokens it would have produced alone, and so does the request that joined it."""
    monkeypatch.setattr("llm.batch_yield.YIELD_AFTER_S", 0.0)
    slow = SlowNoEos(list(model.generation_config.eos_token_id), delay_s=0.005)
    scheduler = BatchScheduler(model)
    first = _kwargs([7, 8, 9, 10, 11, 12], logits_processor=[slow], do_sample=False, max_new_tokens=30)
    second = _kwargs([300, 301], logits_processor=[slow], do_sample=False, max_new_tokens=10)
    solo = [list(scheduler.stream(first, threading.Event())), list(scheduler.stream(second, threading.Event()))]
    together = _start_after(scheduler, first, second, tokens=6)
    assert [together[0], together[1]] == solo
    assert together[2] == ["second", "first"]


def test_no_yield_to_a_request_that_cannot_share_the_batch(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting request with other sampling settings cannot join: the running answer is not cut
    (one generate call for it) and the newcomer starts when it ends."""
    monkeypatch.setattr("llm.batch_yield.YIELD_AFTER_S", 0.0)
    eos = model.generation_config.eos_token_id[0]
    pad = model.generation_config.pad_token_id
    forced = ForcedAfterPrompt({(1, 2, 3): list(range(500, 520))}, eos_id=eos, pad_id=pad, delay_s=0.01)
    scheduler = BatchScheduler(model)
    first = _kwargs([1, 2, 3], logits_processor=[forced], do_sample=False, max_new_tokens=30)
    second = _kwargs([9, 9], do_sample=True, temperature=0.7, max_new_tokens=3)
    got, other, ended = _start_after(scheduler, first, second, tokens=3)
    assert got == list(range(500, 520)) + [eos] and len(other) >= 1
    assert forced.batch_sizes == [1] and ended == ["first", "second"]


def test_a_generation_yields_only_after_several_times_its_prompt_pass(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each yield costs a prompt pass over the running rows' contexts (~0.5 s for 8 rows of 2k-token
    prompts on the 6B model): yielding every ``YIELD_AFTER_S`` under steady arrivals would leave no
    time to decode. A generation yields after ``YIELD_AFTER_S`` or ``1 + PROMPT_PASS_SHARE`` times its
    own prompt pass (its first poll), whichever is later; only to a request that can join it."""
    from llm import batch_rows, batch_yield

    clock = [100.0]
    monkeypatch.setattr(batch_yield.time, "monotonic", lambda: clock[0])
    scheduler = BatchScheduler(model, max_batch=2)
    waiting = batch_rows.Row([1, 2], 4, threading.Event(), {"do_sample": False})
    scheduler._pending.append(waiting)

    slow = batch_yield.YieldRequest(scheduler, waiting.key(), lambda: 1, solo=False)
    clock[0] = 100.4  # its prompt pass took 0.4 s: not before 100 + 5 x 0.4
    assert not slow.is_set()
    clock[0] = 101.9
    assert not slow.is_set()
    clock[0] = 102.1
    assert slow.is_set() and slow.is_set()  # and stays set

    clock[0] = 200.0
    quick = batch_yield.YieldRequest(scheduler, waiting.key(), lambda: 1, solo=False)
    clock[0] = 200.01  # a short prompt pass: YIELD_AFTER_S decides
    assert not quick.is_set()
    clock[0] = 200.0 + batch_yield.YIELD_AFTER_S + 0.01
    assert quick.is_set()

    full = batch_yield.YieldRequest(scheduler, waiting.key(), lambda: 2, solo=False)  # no room at max_batch 2
    other = batch_yield.YieldRequest(scheduler, ("another key",), lambda: 1, solo=False)
    clock[0] = 300.0
    assert not full.is_set() and not other.is_set()
