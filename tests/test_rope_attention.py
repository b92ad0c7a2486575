"""The decode step's rotary, K/V cache write and attention in one launch
(``llm.kernels.rope_attention_op.rope_decode_attention``) against the two ops it replaces
(``rope_cache_write`` then ``flash_decode``) and against their references (transformers' rotary and
cache update, PyTorch's attention math).

Kernel checks (``test_interpreted_*``) run in a pytest subprocess with ``TRITON_INTERPRET=1``, as in
test_rope_cache.py and test_decode_attention.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.kernels.decode_attention_op import reference_decode_attention
from llm.kernels.rope_attention_op import rope_attention_applies, rope_decode_attention, two_ops
from llm.kernels.rope_cache_op import reference_rope_cache_write
from llm.streaming import run_generate
from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, interpreted_marker, replay_slot_steps

interpreted = interpreted_marker()
ONE_KERNEL = FastDecodeOptions(on_cpu=True, rope_in_attention=True)


def case(batch: int, heads: int, kv_heads: int, dim: int, rotary_dim: int, length: int, slot: int,
         dtype: torch.dtype, *, table: bool, seed: int = 0) -> dict[str, Any]:
    """One decode token per row: the fused q/k/v rows, the rotary (per row, or tables over every
    position read at each row's position), caches, and a boolean mask as the decode step makes it:
    row b's first b slots are left padding (fewer at slot < b), then every slot up to ``slot`` (the new token's)."""
    g = torch.Generator().manual_seed(seed)
    if table:
        angles = torch.rand(length, rotary_dim // 2, generator=g) * 100
        positions = torch.tensor([[slot - b] for b in range(batch)])  # padded rows are further back
    else:
        angles = torch.rand(batch, 1, rotary_dim // 2, generator=g) * 100
        positions = None
    emb = torch.cat([angles, angles], dim=-1)
    mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool)
    for b in range(batch):
        mask[b, ..., min(b, slot): slot + 1] = True  # the new token is attended in every row
    return {
        "qkv": torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=g).to(dtype),
        "cos": emb.cos().to(dtype),
        "sin": emb.sin().to(dtype),
        "slot": torch.tensor([slot]),
        "key": torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype),
        "value": torch.randn(batch, kv_heads, length, dim, generator=g).to(dtype),
        "mask": mask,
        "scale": dim**-0.5,
        "heads": heads,
        "positions": positions,
    }


def run(fn: Any, c: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(output, K cache, V cache, the cache's length) of ``fn`` on its own copies of the caches."""
    key, value, length = c["key"].clone(), c["value"].clone(), torch.tensor(-1)
    out = fn(c["qkv"], c["cos"], c["sin"], c["slot"], key, value, length, c["mask"], c["scale"], c["heads"],
             c["positions"])
    return out, key, value, int(length)


def one_kernel(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor, length: torch.Tensor, mask: torch.Tensor | None, scale: float, heads: int,
               positions: torch.Tensor | None) -> torch.Tensor:
    return rope_decode_attention(qkv, cos, sin, slot, key, value, length, mask, scale=scale, heads=heads,
                                 positions=positions)


def references(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, key: torch.Tensor,
               value: torch.Tensor, length: torch.Tensor, mask: torch.Tensor | None, scale: float, heads: int,
               positions: torch.Tensor | None) -> torch.Tensor:
    query = reference_rope_cache_write(qkv, cos, sin, slot, key, value, length, heads, positions)
    return reference_decode_attention(query, key, value, mask, scale)


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__, workers=2)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize(("batch", "heads", "kv_heads", "dim", "rotary_dim", "length"),
                         [(1, 32, 2, 128, 64, 64), (2, 4, 2, 16, 8, 256), (2, 8, 4, 32, 32, 96)])
def test_interpreted_one_kernel_equals_the_two_kernels_it_replaces(
    batch: int, heads: int, kv_heads: int, dim: int, rotary_dim: int, length: int, table: bool, dtype: torch.dtype
) -> None:
    """ChatGLM3-6B's layout (32 q heads on 2 K/V heads, half of 128 dims rotated), a batch with left
    padding, full-width rotary; the new token's slot first, inside a later slice and last. The caches
    and length are the rotary kernel's bit for bit (the same float32 math, rounded once) and the output
    is the attention kernel's; both agree with the references (bf16: to its rounding). Each cache has
    several slices here (4 programs a CPU "SM"), so the slot's owner is not always the first."""
    for seed, slot in enumerate((0, length // 2 + 5, length - 1)):
        c = case(batch, heads, kv_heads, dim, rotary_dim, length, slot, dtype, table=table, seed=seed)
        assert rope_attention_applies(c["qkv"], c["cos"], c["key"], c["value"], c["mask"], heads=heads)
        ours, kernels, theirs = run(one_kernel, c), run(two_ops, c), run(references, c)
        assert ours[0].shape == (batch, 1, heads, dim) and ours[3] == kernels[3] == theirs[3] == slot + 1
        assert torch.equal(ours[1], kernels[1]) and torch.equal(ours[2], kernels[2])
        assert torch.equal(ours[0], kernels[0])
        for a, b in zip(ours[:3], theirs[:3], strict=True):
            tolerance = 1e-5 if dtype == torch.float32 else 2 ** -6 * b.abs().max().item()
            assert (a.float() - b.float()).abs().max().item() <= tolerance


@interpreted
def test_interpreted_decode_steps_take_the_one_kernel_and_choose_generates_tokens(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``rope_in_attention`` the tiny GLM's decode steps (a left-padded batch of two) launch the
    one kernel once per layer per step, the rotary kernel only for the prompt, and choose the tokens
    ``generate`` chooses."""
    import llm.kernels.rope_attention as one_module
    import llm.kernels.rope_cache as rope_module

    ones = count_calls(monkeypatch, one_module, "launch_rope_decode_attention")
    ropes = count_calls(monkeypatch, rope_module, "launch_rope_cache_write")
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=12)
    kwargs = llm_._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 12})
    eager = run_generate(llm_.model, dict(kwargs))
    fast = run_generate(llm_.model, dict(kwargs), fast_decode=ONE_KERNEL)
    assert torch.equal(eager, fast)
    layers = llm_.model.config.num_hidden_layers
    assert len(ones) == 11 * layers and not ropes  # 12 tokens: 11 one-token steps; the prompt ran eagerly


# ----- without the kernel (this process) -----------------------------------------------------


def test_without_kernel_the_op_is_the_two_ops_and_the_references() -> None:
    """On CPU without the interpreter ``rope_decode_attention`` is the two ops' fallbacks, which are
    the references, bit for bit."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernel here")
    for table in (False, True):
        c = case(2, 4, 2, 16, 8, 32, 9, torch.float32, table=table)
        assert not rope_attention_applies(c["qkv"], c["cos"], c["key"], c["value"], c["mask"], heads=4)
        ours, theirs = run(one_kernel, c), run(references, c)
        assert ours[3] == theirs[3] == 10
        assert all(torch.equal(a, b) for a, b in zip(ours[:3], theirs[:3], strict=True))


def test_the_option_is_off_by_default_and_decode_still_equals_generate(fresh_llm: ChatGLM) -> None:
    """Off by default (not yet timed on a GPU); on, without Triton's interpreter the decode steps
    take the fallback and still decode ``generate``'s tokens."""
    assert FastDecodeOptions().rope_in_attention is False
    kwargs = fresh_llm._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 6, "max_new_tokens": 6})
    eager = run_generate(fresh_llm.model, dict(kwargs))
    assert torch.equal(eager, run_generate(fresh_llm.model, dict(kwargs), fast_decode=ONE_KERNEL))


@pytest.mark.gpu
def test_cuda_kernel_equals_the_two_kernels_and_replays_in_a_cuda_graph() -> None:
    """bf16 on CUDA, ChatGLM3-6B's layout, a 1024-slot cache (many slices): the caches as the
    rotary kernel writes them, the output within rounding of the two kernels' (float32 contraction
    may differ), and captured in a CUDA graph the slot is read on the GPU at each replay."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    for table in (False, True):
        c = {name: t.cuda() if isinstance(t, torch.Tensor) else t
             for name, t in case(2, 32, 2, 128, 64, 1024, 700, torch.bfloat16, table=table).items()}
        ours, kernels = run(one_kernel, c), run(two_ops, c)
        assert ours[3] == kernels[3] == 701
        for a, b in zip(ours[:3], kernels[:3], strict=True):
            assert (a.float() - b.float()).abs().max().item() <= 2 ** -6 * b.abs().max().item()
    key, value, length = c["key"].clone(), c["value"].clone(), torch.zeros((), dtype=torch.long, device="cuda")
    positions = torch.zeros(2, 1, dtype=torch.long, device="cuda")
    slot = replay_slot_steps(lambda at: rope_decode_attention(c["qkv"], c["cos"], c["sin"], at, key, value, length,
                                                              c["mask"], scale=c["scale"], heads=32,
                                                              positions=positions), start=900)
    heads = c["qkv"].view(2, 36, 128)[:, 34:]  # v heads, copied as they are
    assert slot == 903 and int(length) == 903 and all(torch.equal(value[:, :, s], heads) for s in (900, 901, 902))
