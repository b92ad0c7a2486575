"""Attention of one decode token (ChatGLM3-6B shape): compiled PyTorch math vs the Triton kernel.

    python -m bench.decode_attention --out DIR     # on the GPU machine
    python -m bench.decode_attention --tiny        # check the script on CPU (Triton's interpreter)

Why: a profile of the captured decode step (``bench.step_profile``, H200) shows the packed GQA
attention as three kernels per layer (cuBLAS bmm 3.9 us + Inductor masked softmax 1.6 us + bmm
2.7 us = 8.2 us, x 28 layers = 230 us per token). ``llm.kernels.flash_decode`` does it in one
flash-decoding kernel plus a small combine.

Per case (batch B in {1, 16}, KV = 2, G = 16, D = 128, static cache length L in {1024, 4096},
the first ``valid`` slots of each row attended: ~200 and all of L), each variant is timed as one
CUDA graph of 100 back-to-back calls, median of 5 replays (launch overhead excluded, as in the
decode graph). The calls cycle through copies of K/V (>= 256 MiB in all) so that, as in the
decode step, the cache comes from HBM and not from L2. Variants:

- ``torch compiled``: the math ``packed_gqa_attention`` ran before (``reference_decode_attention``)
  under ``torch.compile`` (3 kernels);
- ``flash_decode``: the op as the decode step calls it (``default_config`` of the shape);
- ``flash_decode compiled``: the same inside a ``torch.compile(fullgraph=True)`` function (the op
  as an extern call, as in the compiled decode step);
- ``flash_decode fused``: that config with ``fused=True`` (one launch, the combine in
  the split kernel's last slice);
- unless ``--no-sweep``, every ``AttentionConfig`` of ``sweep_configs`` (64); the fastest per case is printed.

Every variant's output is checked against float64 math (max abs error; a swept config over
0.05 is not picked as the fastest). JSON through
``bench.common.write_result`` (``decode_attention.json``).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from bench.common import parser, print_table, write_result

KV_HEADS, GROUPS, DIM = 2, 16, 128
CASES = [(b, length, valid) for b in (1, 16) for length in (1024, 4096) for valid in (200, length)]
TINY_CASES = [(1, 128, 20), (3, 64, 64)]
MIN_BYTES = 256 * 2**20


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    """``"1:4096:330,16:4096:330"`` -> ``[(1, 4096, 330), (16, 4096, 330)]``."""
    cases = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part.strip()]
    if not cases or any(len(c) != 3 or not 0 < c[2] <= c[1] for c in cases):
        raise SystemExit(f"--cases: B:L:valid with 0 < valid <= L, not {text!r}")
    return cases  # type: ignore[return-value]


def sweep_configs() -> list[Any]:
    from llm.kernels.decode_attention import AttentionConfig

    grid = [AttentionConfig(block_l=block, programs_per_sm=p, num_warps=w, skip=skip)
            for block, p, w, skip in itertools.product((32, 64, 128), (1, 2, 4), (4, 8), (True, False))]
    deeper = [AttentionConfig(block_l=block, programs_per_sm=2, num_warps=w, num_stages=3, skip=False)
              for block, w in ((64, 4), (64, 8), (128, 4), (128, 8))]  # the branch-free loop can pipeline
    fused = [AttentionConfig(block_l=block, programs_per_sm=p, num_warps=w, skip=skip, fused=True)
             for block, p, w, skip in itertools.product((32, 64, 128), (1, 2, 4), (4, 8), (True, False))
             if w == 4 or block == 64]  # one launch: the combine in the last slice
    return grid + deeper + fused


def make_inputs(batch: int, length: int, valid: int, *, device: str, dtype: torch.dtype,
                copies: int) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """q ``(B, H, 1, D)`` (a transposed view, as the model makes it), ``copies`` K/V pairs, the mask."""
    q = torch.randn(batch, 1, KV_HEADS * GROUPS, DIM, device=device, dtype=dtype).transpose(1, 2)
    kv = [(torch.randn(batch, KV_HEADS, length, DIM, device=device, dtype=dtype),
           torch.randn(batch, KV_HEADS, length, DIM, device=device, dtype=dtype)) for _ in range(copies)]
    mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool, device=device)
    mask[..., :valid] = True
    return q, kv, mask


def exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """float64 attention with K/V repeated per query head, ``(B, 1, H, D)``."""
    groups = q.shape[1] // k.shape[1]
    kk, vv = k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1)
    scores = ((q.double() @ kk.transpose(-1, -2)) * scale).masked_fill(~mask, -torch.inf)
    return (scores.softmax(-1) @ vv).transpose(1, 2)


def variants(q: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor, scale: float,
             configs: list[Any]) -> dict[str, Callable[[], Callable[[int], Any]]]:
    """label -> builder of ``call(i)`` (builders run inside the variant's try)."""
    from llm.kernels import flash_decode, reference_decode_attention
    from llm.kernels.decode_attention import default_config, launch_decode_attention

    def torch_compiled() -> Callable[[int], Any]:
        fn = torch.compile(reference_decode_attention, dynamic=False)
        return lambda i: fn(q, *kv[i % len(kv)], mask, scale)

    def op() -> Callable[[int], Any]:
        return lambda i: flash_decode(q, *kv[i % len(kv)], mask, scale=scale)

    def op_compiled() -> Callable[[int], Any]:
        fn = torch.compile(lambda q, k, v, m: flash_decode(q, k, v, m, scale=scale), dynamic=False, fullgraph=True)
        return lambda i: fn(q, *kv[i % len(kv)], mask)

    def fused() -> Callable[[int], Any]:
        config = replace(default_config(q.shape[0], kv[0][0].shape[1]), fused=True)
        return lambda i: launch_decode_attention(q, *kv[i % len(kv)], mask, scale, config)

    out: dict[str, Callable[[], Callable[[int], Any]]] = {
        "torch compiled": torch_compiled, "flash_decode": op, "flash_decode compiled": op_compiled,
        "flash_decode fused": fused}
    for config in configs:
        out[f"triton {config}"] = lambda c=config: (lambda i: launch_decode_attention(q, *kv[i % len(kv)], mask,
                                                                                      scale, c))
    return out


def seconds_per_call(call: Callable[[int], Any], *, device: str) -> float:
    """``bench.gemv.time_calls`` on CUDA (a graph of 100 calls); on CPU one call, only to check
    the script (the interpreter takes ~1 s a call)."""
    if device == "cuda":
        from bench.gemv import time_calls

        return time_calls(call, device=device)
    import time

    start = time.perf_counter()
    call(0)
    return time.perf_counter() - start


def bench_case(batch: int, length: int, valid: int, *, device: str, dtype: torch.dtype,
               configs: list[Any]) -> dict[str, Any]:
    from bench.gemv import CALLS
    from llm.kernels import attention_applies, flash_decode

    torch._dynamo.reset()
    pair_bytes = 2 * batch * KV_HEADS * length * DIM * torch.finfo(dtype).bits // 8
    copies = max(1, min(CALLS, math.ceil(MIN_BYTES / pair_bytes))) if device == "cuda" else 1
    q, kv, mask = make_inputs(batch, length, valid, device=device, dtype=dtype, copies=copies)
    scale = DIM**-0.5
    read = 2 * batch * KV_HEADS * valid * DIM * torch.finfo(dtype).bits // 8  # K/V bytes the kernel must read
    result: dict[str, Any] = {"B": batch, "L": length, "valid": valid, "kv_copies": copies, "kv_bytes_attended": read,
                              "kernel_applies": attention_applies(q, *kv[0], mask), "variants": {}}
    with torch.inference_mode():
        ref = exact(q, *kv[0], mask, scale)
        result["max_abs_error"] = float((flash_decode(q, *kv[0], mask, scale=scale).double() - ref).abs().max())
        for label, build in variants(q, kv, mask, scale, configs).items():
            try:
                call = build()
                error = float((call(0).double() - ref).abs().max())  # also compiles and warms
                seconds = seconds_per_call(call, device=device)
                result["variants"][label] = {"us": seconds * 1e6, "gb_s": read / seconds / 1e9, "max_abs_error": error}
            except Exception as e:  # report and go on with the next variant
                result["variants"][label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            if not label.startswith("triton "):
                print(f"  B={batch} L={length} valid={valid} {label}: {result['variants'][label]}", flush=True)
    timed = {k: v["us"] for k, v in result["variants"].items()
             if k.startswith("triton ") and "us" in v and v["max_abs_error"] < 0.05}
    if timed:
        best = min(timed, key=timed.get)
        result["best_config"] = {"config": best.removeprefix("triton "), "us": timed[best]}
    del q, kv, mask
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--no-sweep", action="store_true", help="time only the default kernel config")
    p.add_argument("--cases", help="B:L:valid,... instead of the 8 default cases (e.g. 1:4096:330,16:4096:330)")
    args = p.parse_args()
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when Triton is first imported (below)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    from llm.kernels.decode_attention import AttentionConfig, default_config

    if args.tiny:
        configs = [AttentionConfig(block_l=16, programs_per_sm=8, skip=False)]
    else:
        configs = [] if args.no_sweep else sweep_configs()
    torch.manual_seed(0)
    results = [bench_case(b, length, valid, device=device, dtype=dtype, configs=configs)
               for b, length, valid in (TINY_CASES if args.tiny else parse_cases(args.cases) if args.cases else CASES)]
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    write_result(args.out, "decode_attention", {"device": device_name,
                                                "default_configs": {str(b): str(default_config(b, KV_HEADS))
                                                                    for b in (1, 16)},
                                                "shape": {"kv_heads": KV_HEADS, "groups": GROUPS, "dim": DIM},
                                                "results": results})
    rows = []
    for r in results:
        v = r["variants"]
        base = v["torch compiled"].get("us")
        for label in ("torch compiled", "flash_decode", "flash_decode compiled", "flash_decode fused"):
            us = v[label].get("us")
            rows.append((f"B={r['B']} L={r['L']} valid={r['valid']}", label,
                         us if us is not None else v[label]["error"][:60],
                         base / us if us and base else "", v[label].get("gb_s", "")))
        if "best_config" in r:
            best = r["best_config"]
            rows.append(("", f"best swept {best['config']}", best["us"], base / best["us"] if base else "", ""))
        rows.append(("", f"max abs error vs float64: {r['max_abs_error']:.2e}", "", "", ""))
    print_table(f"decode attention, one token, KV={KV_HEADS} G={GROUPS} D={DIM} ({device_name}, us per call)", rows,
                ("case", "variant", "us", "x torch", "GB/s of attended K/V"))


if __name__ == "__main__":
    main()
