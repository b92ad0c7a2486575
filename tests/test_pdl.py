"""Programmatic dependent launch (``llm.kernels.pdl``): when it is asked for, and that every PDL
kernel waits before it touches memory and signals only after the wait (the safety argument of
``llm.kernels.pdl``), checked in the PTX Triton emits for sm_90 (compiled here, no GPU)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from llm.kernels.pdl import launch_pdl, pdl_launches


def test_pdl_is_never_asked_for_on_cpu_or_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import llm.kernels.pdl as pdl

    assert not launch_pdl(torch.device("cpu"))
    monkeypatch.setattr(pdl, "_pdl_supported", lambda index: True)  # as on an H200
    cuda = torch.device("cuda", 0)
    assert launch_pdl(cuda)
    with pdl_launches(False):
        assert not launch_pdl(cuda)
        with pdl_launches(True):
            assert launch_pdl(cuda)
        assert not launch_pdl(cuda)
    assert launch_pdl(cuda)


def test_inductor_pdl_is_an_option_of_the_compile_only_where_launches_use_pdl(
    monkeypatch: pytest.MonkeyPatch, tiny_glm_dir: Any
) -> None:
    import llm.fast_decode.decode_graph as dg
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.bfloat16).eval()
    assert dg.compile_options(model, pdl=True) is None  # CPU: never
    monkeypatch.setattr(dg, "launch_pdl", lambda device: True)
    monkeypatch.setattr(dg, "_inductor_has_pdl", lambda: True)
    assert dg.compile_options(model, pdl=True) == {"triton.enable_pdl": True}
    assert dg.compile_options(model, pdl=False) is None
    monkeypatch.setattr(dg, "_inductor_has_pdl", lambda: False)  # a torch without the option
    assert dg.compile_options(model, pdl=True) is None


def _signature(fn: Any, pointers: dict[str, str]) -> dict[str, str]:
    return {p.name: "constexpr" if p.is_constexpr else pointers.get(p.name, "*bf16" if p.name.endswith("_ptr")
                                                                     else "i32") for p in fn.params}


def _kernels() -> list[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    from llm.kernels import decode_attention, gemv, int4_gemm, int4_gemv, rope_cache

    row = {"HAS_SCALE": True, "HAS_BIAS": False, "EVEN_K": True, "EVEN_N": True, "BLOCK_N": 4, "BLOCK_K": 1024}
    return [
        ("int8 row GEMV", gemv._int8_row_kernel, {"w_ptr": "*i8"}, {**row, "ASM": True, "stride_wn": 4096}),
        ("float row GEMV", gemv._gemv_row_kernel, {}, row),
        ("INT4 runs row GEMV", int4_gemv._int4_runs_row_kernel, {"w_ptr": "*i8", "sz_ptr": "*i32"},
         {"HAS_BIAS": False, "EVEN_K": True, "EVEN_N": True, "GROUP": 128, "ASM": True, "BLOCK_N": 4,
          "BLOCK_K": 2048, "stride_wn": 2048, "stride_szn": 32}),
        ("INT4 runs 2-4 row GEMV", int4_gemv._int4_runs_rows_kernel, {"w_ptr": "*i8", "sz_ptr": "*i32"},
         {"HAS_BIAS": True, "EVEN_K": True, "EVEN_N": True, "GROUP": 128, "ASM": True, "BLOCK_M": 4, "BLOCK_N": 4,
          "BLOCK_K": 2048, "stride_wn": 2048, "stride_szn": 32}),
        ("INT4 runs GEMM", int4_gemm._int4_runs_gemm_kernel, {"w_ptr": "*u8", "sz_ptr": "*i32"},
         {"HAS_BIAS": True, "GROUP": 128, "ASM": True, "DOT_F32": False, "BLOCK_M": 16, "BLOCK_N": 64,
          "BLOCK_K": 128}),
        ("GEMV tiles", gemv._gemv_kernel, {"w_ptr": "*i8", "out_ptr": "*fp32"},
         {"HAS_SCALE": True, "HAS_BIAS": False, "PARTIAL": True, "EVEN_K": True, "EVEN_N": True, "USE_DOT": True,
          "INT8": True, "WEIGHT_FIRST": False, "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128}),
        ("split-K sum", gemv._split_reduce_kernel, {"part_ptr": "*fp32"},
         {"SPLIT": 2, "HAS_SCALE": True, "HAS_BIAS": False, "BLOCK": 1024}),
        ("attention split", decode_attention._flash_decode_split,
         {"mask_ptr": "*u8", "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32", "ticket_ptr": "*i32",
          "scale": "fp32"},
         {"MASK": 1, "DIRECT": False, "DOT_F32": False, "SKIP": False, "FUSED": True, "BLOCK_G": 16, "BLOCK_L": 64,
          "D": 128, "BLOCK_S": 16, "CHUNK": 4}),
        ("attention combine", decode_attention._flash_decode_combine,
         {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32"}, {"BLOCK_S": 16, "CHUNK": 16, "D": 128}),
        ("rotary + cache write", rope_cache._rope_cache_kernel,
         {"cos_ptr": "*fp32", "sin_ptr": "*fp32", "slot_ptr": "*i64", "length_ptr": "*i64"},
         {"HEADS": 32, "KV_HEADS": 2, "HALF": 64, "ROT_PAIRS": 32, "BLOCK": 64}),
    ]


KERNEL_IDS = ["int8-row-gemv", "float-row-gemv", "int4-runs-row-gemv", "int4-runs-rows-gemv", "int4-runs-gemm",
              "gemv-tiles",
              "split-k-sum", "attention-split", "attention-combine", "rope-cache"]


@pytest.mark.parametrize("index", range(len(KERNEL_IDS)), ids=KERNEL_IDS)
def test_every_pdl_kernel_waits_before_it_touches_memory_and_signals_after(index: int) -> None:
    """Guards the ordering that makes PDL safe: no global load or store before
    ``griddepcontrol.wait``, ``launch_dependents`` after it; and none of either without PDL."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, fn, pointers, constexprs = _kernels()[index]
    signature = _signature(fn, pointers)
    for pdl in (True, False):
        source = ASTSource(fn=fn, signature=signature, constexprs={**constexprs, "PDL": pdl})
        try:
            ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
        except Exception as e:  # noqa: BLE001 - e.g. a Triton without its bundled ptxas
            pytest.skip(f"cannot compile for sm_90 here: {e}")
        body = ptx[ptx.index(".entry"):]
        wait = body.find("griddepcontrol.wait")
        signal = body.find("griddepcontrol.launch_dependents")
        memory = [m.start() for m in re.finditer(r"\b(ld|st|atom|red)\.global", body)]
        if not pdl:
            assert wait == signal == -1, name
            continue
        assert 0 <= wait < signal, f"{name}: launch_dependents must follow the wait"
        assert memory and min(memory) > wait, f"{name}: memory touched before griddepcontrol.wait"


@pytest.mark.parametrize("pdl", [True, False])
def test_fast_generate_launches_with_the_pdl_option_it_is_given(pdl: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FastDecodeOptions.pdl`` reaches every launch of the call (graph build, capture, prompt
    pass) on the worker thread, and is undone afterwards."""
    import llm.fast_decode as fd
    import llm.kernels.pdl as pdl_module

    monkeypatch.setattr(pdl_module, "_pdl_supported", lambda index: True)
    seen: list[bool] = []

    def fake_graph_generate(model: Any, kwargs: dict[str, Any], **_: Any) -> str:
        seen.append(launch_pdl(torch.device("cuda", 0)))
        return "generated"

    monkeypatch.setattr(fd, "graph_generate", fake_graph_generate)
    monkeypatch.setattr(fd, "call_supports_fast_decode", lambda kwargs: True)
    monkeypatch.setattr(fd, "graph_call_supported", lambda kwargs, types: True)
    model = torch.nn.Linear(2, 2)
    assert fd.fast_generate(model, {}, cancel_types=(), options=fd.FastDecodeOptions(pdl=pdl)) == "generated"
    assert seen == [pdl] and launch_pdl(torch.device("cuda", 0))
