"""The fast decode path (llm.fast_decode): static cache, one CUDA graph per token, fallbacks.

On CPU the decode-graph loop runs its step eagerly (no capture), which checks everything but
the capture itself: the same masks, positions, token choice and stopping as ``generate``.
Tests force the path on CPU by patching ``llm.chatglm.unsupported_reason``.
"""

from __future__ import annotations

import logging
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import llm.chatglm
import llm.fast_decode as fd
from llm import ChatGLM
from llm.streaming import model_is_busy, run_generate, stream_token_ids
from tests.fixtures.models import ForcedTokens

QUESTION = "曹操是谁？"


@pytest.fixture
def fresh_llm(tiny_glm_dir: Path) -> ChatGLM:
    """A ChatGLM over its own copy of the tiny GLM (fast-path state is per model object)."""
    return ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=24)


@pytest.fixture
def force_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the fast path run on CPU (it is off there by default)."""
    monkeypatch.setattr(llm.chatglm, "unsupported_reason", lambda model: None)


def fast_and_eager(llm_: ChatGLM, prompts: list[str], **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    generate_kwargs = llm_._generate_kwargs(prompts, dict(kwargs))
    eager = run_generate(llm_.model, dict(generate_kwargs))
    fast = run_generate(llm_.model, dict(generate_kwargs), fast_decode=True)
    return eager, fast


# ----- pure logic ---------------------------------------------------------------------------


def test_cache_length_bucket_rounds_up_to_powers_of_two() -> None:
    assert fd.cache_length_bucket(1) == fd.MIN_CACHE_LENGTH
    assert fd.cache_length_bucket(1024) == 1024
    assert fd.cache_length_bucket(1025) == 2048
    assert fd.cache_length_bucket(5000) == 8192
    assert fd.cache_length_bucket(5000, limit=6000) == 6000  # capped by the context length
    assert fd.cache_length_bucket(7000, limit=6000) == 7000  # never below what the call needs
    with pytest.raises(ValueError, match="positive"):
        fd.cache_length_bucket(0)


def test_unsupported_reasons() -> None:
    def fake(**attrs: Any) -> Any:
        return types.SimpleNamespace(**{"device": torch.device("cuda"), "_can_compile_fullgraph": True, **attrs})

    assert fd.unsupported_reason(fake()) is None
    assert "cpu" in fd.unsupported_reason(fake(device=torch.device("cpu")))
    assert "quantized" in fd.unsupported_reason(fake(hf_quantizer=object()))
    assert "static cache" in fd.unsupported_reason(fake(_can_compile_fullgraph=False))
    assert "several devices" in fd.unsupported_reason(fake(hf_device_map={"a": 0, "b": "cpu"}))


def test_calls_with_their_own_cache_or_beams_stay_eager() -> None:
    assert fd.call_supports_fast_decode({"input_ids": None})
    assert not fd.call_supports_fast_decode({"past_key_values": object()})
    assert not fd.call_supports_fast_decode({"num_beams": 2})
    assert not fd.call_supports_fast_decode({"cache_implementation": "dynamic"})


def test_fast_decode_is_off_on_cpu_by_default_and_can_be_switched_off(tiny_chatglm: ChatGLM) -> None:
    assert tiny_chatglm.fast_decode is None
    assert not tiny_chatglm.fast_decode_active  # CPU
    assert not tiny_chatglm.model_copy(update={"fast_decode": False}).fast_decode_active


def test_fast_decode_true_where_unsupported_warns_once_and_answers(
    fresh_llm: ChatGLM, caplog: pytest.LogCaptureFixture
) -> None:
    llm_ = fresh_llm.model_copy(update={"fast_decode": True})
    with caplog.at_level(logging.WARNING, logger="llm.chatglm"):
        first, second = llm_.invoke(QUESTION), llm_.invoke(QUESTION)
    assert first == second == fresh_llm.invoke(QUESTION)
    warnings = [r for r in caplog.records if "fast_decode=True" in r.getMessage()]
    assert len(warnings) == 1 and "cpu" in warnings[0].getMessage()


# ----- the decode-graph loop computes what generate computes ---------------------------------


@pytest.mark.parametrize(
    ("prompts", "options"),
    [
        ([QUESTION], {}),
        ([QUESTION, "话说天下大势，分久必合，合久必分。"], {}),  # left padding
        ([QUESTION, "刘备"], {"repetition_penalty": 1.3, "min_new_tokens": 24}),
        ([QUESTION], {"max_new_tokens": 1}),
    ],
)
def test_graph_loop_matches_generate(fresh_llm: ChatGLM, prompts: list[str], options: dict[str, Any]) -> None:
    eager, fast = fast_and_eager(fresh_llm, prompts, **options)
    assert torch.equal(eager, fast)
    assert fd.graph_states(fresh_llm.model).graphs, "the call must have taken the graph loop"


def test_sampling_with_top_k_1_or_tiny_top_p_is_greedy(fresh_llm: ChatGLM) -> None:
    greedy, _ = fast_and_eager(fresh_llm, [QUESTION])
    for options in ({"top_k": 1}, {"top_p": 1e-9}):
        kwargs = fresh_llm._generate_kwargs([QUESTION], {"temperature": 0.7, "top_p": 0.9, **options})
        assert kwargs["do_sample"]
        sampled = run_generate(fresh_llm.model, kwargs, fast_decode=True)
        assert torch.equal(sampled, greedy)


def test_sampling_in_graph_loop_varies_and_stays_in_vocabulary(fresh_llm: ChatGLM) -> None:
    kwargs = fresh_llm._generate_kwargs([QUESTION], {"temperature": 1.0, "top_p": 1.0, "min_new_tokens": 24})
    outs = {tuple(run_generate(fresh_llm.model, dict(kwargs), fast_decode=True)[0].tolist()) for _ in range(3)}
    assert len(outs) > 1
    vocab = fresh_llm.model.get_output_embeddings().weight.shape[0]
    assert all(0 <= t < vocab for out in outs for t in out)


def test_fast_stream_is_the_same_text_and_batch_the_same_answers(fresh_llm: ChatGLM, force_fast: None) -> None:
    fast = fresh_llm.model_copy(update={"fast_decode": None})
    eager = fresh_llm.model_copy(update={"fast_decode": False})
    assert fast.fast_decode_active
    chunks = list(fast.stream(QUESTION))
    assert len(chunks) > 1 and "".join(chunks) == eager.invoke(QUESTION)
    prompts = [QUESTION, "刘备是谁？诸葛亮呢？"]
    assert fast.batch(prompts) == eager.batch(prompts)
    assert fd.graph_states(fresh_llm.model).graphs


def test_closing_a_fast_stream_stops_generation(fresh_llm: ChatGLM) -> None:
    kwargs = fresh_llm._generate_kwargs([QUESTION], {"max_new_tokens": 500, "min_new_tokens": 500})
    prompt = kwargs["input_ids"].shape[1]
    cancel = threading.Event()
    ids = stream_token_ids(fresh_llm.model, kwargs, cancel, fast_decode=True)
    first = [next(ids), next(ids)]
    ids.close()
    assert len(first) == 2 and cancel.is_set() and not model_is_busy(fresh_llm.model)
    (graph,) = fd.graph_states(fresh_llm.model).graphs.values()
    # The cache position tells how many tokens were decoded: far fewer than the 500 asked for.
    assert int(graph.cur) < prompt + 50


def test_calls_with_logits_processors_take_generate_with_static_cache(fresh_llm: ChatGLM, force_fast: None) -> None:
    text = "话说天下大势"
    eos = fresh_llm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    processor = ForcedTokens(fresh_llm.tokenizer.encode(text, add_special_tokens=False), eos_id=eos)
    assert fresh_llm.invoke(QUESTION, logits_processor=[processor]) == text
    assert not fd.graph_states(fresh_llm.model).graphs
    state = fd.fast_decode_state(fresh_llm.model)
    assert len(state.caches) == 1 and state.disabled_reason is None


def test_graph_build_failure_falls_back_once_with_a_warning(
    fresh_llm: ChatGLM, force_fast: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A compile/capture failure must not fail the call: warn once, then use generate for good."""
    expected = fresh_llm.model_copy(update={"fast_decode": False}).invoke(QUESTION)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("capture not permitted")

    monkeypatch.setattr(fd, "build_decode_graph", broken)
    with caplog.at_level(logging.WARNING, logger="llm.fast_decode"):
        answers = [fresh_llm.invoke(QUESTION), fresh_llm.invoke(QUESTION)]
    assert answers == [expected, expected]
    warnings = [r for r in caplog.records if "decode graph unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "capture not permitted" in warnings[0].getMessage()
    assert "capture not permitted" in fd.graph_states(fresh_llm.model).disabled_reason


def test_compiled_generate_warm_up_failure_falls_back_to_eager(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("inductor missing a compiler")

    monkeypatch.setattr(fd, "warm_up", broken)
    kwargs = fresh_llm._generate_kwargs([QUESTION], {})
    with caplog.at_level(logging.WARNING, logger="llm.fast_decode"):
        assert fd.with_fast_decode(fresh_llm.model, kwargs) is kwargs
        assert fd.with_fast_decode(fresh_llm.model, kwargs) is kwargs
    assert len([r for r in caplog.records if "inductor missing" in r.getMessage()]) == 1


# ----- on a GPU: the captured graph -----------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_captured_decode_graph_matches_generate_on_cuda(tiny_glm_dir: Path) -> None:
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", temperature=0.0, max_new_tokens=24)
    assert llm_.fast_decode_active
    for prompts in ([QUESTION], [QUESTION, "话说天下大势，分久必合，合久必分。"]):
        eager, fast = fast_and_eager(llm_, prompts)
        assert torch.equal(eager[:, :-20], fast[:, :-20])  # the prompt, then the first new tokens
        agree = (eager[:, -24:] == fast[:, -24:]).float().mean().item()
        assert agree > 0.9  # compiled kernels may round differently late in a random model's output
    states = fd.graph_states(llm_.model)
    assert states.disabled_reason is None and all(g.graph is not None for g in states.graphs.values())
    assert len(states.capture_times) == 2
    chunks = list(llm_.stream(QUESTION))
    assert len(chunks) > 1 and len(states.capture_times) == 2  # the stream reused the batch-1 graph
