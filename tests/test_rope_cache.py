"""The decode step's rotary + K/V cache write (``llm.kernels.rope_cache_write``) and the attention
forward that uses it (``llm.fast_decode.attention_step``), against transformers' own math.

The reference is the model's own code: ``modeling_glm.apply_rotary_pos_emb`` and the
``index_copy_`` of ``StaticLayer.update``. Kernel checks (``test_interpreted_*``) run in a pytest
subprocess with ``TRITON_INTERPRET=1`` (Triton reads it on import), as in test_decode_attention.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import llm.fast_decode.attention_step as step_module
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.kernels.rope_cache_op import reference_rope_cache_write, rope_applies, rope_cache_write
from llm.streaming import run_generate
from tests.helpers import (
    INTERPRETED,
    assert_interpreted_tests_pass,
    count_calls,
    fast_and_eager,
    interpreted_marker,
    replay_slot_steps,
)

interpreted = interpreted_marker()
ON_CPU = FastDecodeOptions(on_cpu=True)
BUCKETED = ON_CPU.model_copy(update={"bucketed_prefill_on_cpu": True})
PROMPTS = ["曹操是谁？", "刘备"]


def rotary(batch: int, rotary_dim: int, dtype: torch.dtype, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``(B, 1, R)`` as ``GlmRotaryEmbedding`` makes them: the R/2 angles twice over."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(batch, 1, rotary_dim // 2, generator=g) * 100
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def case(batch: int, heads: int, kv_heads: int, dim: int, rotary_dim: int, length: int, dtype: torch.dtype,
         *, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    cos, sin = rotary(batch, rotary_dim, dtype, seed=seed)
    return {
        "qkv": torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g).to(dtype),
        "cos": cos,
        "sin": sin,
        "k_cache": torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype),
        "v_cache": torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype),
        "heads": heads,
    }


def run_both(c: dict[str, Any], slot: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(q, K cache, V cache) from ``rope_cache_write`` and from the reference, each on its own caches."""
    device = c["qkv"].device
    index = torch.tensor([slot], device=device)
    k1, v1, k2, v2 = c["k_cache"].clone(), c["v_cache"].clone(), c["k_cache"].clone(), c["v_cache"].clone()
    n1, n2 = torch.tensor(-1, device=device), torch.tensor(-1, device=device)
    q1 = rope_cache_write(c["qkv"], c["cos"], c["sin"], index, k1, v1, n1, heads=c["heads"])
    q2 = reference_rope_cache_write(c["qkv"], c["cos"], c["sin"], index, k2, v2, n2, c["heads"])
    assert int(n1) == int(n2) == slot + 1  # the cache layer's count of written slots
    return (q1, k1, v1), (q2, k2, v2)


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__, workers=2)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("batch", "heads", "kv_heads", "dim", "rotary_dim"),
                         [(1, 32, 2, 128, 64), (3, 4, 2, 16, 8), (2, 4, 4, 32, 32), (1, 6, 2, 24, 12)])
def test_interpreted_kernel_matches_the_models_rotary_and_cache_update(
    batch: int, heads: int, kv_heads: int, dim: int, rotary_dim: int, dtype: torch.dtype
) -> None:
    """ChatGLM3-6B's layout (32 q heads, 2 K/V heads, half of 128 dims rotated), a full-width
    rotary, a head size that is not a power of two; the slot first, inside and last in the cache.
    float32 agrees to rounding; bf16 within one unit of the last place (the kernel rounds once,
    the eager reference after each operation). Slots other than the written one are untouched."""
    length = 16
    for seed, slot in enumerate((0, 7, length - 1)):
        c = case(batch, heads, kv_heads, dim, rotary_dim, length, dtype, seed=seed)
        assert rope_applies(c["qkv"], c["cos"], c["k_cache"])
        ours, theirs = run_both(c, slot)
        assert ours[0].shape == (batch, heads, 1, dim) and ours[0].is_contiguous()
        for a, b in zip(ours, theirs, strict=True):
            tolerance = 1e-5 if dtype == torch.float32 else 2 ** -7 * b.abs().max().item()
            assert (a.float() - b.float()).abs().max().item() <= tolerance
        others = [s for s in range(length) if s != slot]
        assert torch.equal(ours[1][:, :, others], c["k_cache"][:, :, others])
        assert torch.equal(ours[2][:, :, others], c["v_cache"][:, :, others])
        assert torch.equal(ours[2][:, :, slot], theirs[2][:, :, slot])  # v is copied, not rounded


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("batch", "tokens", "heads", "kv_heads", "dim", "rotary_dim", "start"),
                         [(1, 64, 32, 2, 128, 64, 0), (2, 5, 4, 2, 16, 8, 3), (3, 4, 6, 2, 24, 12, 12)])
def test_interpreted_kernel_matches_the_models_rotary_and_cache_update_for_prompt_tokens(
    batch: int, tokens: int, heads: int, kv_heads: int, dim: int, rotary_dim: int, start: int, dtype: torch.dtype
) -> None:
    """A prompt pass's T tokens per row (a 64-token bucket of ChatGLM3-6B's layout; after a
    prefix; up to the cache's last slot) against GLM's ``apply_rotary_pos_emb`` and the
    ``index_copy_`` of ``StaticLayer.update`` written out here: q as ``(B, H, T, D)``, k and v
    at slots ``start .. start + T - 1``, the count set to ``start + T``, other slots untouched."""
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb

    length = start + tokens + 2 if start < 12 else start + tokens
    g = torch.Generator().manual_seed(tokens)
    angles = torch.rand(batch, tokens, rotary_dim // 2, generator=g) * 100
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
    qkv = torch.randn(batch, tokens, (heads + 2 * kv_heads) * dim, generator=g).to(dtype)
    k_cache = torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype)
    v_cache = torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype)
    k1, v1, count = k_cache.clone(), v_cache.clone(), torch.tensor(-1)
    q1 = rope_cache_write(qkv, cos, sin, torch.tensor([start]), k1, v1, count, heads=heads)
    q, k, v = qkv.view(batch, tokens, -1, dim).transpose(1, 2).split([heads, kv_heads, kv_heads], dim=1)
    q2, k2 = apply_rotary_pos_emb(q, k, cos, sin)
    assert q1.shape == (batch, heads, tokens, dim) and q1.is_contiguous() and int(count) == start + tokens
    written = slice(start, start + tokens)
    tolerance = 1e-5 if dtype == torch.float32 else 2 ** -7 * 8
    assert (q1.float() - q2.float()).abs().max().item() <= tolerance
    assert (k1[:, :, written].float() - k2.float()).abs().max().item() <= tolerance
    assert torch.equal(v1[:, :, written], v)  # v is copied, not rounded
    others = [i for i in range(length) if not start <= i < start + tokens]
    assert torch.equal(k1[:, :, others], k_cache[:, :, others]) and torch.equal(v1[:, :, others], v_cache[:, :, others])


@interpreted
@pytest.mark.parametrize("tokens", [1, 5])
def test_interpreted_kernel_reads_the_rotary_tables_at_each_tokens_position(tokens: int) -> None:
    """With ``positions``, cos/sin are tables over every position and each token takes its row
    (out-of-range positions, as a padding token may have, clamped): the same q, K and V cache as
    the reference given the gathered rows."""
    batch, heads, kv_heads, dim, rotary_dim, length = 2, 4, 2, 16, 8, 12
    g = torch.Generator().manual_seed(tokens)
    angles = torch.rand(length, rotary_dim // 2, generator=g) * 100
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    qkv = torch.randn(batch, tokens, (heads + 2 * kv_heads) * dim, generator=g).squeeze(1)
    positions = torch.tensor([[3, 4, 5, 6, 7][:tokens], [0, 1, 2, 11, 40][:tokens]])
    if tokens == 1:
        positions = torch.tensor([[9], [-3]])
    k_cache, v_cache = torch.randn(batch, kv_heads, length, dim, generator=g), torch.zeros(batch, kv_heads, length, dim)
    k1, v1, n1 = k_cache.clone(), v_cache.clone(), torch.tensor(-1)
    k2, v2, n2 = k_cache.clone(), v_cache.clone(), torch.tensor(-1)
    slot = torch.tensor([4])
    q1 = rope_cache_write(qkv, cos, sin, slot, k1, v1, n1, heads=heads, positions=positions)
    at = positions.clamp(0, length - 1)
    q2 = reference_rope_cache_write(qkv, cos[at], sin[at], slot, k2, v2, n2, heads)
    for a, b in ((q1, q2), (k1, k2), (v1, v2)):
        assert (a - b).abs().max().item() <= 1e-5
    assert int(n1) == int(n2) == 4 + tokens


@interpreted
def test_interpreted_prompt_pass_runs_the_kernel_once_per_layer(fresh_llm: ChatGLM,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny GLM's bucketed prompt pass (CPU, as a captured one computes it) launches the kernel
    once per layer for the whole bucket, and the answer is ``generate``'s."""
    import llm.kernels.rope_cache as kernel_module

    options = {"min_new_tokens": 4, "max_new_tokens": 4}
    assert torch.equal(*fast_and_eager(fresh_llm, PROMPTS, options=BUCKETED, **options))  # initialises the cache
    launches = count_calls(monkeypatch, kernel_module, "launch_rope_cache_write")
    assert torch.equal(*fast_and_eager(fresh_llm, PROMPTS, options=BUCKETED, **options))
    layers = fresh_llm.model.config.num_hidden_layers
    assert len(launches) == layers + 3 * layers  # the prompt pass, then 3 one-token steps


@interpreted
def test_interpreted_decode_steps_run_the_kernel_and_choose_generates_tokens(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny GLM's decode steps (left-padded batch of two) launch the kernel once per layer
    per step and choose the tokens ``generate`` chooses."""
    import llm.kernels.rope_cache as kernel_module

    launches = count_calls(monkeypatch, kernel_module, "launch_rope_cache_write")
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=12)
    kwargs = llm_._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 12})
    eager = run_generate(llm_.model, dict(kwargs))
    fast = run_generate(llm_.model, dict(kwargs), fast_decode=ON_CPU)
    assert torch.equal(eager, fast)
    assert len(launches) == 11 * llm_.model.config.num_hidden_layers  # 12 tokens: 11 one-token steps


# ----- without the kernel (this process) -----------------------------------------------------


def test_without_kernel_the_op_is_the_models_own_math() -> None:
    """On CPU without the interpreter ``rope_cache_write`` is the reference, bit for bit."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernel here")
    c = case(2, 4, 2, 16, 8, 8, torch.float32)
    assert not rope_applies(c["qkv"], c["cos"], c["k_cache"])
    ours, theirs = run_both(c, 3)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("fused_rope", [True, False])
def test_decode_steps_take_the_attention_step_and_put_the_forward_back(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch, fused_rope: bool
) -> None:
    """With ``fused_rope`` every one-token step of every layer goes through ``AttentionStep``
    (the eager prompt pass does not), the tokens are ``generate``'s, and afterwards each attention
    module has its class's forward again; without it the model's own forward runs."""
    calls = count_calls(monkeypatch, step_module, "rope_cache_write")
    model = fresh_llm.model
    kwargs = fresh_llm._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 16, "max_new_tokens": 16})
    eager = run_generate(model, dict(kwargs))
    fast = run_generate(model, dict(kwargs), fast_decode=ON_CPU.model_copy(update={"fused_rope": fused_rope}))
    assert torch.equal(eager, fast)
    assert len(calls) == (15 * model.config.num_hidden_layers if fused_rope else 0)
    attentions = [m for m in model.modules() if type(m).__name__ == "GlmAttention"]
    assert attentions and all("forward" not in m.__dict__ for m in attentions)
    from llm.fast_decode import fast_decode_state

    for g in fast_decode_state(model).graphs.values():  # each layer counts the slots written, as update() does
        assert all(int(layer.cumulative_length) == int(g.cur) for layer in g.cache.layers)


def test_the_bucketed_prompt_pass_takes_the_attention_step_for_its_tokens(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the captured prompt pass ran transformers' rotary and cache update (~20 eager
    kernels per layer) while the decode step ran one. With the cache initialised, the bucketed
    prompt pass now calls ``rope_cache_write`` once per layer for all of its tokens, from the
    prompt's first slot, and answers as ``generate`` does."""
    model = fresh_llm.model
    options = {"min_new_tokens": 8, "max_new_tokens": 16}
    assert torch.equal(*fast_and_eager(fresh_llm, PROMPTS, options=BUCKETED, **options))  # initialises the cache
    prompts: list[tuple[int, int]] = []
    real = step_module.rope_cache_write

    def recording(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, *args: Any,
                  **kw: Any) -> torch.Tensor:
        if qkv.dim() == 3:
            prompts.append((qkv.shape[1], int(slot)))
        return real(qkv, cos, sin, slot, *args, **kw)

    monkeypatch.setattr(step_module, "rope_cache_write", recording)
    assert torch.equal(*fast_and_eager(fresh_llm, PROMPTS, options=BUCKETED, **options))
    import llm.fast_decode as fd

    assert prompts == [(fd.MIN_PREFILL_BUCKET, 0)] * model.config.num_hidden_layers


def test_attention_step_falls_back_for_a_prompt_of_several_tokens(fresh_llm: ChatGLM) -> None:
    """A call of several tokens without a prompt start slot, or not on an initialised static cache,
    runs the module's own forward: same output as without the step."""
    from transformers import DynamicCache

    from llm.fast_decode.attention import fuse_qkv_weights
    from llm.fast_decode.attention_step import attention_steps

    model = fresh_llm.model
    ids = fresh_llm._generate_kwargs(["曹操是谁？"], {})["input_ids"]
    before = model(input_ids=ids, use_cache=True, cache=DynamicCache(config=model.config)).logits
    fused = fuse_qkv_weights(model)
    steps = attention_steps(fused, slot=torch.zeros(1, dtype=torch.long))
    assert len(steps) == model.config.num_hidden_layers
    for f in fused:
        f.swap(fused=True)
    for s in steps:
        s.swap(on=True)
    try:
        after = model(input_ids=ids, use_cache=True, cache=DynamicCache(config=model.config)).logits
    finally:
        for s in steps:
            s.swap(on=False)
        for f in fused:
            f.swap(fused=False)
    torch.testing.assert_close(after, before)


def test_rotary_tables_are_the_rotary_modules_own_rows(fresh_llm: ChatGLM) -> None:
    """Row p of the tables is what the model's rotary module gives position p (so a step that
    reads it computes what the module's per-call output would); none for a length-dependent type."""
    from llm.fast_decode.rotary_table import rotary_table

    model = fresh_llm.model
    table = rotary_table(model, 40)
    assert table is not None and table.cos.shape[0] == 40
    rotary = model.get_decoder().rotary_emb
    probe = torch.empty(0, dtype=model.dtype)
    for batch_positions in ([[0]], [[39]], [[5, 6, 7], [17, 18, 19]]):
        positions = torch.tensor(batch_positions)
        cos, sin = rotary(probe, positions)
        assert torch.equal(cos, table.cos[positions]) and torch.equal(sin, table.sin[positions])
    kind = rotary.rope_type
    try:
        rotary.rope_type = "dynamic"
        assert rotary_table(model, 40) is None
    finally:
        rotary.rope_type = kind


@pytest.mark.parametrize("tables", [True, False])
def test_decode_steps_with_and_without_rotary_tables_equal_generate(fresh_llm: ChatGLM, tables: bool) -> None:
    """A left-padded batch (its rows' positions differ) decodes generate's tokens either way."""
    kwargs = fresh_llm._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 8, "max_new_tokens": 8})
    eager = run_generate(fresh_llm.model, dict(kwargs))
    fast = run_generate(fresh_llm.model, dict(kwargs), fast_decode=ON_CPU.model_copy(update={"rotary_tables": tables}))
    assert torch.equal(eager, fast)


def test_attention_steps_only_replace_glms_own_forward(fresh_llm: ChatGLM) -> None:
    """A module whose forward is not ``GlmAttention.forward`` (a subclass overriding it, or one
    patched on the instance) gets no step: its rotary may not be GLM's."""
    from llm.fast_decode.attention import fuse_qkv_weights
    from llm.fast_decode.attention_step import attention_steps

    fused = fuse_qkv_weights(fresh_llm.model)
    fused[0].module.forward = lambda *a, **k: None  # patched on the instance
    try:
        assert len(attention_steps(fused, slot=torch.zeros(1, dtype=torch.long))) == len(fused) - 1
    finally:
        del fused[0].module.forward


@pytest.mark.gpu
def test_cuda_kernel_matches_the_reference_and_replays_in_a_cuda_graph() -> None:
    """bf16 on CUDA, ChatGLM3-6B's layout: within one unit of the last place of the eager
    reference, and captured in a CUDA graph the slot is read on the GPU at each replay."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")

    c = {name: t.cuda() if isinstance(t, torch.Tensor) else t
         for name, t in case(2, 32, 2, 128, 64, 64, torch.bfloat16).items()}
    assert rope_applies(c["qkv"], c["cos"], c["k_cache"])
    ours, theirs = run_both(c, 9)
    for a, b in zip(ours, theirs, strict=True):
        assert (a.float() - b.float()).abs().max().item() <= 2 ** -7 * b.abs().max().item()
    length = torch.zeros((), dtype=torch.long, device="cuda")
    k, v = c["k_cache"].clone(), c["v_cache"].clone()
    slot = replay_slot_steps(lambda at: rope_cache_write(c["qkv"], c["cos"], c["sin"], at, k, v, length, heads=32),
                             start=20)
    heads = c["qkv"].view(2, 36, 128)[:, 34:]  # v heads, copied as they are
    assert slot == 23 and int(length) == 23 and all(torch.equal(v[:, :, s], heads) for s in (20, 21, 22))


@pytest.mark.gpu
def test_cuda_kernel_writes_a_prompts_tokens_as_the_reference_does() -> None:
    """bf16 on CUDA, ChatGLM3-6B's layout, a 64-token bucket after a 3-slot prefix (the prompt
    pass's call): q, and the K/V slots written, within one unit of the last place of the eager
    reference; every other slot untouched; the count set to ``start + T``."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from llm.kernels.rope_cache_op import reference_rope_cache_write

    batch, tokens, length, start = 2, 64, 128, 3
    g = torch.Generator().manual_seed(5)
    angles = torch.rand(batch, tokens, 32, generator=g) * 100
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(torch.bfloat16).cuda(), emb.sin().to(torch.bfloat16).cuda()
    qkv = torch.randn(batch, tokens, 36 * 128, generator=g).to(torch.bfloat16).cuda()
    k_cache = torch.randn(batch, 2, length, 128, generator=g).to(torch.bfloat16).cuda()
    v_cache = torch.randn(batch, 2, length, 128, generator=g).to(torch.bfloat16).cuda()
    slot = torch.tensor([start], device="cuda")
    k1, v1, k2, v2 = k_cache.clone(), v_cache.clone(), k_cache.clone(), v_cache.clone()
    n1, n2 = torch.tensor(-1, device="cuda"), torch.tensor(-1, device="cuda")
    q1 = rope_cache_write(qkv, cos, sin, slot, k1, v1, n1, heads=32)
    q2 = reference_rope_cache_write(qkv, cos, sin, slot, k2, v2, n2, 32)
    assert int(n1) == int(n2) == start + tokens and q1.shape == (batch, 32, tokens, 128)
    for a, b in ((q1, q2), (k1, k2), (v1, v2)):
        assert (a.float() - b.float()).abs().max().item() <= 2 ** -7 * b.abs().max().item()
    assert torch.equal(v1, v2)  # v is copied, not rounded; untouched slots are the clones'
