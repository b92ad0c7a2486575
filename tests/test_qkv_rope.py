"""The q/k/v GEMV with the rotary and K/V cache writes in its epilogue (``llm.kernels.qkv_rope_op``)
against the two kernels it replaces (``gemv_linear`` then ``rope_cache_write``).

The reference is differential and exact: the fused kernel rounds each output to the activation
dtype before the rotary, as the GEMV's store does for the rope kernel, so q, both caches and the
cache count must be equal bit for bit, and the decode steps must choose the same tokens with the
option on and off. Kernel checks (``test_interpreted_*``) run in a pytest subprocess with
``TRITON_INTERPRET=1``, as in test_rope_cache.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from llm.fast_decode import FastDecodeOptions
from llm.kernels.gemv_configs import GemvConfig
from llm.kernels.qkv_rope_op import qkv_rope_applies, qkv_rope_cache_write
from llm.kernels.rope_cache_op import reference_rope_cache_write
from llm.streaming import run_generate
from tests.helpers import assert_interpreted_tests_pass, count_calls, interpreted_marker

interpreted = interpreted_marker()
ON_CPU = FastDecodeOptions(on_cpu=True)
UNFUSED = ON_CPU.model_copy(update={"rope_in_gemv": False})


def case(heads: int, kv_heads: int, dim: int, rotary_dim: int, hidden: int, length: int, dtype: torch.dtype, *,
         int8: bool, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """One decode token's inputs: x ``(1, K)``, the fused q/k/v weight (int8 with per-row scales,
    or ``dtype``), its bias, cos/sin ``(1, 1, R)`` and random caches ``(1, KV, L, D)``."""
    g = torch.Generator().manual_seed(seed)
    n = (heads + 2 * kv_heads) * dim
    angles = torch.rand(1, 1, rotary_dim // 2, generator=g) * 100
    emb = torch.cat([angles, angles], dim=-1)
    if int8:
        weight = torch.randint(-127, 128, (n, hidden), generator=g, dtype=torch.int8)
        scales = (torch.rand(n, generator=g) / 50).to(dtype)
    else:
        weight, scales = (torch.randn(n, hidden, generator=g) / hidden**0.5).to(dtype), None
    c = {
        "x": torch.randn(1, hidden, generator=g).to(dtype), "weight": weight, "scales": scales,
        "bias": torch.randn(n, generator=g).to(dtype), "cos": emb.cos().to(dtype), "sin": emb.sin().to(dtype),
        "k_cache": torch.randn(1, kv_heads, length, dim, generator=g).to(dtype),
        "v_cache": torch.randn(1, kv_heads, length, dim, generator=g).to(dtype), "heads": heads,
    }
    return {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in c.items()}


def two_kernels(c: dict[str, Any], slot: int, config: GemvConfig | None = None) -> tuple[torch.Tensor, ...]:
    """(q, K cache, V cache, count) from the GEMV (``config``'s tile, else the op's choice) then
    the rope kernel, on copies of the caches."""
    from llm.kernels.gemv import launch_gemv
    from llm.kernels.rope_cache import launch_rope_cache_write

    device = c["x"].device
    k, v, count = c["k_cache"].clone(), c["v_cache"].clone(), torch.tensor(-1, device=device)
    qkv = (launch_gemv(c["x"], c["weight"], c["scales"], c["bias"], config) if config is not None else
           torch.ops.glmkb.gemv(c["x"], c["weight"], c["scales"], c["bias"]))
    q = launch_rope_cache_write(qkv, c["cos"], c["sin"], torch.tensor([slot], device=device), k, v, count, c["heads"])
    return q, k, v, count


def fused(c: dict[str, Any], slot: int, config: GemvConfig | None = None) -> tuple[torch.Tensor, ...]:
    """The same through ``launch_qkv_rope`` (``config``) or the public function (the op's choice)."""
    from llm.kernels.gemv import launch_qkv_rope

    device = c["x"].device
    k, v, count = c["k_cache"].clone(), c["v_cache"].clone(), torch.tensor(-1, device=device)
    index = torch.tensor([slot], device=device)
    if config is None:
        q = qkv_rope_cache_write(c["x"], c["weight"], scales=c["scales"], bias=c["bias"], cos=c["cos"], sin=c["sin"],
                                 slot=index, k_cache=k, v_cache=v, length=count, heads=c["heads"])
    else:
        q = launch_qkv_rope(c["x"], c["weight"], c["scales"], c["bias"], config, cos=c["cos"].reshape(1, -1),
                            sin=c["sin"].reshape(1, -1), slot=index, k_cache=k, v_cache=v, length=count,
                            heads=c["heads"])
    return q, k, v, count


def assert_same_bits(ours: tuple[torch.Tensor, ...], theirs: tuple[torch.Tensor, ...], slot: int) -> None:
    assert ours[0].shape == theirs[0].shape and ours[0].is_contiguous()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b), (a.flatten()[:8], b.flatten()[:8])
    assert int(ours[3]) == slot + 1


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__)


@interpreted
@pytest.mark.parametrize(("heads", "kv_heads", "dim", "rotary_dim", "hidden", "dtype", "int8"),
                         [(4, 2, 16, 8, 96, torch.bfloat16, True), (2, 2, 24, 24, 64, torch.float32, False),
                          (6, 2, 12, 6, 40, torch.bfloat16, False), (6, 2, 12, 6, 40, torch.float32, True)])
def test_interpreted_fused_kernel_writes_the_bits_of_the_two_kernels(
    heads: int, kv_heads: int, dim: int, rotary_dim: int, hidden: int, dtype: torch.dtype, int8: bool
) -> None:
    """ChatGLM's layout scaled down (2 K/V heads, half of each head rotated), a full-width rotary,
    head sizes that are not powers of two (tiles of 4 straddle heads); int8 and float weights;
    tiles of 2 and 4 outputs, K in whole steps and with a masked tail; the slot first and last in
    the cache. Slots other than the written one stay as they were."""
    length = 9
    configs = [GemvConfig(2, 32, num_warps=2, num_stages=1), GemvConfig(4, 64, num_stages=1)]
    for seed, slot in enumerate((0, length - 1)):
        c = case(heads, kv_heads, dim, rotary_dim, hidden, length, dtype, int8=int8, seed=seed)
        for config in configs:
            ours, theirs = fused(c, slot, config), two_kernels(c, slot, config)
            assert_same_bits(ours, theirs, slot)
            others = [s for s in range(length) if s != slot]
            assert torch.equal(ours[1][:, :, others], c["k_cache"][:, :, others])
            assert torch.equal(ours[2][:, :, others], c["v_cache"][:, :, others])
        assert_same_bits(fused(c, slot), two_kernels(c, slot), slot)  # the op's own tile choice


@interpreted
def test_interpreted_a_tile_the_epilogue_cannot_take_runs_the_two_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A split-K or odd-width tile for the shape (a GPU's own table may pick one) is the GEMV op then
    the rope op: the same result, the fused launcher never called."""
    import llm.kernels.gemv as gemv_module
    import llm.kernels.qkv_rope_op as op_module

    c = case(4, 2, 16, 8, 96, 6, torch.float32, int8=True)
    for config in (GemvConfig(4, 32, split_k=2), GemvConfig(1, 64)):
        monkeypatch.setattr(op_module, "choose_config", lambda *a, config=config: config)
        launches = count_calls(monkeypatch, gemv_module, "launch_qkv_rope")
        assert_same_bits(fused(c, 3), two_kernels(c, 3), 3)  # the fallback: the GEMV op, then the rope op
        assert not launches


@interpreted
def test_interpreted_decode_steps_take_the_fused_kernel_and_choose_the_same_tokens(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny GLM decodes one prompt with one fused launch per layer per step and no rope kernel,
    and chooses the tokens ``generate`` and the option's off switch choose. (INT8 weights take the
    same epilogue: the kernel test above; a whole INT8 model under the interpreter takes minutes.)"""
    from transformers import AutoModelForCausalLM

    import llm.kernels.gemv as gemv_module
    import llm.kernels.rope_cache as rope_module

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 9, 3, 8]])
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": 4, "min_new_tokens": 4,
              "do_sample": False}
    with torch.inference_mode():
        eager = run_generate(model, dict(kwargs))
        fused_launches = count_calls(monkeypatch, gemv_module, "launch_qkv_rope")
        rope_launches = count_calls(monkeypatch, rope_module, "launch_rope_cache_write")
        fast = run_generate(model, dict(kwargs), fast_decode=ON_CPU)
        layers = model.config.num_hidden_layers
        assert len(fused_launches) == 3 * layers and not rope_launches  # 4 tokens: 3 one-token steps
        unfused = run_generate(model, dict(kwargs), fast_decode=UNFUSED)
        assert len(fused_launches) == 3 * layers and len(rope_launches) == 3 * layers
    assert torch.equal(eager, fast) and torch.equal(fast, unfused)


# ----- without the kernel (this process) -----------------------------------------------------


def test_without_triton_the_function_is_the_gemv_then_the_models_rotary() -> None:
    """Where the kernels do not run (CPU, no interpreter), ``qkv_rope_cache_write`` is
    ``F.linear`` (scaled for int8) then transformers' rotary and cache update."""
    from llm.kernels import reference_gemv

    c = case(4, 2, 16, 8, 32, 5, torch.float32, int8=True)
    assert not qkv_rope_applies(c["x"], c["weight"], c["cos"], c["k_cache"])
    ours = fused(c, 2)
    k, v, count = c["k_cache"].clone(), c["v_cache"].clone(), torch.tensor(-1)
    qkv = reference_gemv(c["x"], c["weight"], scales=c["scales"], bias=c["bias"])
    q = reference_rope_cache_write(qkv, c["cos"], c["sin"], torch.tensor([2]), k, v, count, c["heads"])
    assert_same_bits(ours, (q, k, v, count), 2)


def test_the_option_is_part_of_the_decode_graphs_key(tiny_glm_dir: Path) -> None:
    """Regression guard for a stale graph: a decode graph built with ``rope_in_gemv`` off must not
    serve a call with it on (the option is in the graph cache's key)."""
    from transformers import AutoModelForCausalLM

    from llm.fast_decode import fast_decode_state

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42]])
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": 3, "do_sample": False}
    with torch.inference_mode():
        run_generate(model, dict(kwargs), fast_decode=ON_CPU)
        run_generate(model, dict(kwargs), fast_decode=UNFUSED)
    assert len(fast_decode_state(model).graphs) == 2


# ----- CUDA --------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("int8", [True, False])
def test_cuda_fused_kernel_writes_the_bits_of_the_two_kernels_in_a_cuda_graph(int8: bool) -> None:
    """ChatGLM3-6B's q/k/v layer (32 heads, 2 K/V heads, 128 dims, half rotated; K 4096) in bf16
    with the op's own tile: equal bits eagerly, and replayed from a CUDA graph at a moved slot."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from llm.fast_decode import capture_graph, warm_up_on_side_stream

    c = case(32, 2, 128, 64, 4096, 256, torch.bfloat16, int8=int8, device="cuda")
    assert qkv_rope_applies(c["x"], c["weight"], c["cos"], c["k_cache"])
    assert_same_bits(fused(c, 17), two_kernels(c, 17), 17)
    slot = torch.tensor([0], device="cuda")
    k, v, count = c["k_cache"].clone(), c["v_cache"].clone(), torch.tensor(-1, device="cuda")
    out: list[torch.Tensor] = []

    def step() -> None:
        out.append(qkv_rope_cache_write(c["x"], c["weight"], scales=c["scales"], bias=c["bias"], cos=c["cos"],
                                        sin=c["sin"], slot=slot, k_cache=k, v_cache=v, length=count,
                                        heads=c["heads"]))

    with torch.inference_mode():
        warm_up_on_side_stream(step, times=2)
        graph = capture_graph(step)
        slot.fill_(200)
        graph.replay()
        torch.cuda.synchronize()
    theirs = two_kernels(c, 200)
    assert torch.equal(out[-1], theirs[0]) and int(count) == 201
    assert torch.equal(k[:, :, 200], theirs[1][:, :, 200]) and torch.equal(v[:, :, 200], theirs[2][:, :, 200])
