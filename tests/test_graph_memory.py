"""Decode graphs kept while the GPU has room (``llm.fast_decode.graph_memory``): the least recently used go
first and only when memory is short; a build that runs out of memory drops the others and is tried again."""

from __future__ import annotations

import gc
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

import llm.fast_decode.decode_graph as decode_graph
from llm import ChatGLM
from llm.fast_decode import DECODE_GRAPH, FastDecodeOptions, cache_kwarg, fast_decode_state, graph_memory
from llm.fast_decode.graph_memory import MIN_HEADROOM, build_with_room, graph_bytes, make_room
from tests.helpers import count_calls

CUDA = torch.device("cuda")


def fast_llm(tiny_glm_dir: Path, **fields: Any) -> ChatGLM:
    return ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=8,
                                   fast_decode_options=FastDecodeOptions(on_cpu=True), **fields)


def test_graph_bytes_is_the_static_cache_the_graph_allocates(tiny_chatglm: ChatGLM) -> None:
    """Differential: the KV part of ``graph_bytes`` equals the bytes of transformers' own ``StaticCache`` of
    that shape once the model has written to it (it allocates lazily)."""
    from transformers import StaticCache

    model = tiny_chatglm.model
    batch, length = 3, 1024
    cache = StaticCache(config=model.config, max_cache_len=length)
    with torch.inference_mode():
        model(input_ids=torch.zeros((batch, 1), dtype=torch.long), **{cache_kwarg(model): cache}, use_cache=True)
    allocated = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    vocab = model.config.vocab_size
    assert graph_bytes(model, (batch, length)) - batch * vocab * 5 == allocated > 0


class FakeDevice:
    """Free memory that is a budget less what the kept graphs hold (each graph: its size)."""

    def __init__(self, graphs: OrderedDict[str, int], budget: int) -> None:
        self.graphs, self.budget, self.asked = graphs, budget, 0

    def free_bytes(self, device: torch.device) -> int:
        self.asked += 1
        return self.budget - sum(self.graphs.values())


def test_make_room_drops_the_least_recently_used_only_while_memory_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    gb = 1 << 30
    graphs: OrderedDict[str, int] = OrderedDict(a=2 * gb, b=2 * gb, c=1 * gb)
    fake = FakeDevice(graphs, budget=8 * gb)
    monkeypatch.setattr(graph_memory, "free_bytes", fake.free_bytes)
    monkeypatch.setattr(graph_memory, "headroom", lambda device: MIN_HEADROOM)
    assert make_room(graphs, 1 * gb, CUDA, limit=16) == 0  # 3 GB free >= 1 GB + headroom
    assert make_room(graphs, 3 * gb, CUDA, limit=16) == 1 and list(graphs) == ["b", "c"]  # a (oldest) went
    assert make_room(graphs, 7 * gb, CUDA, limit=16) == 2 and not graphs  # 7 + 1 > 8: nothing left to keep
    graphs.update(x=1, y=1, z=1)
    assert make_room(graphs, 1, CUDA, limit=2) == 2 and list(graphs) == ["z"]  # the count applies as well


def test_make_room_on_the_cpu_counts_only(monkeypatch: pytest.MonkeyPatch) -> None:
    graphs: OrderedDict[str, int] = OrderedDict(a=1, b=1)
    assert make_room(graphs, 10**15, torch.device("cpu"), limit=16) == 0 and list(graphs) == ["a", "b"]


def test_an_out_of_memory_build_drops_the_other_graphs_and_tries_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    graphs: OrderedDict[str, int] = OrderedDict(a=1, b=1)
    monkeypatch.setattr(graph_memory, "free_bytes", lambda device: 10 * MIN_HEADROOM)
    monkeypatch.setattr(graph_memory, "headroom", lambda device: MIN_HEADROOM)
    attempts: list[int] = []

    def build() -> str:
        attempts.append(len(graphs))
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "built"

    assert build_with_room(build, graphs, 1, CUDA) == "built"
    assert attempts == [2, 0] and not graphs
    with pytest.raises(torch.cuda.OutOfMemoryError):  # alone and still out of memory: the caller falls back
        build_with_room(lambda: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")), graphs, 1, CUDA)


def test_a_server_mix_of_shapes_builds_each_graph_once(tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: with at most four graphs kept, a server whose batches took six (batch, cache length)
    shapes dropped its least recently used graph and captured it again whenever the mix came round
    (0.15-0.22 s of a first token on the 6B shape, run 32c). Now all six stay; the second round builds
    nothing."""
    llm = fast_llm(tiny_glm_dir)
    shapes = [(rows, new) for rows in (1, 2, 4) for new in (8, 1100)]  # 1,024 and 2,048 cache slots

    def run(rows: int, new: int) -> None:
        questions = [f"第{i}问：刘备是谁？" for i in range(rows)]
        llm._generate_batch(questions, None, max_new_tokens=new, min_new_tokens=1)

    for shape in shapes:
        run(*shape)
    assert {key[:2] for key in fast_decode_state(llm.model).graphs} == {
        (rows, 1024 if new == 8 else 2048) for rows, new in shapes
    }
    builds = count_calls(monkeypatch, decode_graph, "build_decode_graph")
    for shape in shapes:
        run(*shape)
    assert builds == []


def test_a_graph_that_finds_the_gpu_full_runs_after_the_others_go(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a decode graph whose build ran out of GPU memory (other graphs holding it) turned the
    decode graph off for the model for good. Now the others are dropped and the build runs again."""
    llm = fast_llm(tiny_glm_dir)
    first = "".join(llm.stream("刘备是谁？"))
    real = decode_graph.build_decode_graph
    failures: list[int] = []

    def out_of_memory_once(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.88 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(decode_graph, "build_decode_graph", out_of_memory_once)
    assert "".join(llm.stream("刘备是谁？", max_new_tokens=1100))  # a second shape: built after one failure
    state = fast_decode_state(llm.model)
    assert failures == [1] and DECODE_GRAPH not in state.off
    assert [key[:2] for key in state.graphs] == [(1, 2048)]
    assert "".join(llm.stream("刘备是谁？")) == first  # the dropped shape is built again, same answer


@pytest.mark.gpu
def test_a_dropped_graph_gives_its_memory_back_on_cuda(tiny_glm_dir: Path) -> None:
    """What ``make_room`` relies on: once a captured decode graph is dropped, at least its ``graph_bytes``
    are free again (nothing else, compiled code included, keeps its cache alive).

    Counted by the allocator (``memory_allocated``), not the driver: after the other GPU test files in one
    process, the dropped cache's blocks shared the allocator's segments with tensors still alive, so
    ``empty_cache`` could hand back only 2 of its 33.8 MB to the device (``mem_get_info``), though all of it
    was free for the next graph (the test failed after the other files and passed alone)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    llm = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", temperature=0.0, max_new_tokens=4)
    llm._generate_batch([f"第{i}问" for i in range(16)], None, max_new_tokens=3000)  # batch 16, 4,096 slots
    state = fast_decode_state(llm.model)
    (key,) = [key[:2] for key in state.graphs]
    assert key == (16, 4096)
    device = torch.device("cuda")
    kept = torch.cuda.memory_allocated(device)
    state.graphs.clear()
    gc.collect()
    freed = kept - torch.cuda.memory_allocated(device)
    assert freed >= graph_bytes(llm.model, key) * 0.9, (freed, graph_bytes(llm.model, key))
