"""The fast decode path (llm.fast_decode): static cache, one CUDA graph per token, fallbacks.

On CPU the decode-graph loop runs its step eagerly (no capture), which checks everything but
the capture itself: the same masks, positions, token choice and stopping as ``generate``.
Tests force the path on CPU with ``FastDecodeOptions(on_cpu=True)`` (a ChatGLM field).
"""

from __future__ import annotations

import logging
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import torch

import llm.fast_decode as fd
import llm.fast_decode.decode_graph
import llm.fast_decode.static_cache
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.streaming import model_is_busy, run_generate, stream_token_ids
from tests import helpers
from tests.fixtures.models import ForcedTokens

QUESTION = "曹操是谁？"


ON_CPU = FastDecodeOptions(on_cpu=True)


@pytest.fixture
def fast_llm(fresh_llm: ChatGLM) -> ChatGLM:
    """``fresh_llm`` with the fast path allowed on CPU (it is off there by default)."""
    return fresh_llm.model_copy(update={"fast_decode_options": ON_CPU})


def fast_and_eager(
    llm_: ChatGLM, prompts: list[str], *, options: FastDecodeOptions = ON_CPU, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    return helpers.fast_and_eager(llm_, prompts, options=options, **kwargs)


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


def test_per_model_state_reports_why_each_path_is_off(fresh_llm: ChatGLM) -> None:
    """One per-model state says, for every path, whether it runs or why not (CPU: the device;
    an option switched off; a path a failure turned off), so a silent drop to plain generate
    shows in ``ChatGLM.fast_decode_report``."""
    report = fresh_llm.fast_decode_report
    assert set(report) == set(fd.PATHS) and all("cpu" in reason for reason in report.values())
    off = fresh_llm.model_copy(update={"fast_decode": False}).fast_decode_report
    assert set(off.values()) == {"fast_decode=False"}

    llm_ = fresh_llm.model_copy(update={"fast_decode_options": FastDecodeOptions(on_cpu=True, fused_qkv=False)})
    assert llm_.invoke(QUESTION)
    report = llm_.fast_decode_report
    assert report[fd.STATIC_CACHE] is None and report[fd.DECODE_GRAPH] is None and report[fd.PACKED_ATTENTION] is None
    assert report[fd.FUSED_QKV] == "off by option (fused_qkv=False)"
    assert "only on CUDA" in report[fd.PREFILL_GRAPH]
    fd.fast_decode_state(llm_.model).off[fd.STATIC_CACHE] = "RuntimeError: inductor missing"
    assert not llm_.fast_decode_active and "inductor" in llm_.fast_decode_report[fd.STATIC_CACHE]


def test_fast_path_passes_the_kv_cache_by_the_keyword_this_transformers_takes(fresh_llm: ChatGLM) -> None:
    """Guards against the fast path calling the model with ``past_key_values``, which
    transformers 5.24 deprecates ("will be removed in version 5.40.0 for GlmForCausalLM.forward"):
    after such an upgrade every fast path would turn itself off and decoding drop to ~30 tok/s."""
    import inspect
    import warnings

    takes_cache = "cache" in inspect.signature(type(fresh_llm.model).forward).parameters
    assert fd.cache_kwarg(fresh_llm.model) == ("cache" if takes_cache else "past_key_values")
    eos = fresh_llm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    processor = ForcedTokens(fresh_llm.tokenizer.encode("话说天下", add_special_tokens=False), eos_id=eos)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast_and_eager(fresh_llm, [QUESTION, "刘备"])  # decode graph and its prompt pass
        run_generate(fresh_llm.model, fresh_llm._generate_kwargs([QUESTION], {"logits_processor": [processor]}),
                     fast_decode=ON_CPU)  # generate on a static cache
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    assert not fd.fast_decode_state(fresh_llm.model).off


def test_attention_step_fallback_hands_the_cache_on_by_the_attention_modules_keyword(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against the decode step's attention falling back to ``GlmAttention.forward`` with
    ``cache=`` under transformers 5.17 (the pin's lower bound), whose forward names it
    ``past_key_values``: the cache landed in ``**kwargs`` unused, the prompt pass never filled
    the static cache, and the fast path's tokens left ``generate``'s at the second new token (seen
    on the GPU machine's 5.17 as a "CUDA" failure of test_graph_loop_matches_generate)."""
    from transformers.models.glm.modeling_glm import GlmAttention

    from llm.cache_kwarg import cache_kwarg_of
    from llm.fast_decode.attention_step import AttentionStep

    seen: dict[str, Any] = {}

    def forward_5_17(self: Any, hidden_states: torch.Tensor, position_embeddings: Any, attention_mask: Any,
                     past_key_values: Any = None, **kwargs: Any) -> Any:
        seen.update(past_key_values=past_key_values, kwargs=sorted(kwargs))
        return hidden_states, None

    monkeypatch.setattr(GlmAttention, "forward", forward_5_17)
    cache_kwarg_of.cache_clear()
    try:
        module = fresh_llm.model.model.layers[0].self_attn
        fused = types.SimpleNamespace(module=module, sizes=(module.head_dim * 2, module.head_dim, module.head_dim))
        step = AttentionStep(fused, slot=torch.zeros(1, dtype=torch.long))
        cache = object()  # not a static cache: the step falls back to the module's own forward
        step.forward(torch.zeros(1, 1, 8), (None, None), None, past_key_values=cache, position_ids=None)
    finally:
        cache_kwarg_of.cache_clear()
    assert seen == {"past_key_values": cache, "kwargs": ["position_ids"]}


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
    assert fd.fast_decode_state(fresh_llm.model).graphs, "the call must have taken the graph loop"


def _repeated_kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           scale: float) -> torch.Tensor:
    """Grouped-query attention written out with K/V repeated per query head: (B, q_len, H, D)."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf)
    return (scores.softmax(-1) @ v.double()).transpose(1, 2).to(q.dtype)


@pytest.mark.parametrize(("batch", "heads", "kv_heads", "length"), [(1, 32, 2, 64), (3, 4, 2, 17), (2, 8, 8, 9)])
def test_packed_gqa_attention_equals_attention_with_repeated_kv(batch: int, heads: int, kv_heads: int,
                                                                length: int) -> None:
    """The decode step's attention reads each K/V head once; the result must not change."""
    torch.manual_seed(0)
    dim = 16
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    q = torch.randn(batch, heads, 1, dim)
    k, v = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    mask = torch.rand(batch, 1, 1, length) < 0.7
    mask[..., -1] = True  # every row sees its own new token
    for m in (mask, None):
        out, weights = fd.packed_gqa_attention(module, q, k, v, m, scaling=dim**-0.5)
        assert weights is None and out.shape == (batch, 1, heads, dim)
        torch.testing.assert_close(out, _repeated_kv_attention(q, k, v, m, dim**-0.5), atol=1e-5, rtol=1e-5)


def test_packed_gqa_attention_leaves_prompts_to_sdpa() -> None:
    """Several query tokens (the prompt) take transformers' own SDPA path unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    ours, _ = fd.packed_gqa_attention(module, q, k, v, None, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, q, k, v, None, scaling=0.3)
    assert torch.equal(ours, theirs)


def test_a_mask_narrower_than_the_cache_limits_the_prompts_keys_and_values() -> None:
    """Regression: the captured prompt pass attended to the whole static cache (L >= 1024 slots,
    4096-8192 in chats) through a (B, 1, T, L) mask, so SDPA and transformers' ``repeat_kv``
    copies of K/V cost in proportion to L (29 us per layer at L = 1024 and a 64-token bucket on
    the H200, run 19). A mask of the first ``span`` slots now limits K/V to them: same result as
    the full cache with the rest masked off."""
    torch.manual_seed(2)
    module = types.SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    batch, heads, rows, span, length, dim = 2, 4, 6, 9, 32, 8
    q, k, v = torch.randn(batch, heads, rows, dim), torch.randn(batch, 2, length, dim), torch.randn(batch, 2, length, dim)
    mask = torch.rand(batch, 1, rows, span) < 0.6
    mask[..., 0] = True  # no all-masked row
    ours, _ = fd.packed_gqa_attention(module, q, k, v, mask, scaling=dim**-0.5)
    full = torch.zeros(batch, 1, rows, length, dtype=torch.bool)
    full[..., :span] = mask
    torch.testing.assert_close(ours, _repeated_kv_attention(q, k, v, full, dim**-0.5), atol=1e-5, rtol=1e-5)


def test_decode_steps_use_packed_attention_and_restore_the_config(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph loop's one-token steps and the prompt pass run ``packed_gqa_attention`` (the
    prompt's K/V narrowed to its own slots); every call after it sees the model's own "sdpa" again."""
    calls: list[tuple[int, ...]] = []
    real = fd.packed_gqa_attention

    def spy(module: Any, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(tuple(query.shape))
        return real(module, query, *args, **kwargs)

    fd.register_decode_attention()
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, fd.DECODE_ATTENTION, spy)
    config = fresh_llm.model.config
    assert config._attn_implementation == "sdpa"
    eager, fast = fast_and_eager(fresh_llm, [QUESTION, "刘备"], min_new_tokens=24)
    assert torch.equal(eager, fast)
    layers = config.num_hidden_layers
    prompt = fresh_llm._generate_kwargs([QUESTION, "刘备"], {})["input_ids"].shape[1]
    assert len(calls) == layers + 23 * layers  # the prompt pass, then 24 tokens: 23 one-token steps
    assert [shape[2] for shape in calls[:layers]] == [prompt] * layers and {shape[2] for shape in calls[layers:]} == {1}
    assert config._attn_implementation == "sdpa"


def test_fused_qkv_weights_are_views_of_one_tensor_and_decode_takes_one_projection(
    fresh_llm: ChatGLM, tmp_path: Path
) -> None:
    """The q/k/v weights become row blocks of one tensor (same values, no copy kept), decode
    steps and the prompt pass compute them with one GEMV / GEMM, and the model still saves and
    reloads unchanged."""
    model = fresh_llm.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    eager, fast = fast_and_eager(fresh_llm, [QUESTION, "刘备"], min_new_tokens=24)
    assert torch.equal(eager, fast)
    fused = fd.fast_decode_state(model).fused
    assert fused is not None and len(fused) == model.config.num_hidden_layers
    for f in fused:
        assert f.intact() and f.module.q_proj is f.originals[0]  # the stand-ins are put back after each step
        assert f.originals[1].weight.untyped_storage().data_ptr() == f.weight.untyped_storage().data_ptr()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    calls = {"fused": 0}
    real_linear = torch.nn.functional.linear

    def counting_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        calls["fused"] += any(weight is f.weight for f in fused)
        return real_linear(x, weight, bias)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "linear", counting_linear)
        run_generate(model, fresh_llm._generate_kwargs([QUESTION], {"min_new_tokens": 24}), fast_decode=True)
    assert calls["fused"] == 24 * model.config.num_hidden_layers  # one per layer: the prompt pass, 23 one-token steps

    model.save_pretrained(tmp_path / "saved")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert all(torch.equal(before[k], v) for k, v in reloaded.state_dict().items())


def test_fused_qkv_refuses_other_call_orders_and_replaced_weights(fresh_llm: ChatGLM) -> None:
    """A model whose attention calls k_proj first, or whose weights were replaced after fusing
    (``model.to``), must fail loudly (and so fall back), never compute with stale parts."""
    attention = fresh_llm.model.model.layers[0].self_attn
    f = fd.FusedQKV(attention)
    x = torch.randn(1, 1, fresh_llm.model.config.hidden_size)
    f.swap(fused=True)
    with pytest.raises(RuntimeError, match="in order"):
        attention.k_proj(x)
    q = attention.q_proj(x)
    with pytest.raises(RuntimeError, match="in order"):
        attention.k_proj(x.clone())  # another input
    f.swap(fused=False)
    torch.testing.assert_close(q, attention.q_proj(x))
    attention.to(torch.float64)
    assert not f.intact()
    with pytest.raises(RuntimeError, match="replaced"):
        f.swap(fused=True)


@pytest.mark.slow
def test_compiled_decode_step_has_one_qkv_gemv_per_layer_and_no_repeated_kv(fresh_llm: ChatGLM) -> None:
    """What makes the GPU decode step fast, checked on the code Inductor generates (on CPU): one
    addmm for q/k/v per layer, attention as two batched matmuls (no SDPA over repeated K/V), no
    graph breaks, and the logits of the model's own forward."""
    from torch._inductor.utils import run_and_get_code

    model = fresh_llm.model
    layers = model.config.num_hidden_layers
    fused = fd.fuse_qkv_weights(model)
    sampling = fd.Sampling(do_sample=False, top_k=None, penalty=False)
    logits = {}
    with torch.inference_mode():
        for name in ("eager", "compiled"):
            g = fd.build_decode_graph(model, (1, 64), sampling, capture=False, fused=fused)
            model(input_ids=torch.tensor([[5, 6, 7, 8]]), **{fd.cache_kwarg(model): g.cache}, use_cache=True,
                  logits_to_keep=1)
            g.mask[:, 0, 0, :4] = True
            g.cur.fill_(4)
            g.token.fill_(9)
            if name == "eager":
                logits[name] = g.forward(g.token, g.cur - g.pads, g.mask)  # the model's own modules
                continue
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            with fd.decode_forward(g.config, g.fused):
                logits[name], codes = run_and_get_code(torch.compile(g.forward, dynamic=False), g.token,
                                                       g.cur - g.pads, g.mask)
    code = "\n".join(codes)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert code.count("extern_kernels.addmm(") == layers  # q/k/v: the only biased projections
    assert code.count("extern_kernels.bmm(") == 2 * layers
    assert "scaled_dot_product" not in code
    torch.testing.assert_close(logits["compiled"], logits["eager"], atol=1e-4, rtol=1e-4)


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


def test_fast_stream_is_the_same_text_and_batch_the_same_answers(fresh_llm: ChatGLM, fast_llm: ChatGLM) -> None:
    fast = fast_llm
    eager = fresh_llm.model_copy(update={"fast_decode": False})
    assert fast.fast_decode_active
    chunks = list(fast.stream(QUESTION))
    assert len(chunks) > 1 and "".join(chunks) == eager.invoke(QUESTION)
    prompts = [QUESTION, "刘备是谁？诸葛亮呢？"]
    assert fast.batch(prompts) == eager.batch(prompts)
    assert fd.fast_decode_state(fresh_llm.model).graphs


def test_streamed_decode_keeps_the_next_step_queued_while_a_token_is_handed_on(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: with a streamer the graph loop launched step k and then waited for step k, so
    the GPU idled for the host's whole turn at every token (only the non-streamed path kept a
    step queued). Every token after the first must be handed on with the next step launched."""
    events: list[tuple[str, int]] = []
    real_step = llm.fast_decode.decode_graph.decode_step

    def recorded_step(g: Any) -> None:
        real_step(g)
        events.append(("launch", sum(1 for e in events if e[0] == "launch") + 1))

    class Recorder:
        def put(self, value: torch.Tensor) -> None:
            events.append(("put", sum(1 for e in events if e[0] == "put")))

        def end(self) -> None:
            pass

    monkeypatch.setattr(llm.fast_decode.decode_graph, "decode_step", recorded_step)
    kwargs = fresh_llm._generate_kwargs([QUESTION], {"max_new_tokens": 8, "min_new_tokens": 8})
    run_generate(fresh_llm.model, {**kwargs, "streamer": Recorder()}, fast_decode=ON_CPU)
    puts = [i for i, e in enumerate(events) if e[0] == "put"][1:]  # the first put is the prompt
    launches = {step: i for i, (kind, step) in enumerate(events) if kind == "launch"}
    assert len(puts) == 8 and len(launches) == 7
    for token, at in enumerate(puts):
        if 0 < token < 7:  # token 0 comes from the prompt pass; token 7 has no step after it
            assert launches[token + 1] < at, f"token {token} handed on before step {token + 1} was launched"


def test_no_host_to_device_copy_follows_the_prompt_pass(fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the eos ids were copied from a host tensor to the graph's buffer after the
    prompt pass was launched, and PyTorch synchronizes the stream after such a copy, so the host
    queued the first token's work only once the whole pass had run (~9 of ~12 ms TTFT on the
    H200). The host tensor must be made, and copied, before the prompt pass; after it the graph
    loop builds only its result (``torch.tensor(new_ids)``, no streamer here)."""
    events: list[str] = []
    module = llm.fast_decode.decode_graph
    real_prefill, real_tensor = module.prefill, torch.tensor

    def recorded_prefill(*args: Any, **kwargs: Any) -> torch.Tensor:
        events.append("prompt pass")
        return real_prefill(*args, **kwargs)

    def made_on_host(*args: Any, **kwargs: Any) -> torch.Tensor:
        events.append("host tensor")
        return real_tensor(*args, **kwargs)

    monkeypatch.setattr(module, "prefill", recorded_prefill)
    monkeypatch.setattr(module.torch, "tensor", made_on_host)
    kwargs = fresh_llm._generate_kwargs([QUESTION], {"max_new_tokens": 4, "min_new_tokens": 4})
    run_generate(fresh_llm.model, dict(kwargs), fast_decode=ON_CPU)
    at = events.index("prompt pass")
    assert "host tensor" in events[:at] and events[at + 1:] == ["host tensor"], events


def test_closing_a_fast_stream_stops_generation(fresh_llm: ChatGLM) -> None:
    kwargs = fresh_llm._generate_kwargs([QUESTION], {"max_new_tokens": 500, "min_new_tokens": 500})
    prompt = kwargs["input_ids"].shape[1]
    cancel = threading.Event()
    ids = stream_token_ids(fresh_llm.model, kwargs, cancel, fast_decode=True)
    first = [next(ids), next(ids)]
    ids.close()
    assert len(first) == 2 and cancel.is_set() and not model_is_busy(fresh_llm.model)
    (graph,) = fd.fast_decode_state(fresh_llm.model).graphs.values()
    # The cache position tells how many tokens were decoded: far fewer than the 500 asked for.
    assert int(graph.cur) < prompt + 50


def test_calls_with_logits_processors_take_generate_with_static_cache(fast_llm: ChatGLM) -> None:
    text = "话说天下大势"
    eos = fast_llm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    processor = ForcedTokens(fast_llm.tokenizer.encode(text, add_special_tokens=False), eos_id=eos)
    assert fast_llm.invoke(QUESTION, logits_processor=[processor]) == text
    state = fd.fast_decode_state(fast_llm.model)
    assert not state.graphs
    assert len(state.caches) == 1 and not state.off


def test_graph_build_failure_falls_back_once_with_a_warning(
    fast_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A compile/capture failure must not fail the call: warn once, then use generate for good,
    and the model's state says why the decode graph is off."""
    expected = fast_llm.model_copy(update={"fast_decode": False}).invoke(QUESTION)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("capture not permitted")

    monkeypatch.setattr(llm.fast_decode.decode_graph, "build_decode_graph", broken)
    with caplog.at_level(logging.WARNING, logger="llm.fast_decode"):
        answers = [fast_llm.invoke(QUESTION), fast_llm.invoke(QUESTION)]
    assert answers == [expected, expected]
    warnings = [r for r in caplog.records if "decode graph unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "capture not permitted" in warnings[0].getMessage()
    assert "capture not permitted" in fd.fast_decode_state(fast_llm.model).off[fd.DECODE_GRAPH]
    report = fast_llm.fast_decode_report
    assert "capture not permitted" in report[fd.DECODE_GRAPH] and report[fd.STATIC_CACHE] is None
    assert "decode graph is off" in report[fd.PACKED_ATTENTION]


def test_compiled_generate_warm_up_failure_falls_back_to_eager(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("inductor missing a compiler")

    monkeypatch.setattr(llm.fast_decode.static_cache, "warm_up", broken)
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
        eager, fast = fast_and_eager(llm_, prompts, options=FastDecodeOptions())
        assert torch.equal(eager[:, :-20], fast[:, :-20])  # the prompt, then the first new tokens
        agree = (eager[:, -24:] == fast[:, -24:]).float().mean().item()
        assert agree > 0.9  # compiled kernels may round differently late in a random model's output
    states = fd.fast_decode_state(llm_.model)
    assert not states.off and all(g.graph is not None for g in states.graphs.values())
    assert len(states.capture_times) == 2
    chunks = list(llm_.stream(QUESTION))
    assert len(chunks) > 1 and len(states.capture_times) == 2  # the stream reused the batch-1 graph


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_fast_path_is_on_on_cuda(tiny_glm_dir: Path) -> None:
    """Fails when any part of the fast path is off on a CUDA GPU (e.g. after a transformers
    upgrade changed the model's forward): the report names the part and the reason."""
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", temperature=0.0, max_new_tokens=8)
    assert llm_.fast_decode_active
    assert llm_.invoke(QUESTION, min_new_tokens=8) is not None  # builds and captures every path
    eos = llm_.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    processor = ForcedTokens(llm_.tokenizer.encode("话说天下", add_special_tokens=False), eos_id=eos)
    assert llm_.invoke(QUESTION, logits_processor=[processor]) == "话说天下"  # the static-cache generate path
    report = llm_.fast_decode_report
    assert report == dict.fromkeys(fd.PATHS), report
    state = fd.fast_decode_state(llm_.model)
    assert state.graphs and all(g.graph is not None for g in state.graphs.values())
    assert all(g.prefills for g in state.graphs.values()) and state.warmups


# ----- the prompt pass in buckets ----------------------------------------------------------


@pytest.mark.parametrize(
    ("prompts", "options"),
    [
        ([QUESTION], {}),
        ([QUESTION, "话说天下大势，分久必合，合久必分。"], {}),  # left padding: padding rows attend only themselves
        ([QUESTION, "刘备"], {"repetition_penalty": 1.3, "min_new_tokens": 24}),
        ([QUESTION], {"max_new_tokens": 1}),
    ],
)
def test_bucketed_prompt_pass_matches_generate(fresh_llm: ChatGLM, prompts: list[str], options: dict[str, Any]) -> None:
    """The captured prompt pass's arithmetic, run eagerly: right padding to the bucket, the 4D
    mask, positions, the logits at the last real position and the cache's write position."""
    bucketed = FastDecodeOptions(on_cpu=True, bucketed_prefill_on_cpu=True)
    eager, fast = fast_and_eager(fresh_llm, prompts, options=bucketed, **options)
    assert torch.equal(eager, fast)
    (g,) = fd.fast_decode_state(fresh_llm.model).graphs.values()
    assert list(g.prefills) == [fd.MIN_PREFILL_BUCKET]
    span = g.prefills[fd.MIN_PREFILL_BUCKET].inputs.mask.shape[-1]
    assert span == fd.MIN_PREFILL_BUCKET < g.mask.shape[-1]  # the prompt attends to its bucket, not the cache
    eager, fast = fast_and_eager(fresh_llm, [p * 30 for p in prompts], options=bucketed, **options)  # longer bucket
    assert torch.equal(eager, fast)
    assert len(g.prefills) == 2 and fd.PREFILL_GRAPH not in fd.fast_decode_state(fresh_llm.model).off


def test_bucketed_prompt_pass_takes_one_qkv_projection_per_layer(fresh_llm: ChatGLM) -> None:
    """Regression: the captured prompt pass ran q, k and v as three GEMMs per layer (14.3 + 5.0
    + 5.0 us at a 64-token bucket of the 6B shape on the H200, run 19) while the decode step
    already ran one over the fused weight. It now runs the fused one too, with the same tokens."""
    model = fresh_llm.model
    bucketed = FastDecodeOptions(on_cpu=True, bucketed_prefill_on_cpu=True)
    generate_kwargs = fresh_llm._generate_kwargs([QUESTION], {"max_new_tokens": 1})
    eager = run_generate(model, dict(generate_kwargs))
    attention = model.model.layers[0].self_attn
    qkv_rows = sum(p.out_features for p in (attention.q_proj, attention.k_proj, attention.v_proj))
    calls = {"fused": 0, "rows": set()}
    real_linear = torch.nn.functional.linear

    def counting_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if weight.shape[0] == qkv_rows:
            calls["fused"] += 1
            calls["rows"].add(x.shape[-2])
        return real_linear(x, weight, bias)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "linear", counting_linear)
        fast = run_generate(model, dict(generate_kwargs), fast_decode=bucketed)
    assert torch.equal(eager, fast)
    layers = model.config.num_hidden_layers
    assert calls["rows"] >= {fd.MIN_PREFILL_BUCKET} and calls["fused"] >= layers  # the prompt pass: fused


def test_prefill_buckets() -> None:
    assert fd.prefill_bucket(1, 45, 1024) == fd.MIN_PREFILL_BUCKET
    assert fd.prefill_bucket(1, 65, 1024) == 128
    assert fd.prefill_bucket(2, 1000, 1024) == 1024
    assert fd.prefill_bucket(16, 512, 1024) is None  # 8192 tokens: compute-bound, eager
    assert fd.prefill_bucket(1, 1000, 1000) is None  # the bucket would not fit the cache


def test_an_attached_adapter_is_the_reason_the_fast_path_is_off() -> None:
    """Regression: a model carrying an adapter the fast path cannot run (unmerged LoRA; P-tuning
    once) was refused as "GlmForCausalLM does not support a compiled static cache", which sent
    users looking at the wrong thing."""
    from llm.adapters.lora import FAST_DECODE_REASON
    from llm.fast_decode.state import unsupported_reason

    model = types.SimpleNamespace(fast_decode_unsupported=FAST_DECODE_REASON, device=torch.device("cuda"))
    assert unsupported_reason(model) == FAST_DECODE_REASON


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_prompt_passes_capture_again_after_every_graph_was_freed(tiny_glm_dir: Path) -> None:
    """Regression (run 16, H200): once every decode graph holding captured prompt passes was
    freed (evicted by newer shapes, or cleared), the next prompt-pass capture into the shared
    pool failed an allocator assertion, turned captured prompts off for the model and left the
    CUDA RNG unusable ("Offset increment outside graph capture")."""
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", temperature=0.0, max_new_tokens=8)
    first = llm_.invoke(QUESTION, min_new_tokens=8)
    state = fd.fast_decode_state(llm_.model)
    assert all(g.prefills for g in state.graphs.values())
    state.graphs.clear()
    assert llm_.invoke(QUESTION, min_new_tokens=8) == first
    assert fd.PREFILL_GRAPH not in state.off and all(g.prefills for g in state.graphs.values())
    torch.randn(4, device="cuda")  # the RNG still works
