"""The Triton flash-decoding attention (``llm.kernels.flash_decode``) against float64 math.

Triton reads ``TRITON_INTERPRET=1`` when it is imported, so the kernel checks
(``test_interpreted_*``) run in a pytest subprocess with it set
(``test_kernels_under_triton_interpreter``) and are skipped in the normal session. The
interpreter computes a bf16 ``tl.dot`` wrongly, so there the kernel upcasts its dot operands
(``DOT_F32``, see the kernel module); bf16 inputs are still checked for loads, masks and the
output cast. Compiled GPU kernels run in ``bench/decode_attention.py``'s checks.
"""

from __future__ import annotations

import types
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch

import llm.kernels.decode_attention_op as op_module
from llm.kernels import attention_applies, flash_decode, reference_decode_attention
from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, interpreted_marker

needs_triton = pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed")
interpreted = interpreted_marker()


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> torch.Tensor:
    """float64 attention with K/V repeated per query head: ``(B, 1, H, D)``."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(groups, dim=1), v.double().repeat_interleave(groups, dim=1)
    scores = (q.double() @ k.transpose(-1, -2)) * scale
    if mask is not None:
        m = mask[..., : k.shape[2]]
        scores = scores.masked_fill(~m, -torch.inf) if m.dtype == torch.bool else scores + m.double()
    return (scores.softmax(-1) @ v).transpose(1, 2)


def inputs(batch: int, groups: int, dim: int, length: int, dtype: torch.dtype, *, kv_heads: int = 2,
           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q ``(B, H, 1, D)`` as the model makes it (a transposed view), K/V ``(B, KV, L, D)``."""
    g = torch.Generator().manual_seed(seed)
    heads = kv_heads * groups
    q = torch.randn(batch, 1, heads, dim, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype)
    return q, k, v


def masks(batch: int, length: int) -> dict[str, torch.Tensor]:
    """Boolean masks as the decode step makes them, and longer than the cache (it is sliced)."""
    left_padded = torch.zeros(batch, 1, 1, length + 3, dtype=torch.bool)
    for b in range(batch):
        left_padded[b, ..., 2 * b + 1: length // 2 + b] = True  # pads, the row's tokens, the unwritten rest
    first_few = torch.zeros(batch, 1, 1, length, dtype=torch.bool)
    first_few[..., :5] = True  # short context in a long static cache: most blocks skipped
    all_but_one = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    all_but_one[0] = False
    all_but_one[0, ..., length - 1] = True  # row 0 sees one key only
    return {"left_padded": left_padded, "first_few": first_few, "all_but_one": all_but_one}


def close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    return out.dtype == dtype and out.shape == ref.shape and bool((out.double() - ref).abs().max() <= tol)


# ----- under Triton's interpreter (a subprocess) ---------------------------------------------


@needs_triton
@pytest.mark.skipif(INTERPRETED, reason="already interpreted")
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines run the compiled kernel (bench.decode_attention)")
def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__, workers=2)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("groups", [1, 4, 16])
@pytest.mark.parametrize(("batch", "length"), [(1, 1024), (3, 64)])
def test_interpreted_kernel_matches_float64(batch: int, length: int, groups: int, dim: int,
                                            dtype: torch.dtype) -> None:
    """Every mask kind, one slice (``DIRECT``) and several (the combine kernel)."""
    from llm.kernels.decode_attention import AttentionConfig, launch_decode_attention

    q, k, v = inputs(batch, groups, dim, length, dtype, seed=batch + groups + dim)
    scale = dim**-0.5
    cases: dict[str, torch.Tensor | None] = {"none": None, **masks(batch, length)}
    configs = [AttentionConfig()]  # L=1024: 4 slices of 4 blocks on the interpreter's 4 "SMs"
    if length <= 64:  # 16-key blocks in 4 slices; 1024 of them would only slow the interpreter
        configs.append(AttentionConfig(block_l=16, programs_per_sm=8))
    else:  # the combine in the split kernel's last slice
        configs.append(AttentionConfig(fused=True))
    for name, mask in cases.items():
        ref = exact_attention(q, k, v, mask, scale)
        for config in configs:
            out = launch_decode_attention(q, k, v, mask, scale, config)
            assert close(out, ref, dtype), (name, str(config), (out.double() - ref).abs().max().item())


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpreted_additive_mask_broadcast_batch_and_strided_cache(dtype: torch.dtype) -> None:
    """An additive float mask (finite biases, -inf, a row all finfo.min as transformers masks),
    a boolean mask of batch 1 for 3 rows, K/V views into a longer cache, G = 3 (not a power of two)."""
    from llm.kernels.decode_attention import AttentionConfig, launch_decode_attention

    q, k_long, v_long = inputs(3, 3, 64, 100, dtype, seed=7)
    k, v = k_long[:, :, :80], v_long[:, :, :80]
    g = torch.Generator().manual_seed(8)
    biases = torch.randn(3, 1, 1, 80, generator=g)
    biases[..., 50:] = -torch.inf
    shared = torch.zeros(1, 1, 1, 90, dtype=torch.bool)
    shared[..., 10:60] = True
    additive = []
    for mask_dtype in (dtype, torch.float32):
        mask = biases.to(mask_dtype)
        mask[1, ..., :50] = torch.finfo(mask_dtype).min  # row 1 masked the transformers way: finite
        additive.append(mask)
    for mask in (*additive, shared):
        for config in (AttentionConfig(), AttentionConfig(block_l=16, programs_per_sm=8, skip=False),
                       AttentionConfig(block_l=16, programs_per_sm=8, fused=True)):
            out = launch_decode_attention(q, k, v, mask, 0.3, config)
            assert close(out, exact_attention(q, k, v, mask, 0.3), dtype), (mask.dtype, str(config))


@interpreted
def test_interpreted_masked_slots_are_never_read() -> None:
    """Masked K/V slots (NaN here, as garbage in an unwritten static cache could be) do not reach
    the output: blocks with nothing to attend are skipped (or, ``skip=False``, their loads
    predicated off), masked keys in a block load as 0."""
    from llm.kernels.decode_attention import AttentionConfig, launch_decode_attention, plan

    q, k, v = inputs(2, 16, 128, 600, torch.float32, seed=3)
    mask = torch.zeros(2, 1, 1, 600, dtype=torch.bool)
    mask[0, ..., 3:40] = True
    mask[1, ..., 100:101] = True
    mask[1, ..., 500:590] = True  # in the third chunk of 16 slices
    ref = exact_attention(q, k, v, mask, 0.1)
    k[~mask[:, :, 0, :].expand(-1, 2, -1)] = torch.nan
    v[~mask[:, :, 0, :].expand(-1, 2, -1)] = torch.nan
    many = AttentionConfig(block_l=16, programs_per_sm=40)  # 38 slices: the combine's 16-slice chunks, one partial
    assert plan(2, 2, 600, block_l=16, programs=40 * 4) == (38, 1)
    fused = AttentionConfig(block_l=16, programs_per_sm=40, fused=True)
    for config in (AttentionConfig(), many, AttentionConfig(skip=False), fused):
        out = launch_decode_attention(q, k, v, mask, 0.1, config)
        assert close(out, ref, torch.float32), str(config)


@interpreted
def test_interpreted_op_under_torch_compile_and_packed_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """``packed_gqa_attention`` takes the kernel (launches counted), also compiled with
    ``fullgraph=True`` (the op's fake impl: no graph break), and agrees with float64."""
    import llm.kernels.decode_attention as kernel_module
    from llm.fast_decode.attention import packed_gqa_attention

    launches = count_calls(monkeypatch, kernel_module, "launch_decode_attention")
    q, k, v = inputs(2, 16, 64, 128, torch.float32, seed=5)
    mask = masks(2, 128)["left_padded"]
    module = types.SimpleNamespace(num_key_value_groups=16, is_causal=True, training=False)
    ref = exact_attention(q, k, v, mask, 64**-0.5)
    with torch.inference_mode():
        out, weights = packed_gqa_attention(module, q, k, v, mask)
        assert weights is None and launches and close(out, ref, torch.float32)

        def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return packed_gqa_attention(module, q, k, v, mask)[0] * 2

        compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=False)
        count = len(launches)
        assert close(compiled(q, k, v, mask) / 2, ref, torch.float32) and len(launches) > count


@interpreted
def test_interpreted_decode_steps_run_the_kernel_and_keep_greedy_tokens(tiny_glm_dir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny GLM's decode steps (fast path on CPU: static cache, left-padded batch of two,
    the mask transformers hands the attention) go through the kernel and choose the tokens
    ``generate`` chooses."""
    import llm.kernels.decode_attention as kernel_module
    from llm import ChatGLM
    from llm.fast_decode import FastDecodeOptions
    from llm.streaming import run_generate

    launches = count_calls(monkeypatch, kernel_module, "launch_decode_attention")
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=12)
    kwargs = llm_._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 12})
    eager = run_generate(llm_.model, dict(kwargs))
    assert not launches  # generate's own attention is transformers' SDPA
    fast = run_generate(llm_.model, dict(kwargs), fast_decode=FastDecodeOptions(on_cpu=True))
    assert torch.equal(eager, fast)
    assert len(launches) == 11 * llm_.model.config.num_hidden_layers  # 12 tokens: 11 one-token steps


# ----- without the kernel (this process) -----------------------------------------------------


def test_without_kernel_flash_decode_is_the_former_packed_math() -> None:
    """On CPU without the interpreter ``flash_decode`` is the PyTorch math packed attention ran
    before the kernel (bit for bit), which agrees with float64."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernel here")
    q, k, v = inputs(3, 4, 64, 64, torch.float32)
    for mask in (None, *masks(3, 64).values()):
        assert not attention_applies(q, k, v, mask)
        out = flash_decode(q, k, v, mask, scale=0.125)
        assert torch.equal(out, reference_decode_attention(q, k, v, mask, 0.125))
        assert close(out, exact_attention(q, k, v, mask, 0.125), torch.float32)


def test_kernel_applies_only_to_what_it_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """One query token, GQA shapes, power-of-two D with unit stride, one dtype, a (B|1, 1, 1, >=L)
    mask, no gradient; anything else keeps the PyTorch math."""
    monkeypatch.setattr(op_module, "INTERPRET", True)
    monkeypatch.setattr(op_module, "TRITON_AVAILABLE", True)
    q, k, v = inputs(2, 4, 64, 32, torch.float32)
    mask = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    assert attention_applies(q, k, v, mask) and attention_applies(q, k, v, None)
    assert attention_applies(q, k, v, mask[:1]) and attention_applies(q, k, v, mask.float())
    assert not attention_applies(torch.randn(2, 8, 2, 64), k, v, mask)  # two query tokens (a prompt)
    assert not attention_applies(q[:, :7], k, v, mask)  # 7 heads over 2 K/V heads
    assert not attention_applies(q[..., :48], k[..., :48], v[..., :48], mask)  # D not a power of two
    assert not attention_applies(q, k.transpose(-1, -2).contiguous().transpose(-1, -2), v, mask)  # D strided
    assert not attention_applies(q, k, v, mask[..., :31])  # mask shorter than the cache
    assert not attention_applies(q, k, v, torch.ones(2, 1, 2, 32, dtype=torch.bool))  # per-query mask
    assert not attention_applies(q, k, v, mask.int())
    assert not attention_applies(q.double(), k, v, mask)
    with torch.enable_grad():
        assert not attention_applies(q.clone().requires_grad_(), k, v, mask)
    monkeypatch.setattr(op_module, "_broken", ["RuntimeError: gone"])
    assert not attention_applies(q, k, v, mask)


@needs_triton
def test_failing_kernel_falls_back_to_pytorch_once_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A kernel that fails to compile or launch (old Triton, odd GPU) is given up for the process:
    the op returns the PyTorch result and ``flash_decode`` stops calling it."""
    import llm.kernels.decode_attention as kernel_module

    calls: list[int] = []

    def broken(*args: Any) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("PTX too new for this driver")

    monkeypatch.setattr(kernel_module, "launch_decode_attention", broken)
    monkeypatch.setattr(op_module, "_broken", [])
    q, k, v = inputs(1, 4, 64, 32, torch.float32)
    mask = masks(1, 32)["first_few"]
    ref = reference_decode_attention(q, k, v, mask, 0.125)
    with caplog.at_level("WARNING", logger="llm.kernels.give_up"):
        out = torch.ops.glmkb.decode_attention(q, k, v, mask, 0.125)
        again = torch.ops.glmkb.decode_attention(q, k, v, mask, 0.125)
    assert torch.equal(out, ref) and torch.equal(again, ref) and calls == [1]
    assert op_module._broken and "PTX too new" in caplog.text
    assert sum("decode attention failed" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(op_module, "INTERPRET", True)
    assert not attention_applies(q, k, v, mask)


def test_plan_fills_the_gpu_with_whole_blocks() -> None:
    """Slices are whole blocks, cover the cache once, and aim at ``programs`` in all; a pure
    function of the shapes (the captured graph's launch never changes)."""
    pytest.importorskip("triton")
    from llm.kernels.decode_attention import plan

    for batch, kv, length, programs in ((1, 2, 1024, 264), (16, 2, 4096, 264), (1, 2, 32768, 264), (64, 2, 64, 8)):
        splits, per_split = plan(batch, kv, length, block_l=64, programs=programs)
        blocks = -(-length // 64)
        assert (splits - 1) * per_split < blocks <= splits * per_split
        assert batch * kv * splits <= max(programs, batch * kv) or splits == blocks
    assert plan(1, 2, 4096, block_l=64, programs=264) == (64, 1)
    assert plan(16, 2, 4096, block_l=64, programs=264) == (8, 8)
    assert plan(64, 2, 64, block_l=64, programs=8) == (1, 1)


def test_default_config_follows_the_h200_sweep() -> None:
    """Small blocks where one row leaves most SMs to the slices, large ones at batch 16 (run 15)."""
    pytest.importorskip("triton")
    from llm.kernels.decode_attention import default_config

    assert default_config(1, 2).block_l == 32 and default_config(2, 2).block_l == 32
    assert default_config(16, 2).block_l == 128 and default_config(4, 2).block_l == 128
    assert not default_config(1, 2).fused and not default_config(16, 2).fused


# ----- on a GPU (bench/run_all.sh gputest) ----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compiled_kernel_matches_float64_on_cuda(dtype: torch.dtype) -> None:
    """The ChatGLM3-6B shape (KV=2, G=16, D=128) and small G, every mask kind, several configs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from llm.kernels.decode_attention import AttentionConfig, launch_decode_attention

    configs = [AttentionConfig(), AttentionConfig(block_l=32, programs_per_sm=4, skip=False),
               AttentionConfig(block_l=128, num_warps=8, num_stages=3), AttentionConfig(fused=True),
               AttentionConfig(block_l=32, programs_per_sm=4, fused=True)]
    for batch, groups, length in ((1, 16, 4096), (5, 16, 1024), (3, 4, 2048), (2, 1, 512)):
        q, k, v = (t.cuda() for t in inputs(batch, groups, 128, length, dtype, seed=batch))
        cases = {"none": None, **{n: m.cuda() for n, m in masks(batch, length).items()}}
        cases["additive"] = torch.where(cases["left_padded"], 0.0, torch.finfo(dtype).min).to(dtype)
        for name, mask in cases.items():
            ref = exact_attention(q, k, v, mask, 128**-0.5)
            assert close(flash_decode(q, k, v, mask, scale=128**-0.5), ref, dtype), name
            for config in configs:
                out = launch_decode_attention(q, k, v, mask, 128**-0.5, config)
                assert close(out, ref, dtype), (batch, groups, length, name, str(config))


@pytest.mark.gpu
def test_op_runs_compiled_inside_a_cuda_graph() -> None:
    """The decode step's setting: torch.compile'd (the op an extern call), warmed on a side
    stream, captured, replayed on new inputs."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from llm.fast_decode import capture_graph, warm_up_on_side_stream

    q, k, v = (t.cuda() for t in inputs(2, 16, 128, 1024, torch.bfloat16))
    mask = masks(2, 1024)["left_padded"].cuda()

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return flash_decode(q * 1.0, k, v, mask, scale=128**-0.5).reshape(2, 1, -1) * 2

    compiled = torch.compile(step, dynamic=False, fullgraph=True)
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        warm_up_on_side_stream(lambda: compiled(q, k, v, mask), times=2)
        graph = capture_graph(lambda: out.append(compiled(q, k, v, mask)))
        q.copy_(torch.randn_like(q))
        mask[1, ..., 600:700] = True
        graph.replay()
        torch.cuda.synchronize()
    assert close(out[-1].view(2, 1, 32, 128) / 2, exact_attention(q, k, v, mask, 128**-0.5), torch.bfloat16)
    assert not op_module._broken


@pytest.mark.gpu
def test_fused_combine_replays_in_a_cuda_graph() -> None:
    """``fused=True``: the ticket counters allocated at warm-up, reset by each launch's last
    slice, so replay after replay (with new inputs) stays right."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from llm.fast_decode import capture_graph, warm_up_on_side_stream
    from llm.kernels.decode_attention import AttentionConfig, launch_decode_attention, tickets

    q, k, v = (t.cuda() for t in inputs(3, 16, 128, 4096, torch.bfloat16))
    mask = masks(3, 4096)["left_padded"].cuda()
    config = AttentionConfig(block_l=32, programs_per_sm=4, fused=True)
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        warm_up_on_side_stream(lambda: launch_decode_attention(q, k, v, mask, 0.1, config), times=2)
        graph = capture_graph(lambda: out.append(launch_decode_attention(q, k, v, mask, 0.1, config)))
        for step in range(3):
            q.copy_(torch.randn_like(q))
            mask[..., 2100 + step] = True
            graph.replay()
            torch.cuda.synchronize()
            assert close(out[-1], exact_attention(q, k, v, mask, 0.1), torch.bfloat16), step
    assert int(tickets(q.device, 6).abs().sum()) == 0


@pytest.mark.gpu
def test_tiny_glm_decode_graph_runs_the_kernel_on_cuda(tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 tiny GLM on CUDA: the captured decode graph takes the kernel (compiled in, launched
    at warm-up) and the fast path stays on."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import llm.kernels.decode_attention as kernel_module
    from llm import ChatGLM

    launches = count_calls(monkeypatch, kernel_module, "launch_decode_attention")
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="bfloat16", temperature=0.0,
                                   max_new_tokens=12)
    assert llm_.invoke("曹操是谁？")
    assert llm_.fast_decode_report["decode_graph"] is None, llm_.fast_decode_report
    assert launches and not op_module._broken
