"""Does an L2 prefetch of the next GEMV's weight, issued before an idle window, shorten that GEMV?

    python -m bench.l2_prefetch --out DIR     # GPU (sm_90): the table below, INT8 and bf16
    python -m bench.l2_prefetch --check       # CPU: compiles the two prefetch kernels for sm_90 (no run)

Why: in a decode step HBM idles between the GEMVs while rotary, attention, the norms and SwiGLU
run (~470 us of a ~2.07 ms INT8 step, run 19). The H200's L2 (50 MiB) holds a whole INT8 o_proj
(16.8 MB) or q/k/v (18.9 MB), and half a bf16 one. If the o_proj weight were asked into L2 when the
attention starts, o_proj would read it from L2; the same for the first megabytes of gate_up
during the norm. Run 18's prefetch was different and lost: every GEMV program asked for its own
first tile before its PDL wait, doubling the requests while the previous GEMV still streamed.

Timed here, as one CUDA graph of 100 calls over weight copies that L2 cannot hold
(``bench.gemv.time_calls``), the pattern ``first GEMV; [prefetch the second's weight]; spin T us;
second GEMV``, where the spin (``torch.cuda._sleep``) stands in for the idle kernels. Pairs:
q/k/v -> o_proj (spin 0, 2, 8 us: nothing, a norm, rotary + attention) and o_proj -> gate_up
(spin 3 us, the first 8-32 MiB of gate_up asked for). Forms: ``lines`` (``prefetch.global.L2::
evict_last`` per 128-byte line) and ``bulk`` (``cp.async.bulk.prefetch.L2``, 16 KiB per lane,
sm_90). GEMVs as the decode step runs them: ``WeightOnlyInt8Linear`` (Triton) and ``gemv_linear``
(bf16). Each case is timed with and without the prefetch twice, alternating; ``saved`` is the
difference of the medians. Worth wiring into the decode step only if it saves more than the
prefetch kernel's own launch (~2 us) in the 8 us case.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
import triton
import triton.language as tl

from bench.common import parser, print_table, write_result

MiB = 2**20


@triton.jit
def _prefetch_lines(base, nbytes, BLOCK: tl.constexpr):
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64) * 128
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0; }",
        "=r,l,r", [base + offs, (offs < nbytes).to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _prefetch_bulk(base, nbytes, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64) * CHUNK
    size = tl.minimum(nbytes - offs, CHUNK).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $3; mov.u32 $0, 0; }",
        "=r,l,r,r", [base + offs, (offs < nbytes).to(tl.int32), size], dtype=tl.int32, is_pure=False, pack=1)


def prefetch(weight: torch.Tensor, nbytes: int | None, form: str) -> None:
    """Ask L2 for the first ``nbytes`` (all: None) of ``weight``'s storage."""
    flat = weight.reshape(-1).view(torch.uint8)
    n = flat.numel() if nbytes is None else min(nbytes, flat.numel())
    if form == "lines":
        _prefetch_lines[(triton.cdiv(triton.cdiv(n, 128), 1024),)](flat, n, BLOCK=1024, num_warps=4)
    else:
        _prefetch_bulk[(triton.cdiv(triton.cdiv(n, 16384), 32),)](flat, n, CHUNK=16384, BLOCK=32, num_warps=1)


class Gemv:
    """One (N, K) weight as the decode step multiplies it: INT8 layer or bf16 ``gemv_linear``."""

    def __init__(self, n: int, k: int, kind: str) -> None:
        from llm.kernels.gemv_op import gemv_linear
        from llm.quantization import WeightOnlyInt8Linear

        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        if kind == "int8":
            layer = WeightOnlyInt8Linear(w, None)
            self.weight, self.call = layer.weight, layer
        else:
            self.weight, self.call = w, lambda x: gemv_linear(x, w)


def spin_cycles_per_us() -> float:
    """``torch.cuda._sleep`` cycles per microsecond (the spin's clock), from one timed spin."""
    from bench.gemv import time_calls

    cycles = 200_000
    return cycles / (time_calls(lambda i: torch.cuda._sleep(cycles), device="cuda") * 1e6)


def time_case(kind: str, first: tuple[int, int], second: tuple[int, int], *, copies: int, spin_us: float,
              nbytes: int | None, form: str, cycles_per_us: float) -> dict[str, Any]:
    from bench.gemv import time_calls

    a = [Gemv(*first, kind) for _ in range(copies)]
    b = [Gemv(*second, kind) for _ in range(copies)]
    x1 = torch.randn(1, first[1], device="cuda", dtype=torch.bfloat16)
    x2 = torch.randn(1, second[1], device="cuda", dtype=torch.bfloat16)

    def step(i: int, with_prefetch: bool) -> None:
        a[i % copies].call(x1)
        if with_prefetch:
            prefetch(b[i % copies].weight, nbytes, form)
        if spin_us:
            torch.cuda._sleep(int(spin_us * cycles_per_us))
        b[i % copies].call(x2)

    times: dict[bool, list[float]] = {False: [], True: []}
    for with_prefetch in (False, True, False, True):
        times[with_prefetch].append(time_calls(lambda i: step(i, with_prefetch), device="cuda") * 1e6)
    del a, b
    torch.cuda.empty_cache()
    plain, fetched = statistics.median(times[False]), statistics.median(times[True])
    return {"plain_us": plain, "prefetch_us": fetched, "saved_us": plain - fetched, "all_us": times}


def cases() -> list[tuple[str, tuple[int, int], tuple[int, int], float, int | None, str]]:
    """(label, first GEMV, second GEMV, spin us, bytes asked for, form) for ChatGLM3-6B's shapes."""
    qkv, o_proj, gate_up = (4608, 4096), (4096, 4096), (27392, 4096)
    out = [("q/k/v -> o_proj", qkv, o_proj, spin, None, form) for spin in (0.0, 2.0, 8.0) for form in ("lines", "bulk")]
    out += [("o_proj -> gate_up", o_proj, gate_up, 3.0, size * MiB, "lines") for size in (8, 16, 24, 32)]
    return out


def residency() -> list[dict[str, Any]]:
    """How fast each GEMV of the 6B shape is with its weight out of HBM (``copies`` cycled, more
    than L2 holds), resident on the chip (one copy, called back to back), and resident after a
    reduction over 25 MB of other data between calls (evicts the SMs' L1, ~130-250 KB each, but
    leaves L2 the weight): what a perfect prefetch into L2 could give at most. The reduction is
    timed alone and subtracted."""
    from bench.gemv import time_calls

    other = torch.randn(25 * 10**6 // 2, device="cuda", dtype=torch.bfloat16)
    sink = torch.empty((), device="cuda", dtype=torch.bfloat16)
    flush_us = time_calls(lambda i: torch.sum(other, dim=0, out=sink), device="cuda") * 1e6
    out = []
    for kind in ("int8", "none"):
        for n, k in ((4096, 4096), (4608, 4096), (4096, 13696)):
            many = (16 if kind == "int8" else 8) if n * k < 2**25 else 4
            for copies, flush in ((many, False), (1, False), (1, True)):
                gemvs = [Gemv(n, k, kind) for _ in range(copies)]
                x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)

                def call(i: int) -> None:
                    if flush:
                        torch.sum(other, dim=0, out=sink)
                    gemvs[i % copies].call(x)

                us = time_calls(call, device="cuda") * 1e6 - (flush_us if flush else 0.0)
                mb = gemvs[0].weight.numel() * gemvs[0].weight.element_size() / 1e6
                where = "HBM" if copies > 1 else ("L2 (L1 evicted)" if flush else "L1 + L2")
                out.append({"kind": kind, "n": n, "k": k, "weight": where, "copies": copies, "mb": mb, "us": us,
                            "tb_s": mb / us})
                print(out[-1], flush=True)
                del gemvs
                torch.cuda.empty_cache()
    return out


def check() -> None:
    """Compile both prefetch kernels for sm_90 with this Triton (its own ptxas): the PTX is valid."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    for fn, signature, constants in (
        (_prefetch_lines, {"base": "*u8", "nbytes": "i64", "BLOCK": "constexpr"}, {"BLOCK": 1024}),
        (_prefetch_bulk, {"base": "*u8", "nbytes": "i64", "CHUNK": "constexpr", "BLOCK": "constexpr"},
         {"CHUNK": 16384, "BLOCK": 32}),
    ):
        compiled = triton.compile(ASTSource(fn, signature, constants), target=target, options={"num_warps": 4})
        assert "prefetch" in compiled.asm["ptx"] and compiled.asm["cubin"], fn.__name__
        print(f"{fn.__name__}: sm_90 cubin {len(compiled.asm['cubin'])} bytes")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compile the kernels for sm_90 on CPU, run nothing")
    p.add_argument("--kinds", nargs="+", default=["int8", "none"], choices=["int8", "none"])
    p.add_argument("--residency", action="store_true", help="instead: each GEMV with its weight in HBM, L2, L1")
    args = p.parse_args()
    if args.check:
        check()
        return
    if not torch.cuda.is_available():
        raise SystemExit("bench.l2_prefetch needs a CUDA GPU of sm_90 (use --check on CPU)")
    if args.residency:
        with torch.inference_mode():
            rows = residency()
        print_table("GEMV time by where its weight is (us)", [tuple(r.values()) for r in rows], tuple(rows[0]))
        write_result(args.out, "gemv_residency", {"rows": rows})
        return
    cycles_per_us = spin_cycles_per_us()
    rows, result = [], {"cycles_per_us": cycles_per_us, "cases": []}
    with torch.inference_mode():
        for kind in args.kinds:
            for label, first, second, spin, nbytes, form in cases():
                copies = (16 if kind == "int8" else 8) if second[0] < 8192 else 4
                r = time_case(kind, first, second, copies=copies, spin_us=spin, nbytes=nbytes, form=form,
                              cycles_per_us=cycles_per_us)
                asked = "all" if nbytes is None else f"{nbytes // MiB} MiB"
                result["cases"].append({"kind": kind, "pair": label, "spin_us": spin, "asked": asked, "form": form, **r})
                rows.append((kind, label, spin, asked, form, r["plain_us"], r["prefetch_us"], r["saved_us"]))
                print(rows[-1], flush=True)
    print_table("L2 prefetch before an idle window (us per pair)", rows,
                ("kind", "pair", "spin us", "asked", "form", "plain", "prefetch", "saved"))
    write_result(args.out, "l2_prefetch", result)


if __name__ == "__main__":
    main()
