"""SASS figures of the GEMV kernels for sm_90, compiled offline (no GPU needed).

    python -m bench.sass                             # the installed Triton
    PYTHONPATH=/tmp/tr36 python -m bench.sass        # the GPU image's Triton (pip install --target)

Each kernel is compiled by Triton with its bundled ptxas for an H100/H200 target, with the
16-divisibility of pointers and strides a CUDA launch specialises on (without it Triton cannot
vectorise the loads and every figure is another kernel's), then read back with its bundled
``cuobjdump``/``nvdisasm``. Per kernel and tile: registers, stack, and for the main loop (the
longest backward branch) its instructions, global loads, barriers and shared-memory accesses, and
instructions per weight of one step. These are what docs/PERFORMANCE.md quotes when it says "read
from the SASS": counts, not timings.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any

from bench.common import parser, print_table, write_result

_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/")


Case = tuple[str, Any, dict[str, str], dict[str, Any], int, int]
GEMM_STAGES = 3  # the INT4 GEMM's software pipeline (int4_gemv_op.GEMM_CONFIGS' usual); the row kernels run 1
INT8_PROMPT = "int8 prompt "  # a case name's prefix before its tile, which names its own pipeline depth
# INT8 prompt tiles (64 rows, ``tl.dot``): the pinned x-first ones of run 26 and, with ``t``, the weight as
# wgmma's register A operand; session 37 read both orders here (docs/PERFORMANCE.md, "Session 37").
INT8_PROMPT_TILES = ("n64k64s4w4p4", "n64k128s4w4p3", "n64k128s4w4p3t", "n128k128s1w8p3", "n128k128s1w8p5t",
                     "n256k64s1w8p5", "n256k64s1w8p5t", "n256k128s1w8p4")


def kernels() -> list[Case]:
    """(name, kernel, pointer types, constexprs, warps, weights per step) for each row kernel tile,
    the tensor-core GEMV probe's (``bench.int4_dot_gemv``) and the INT4 GEMM's."""
    from llm.kernels import gemv, int4_gemm, int4_gemv
    from llm.kernels.gemv_configs import GemvConfig

    int4 = {"w_ptr": "*u8", "sz_ptr": "*i32"}
    cases: list[Case] = [
        (f"int8 row {block_n}x{block_k} K={k}", gemv._int8_row_kernel, {"w_ptr": "*i8"},
         {"HAS_SCALE": True, "HAS_BIAS": False, "EVEN_K": k % block_k == 0, "EVEN_N": True, "ASM": True,
          "BLOCK_N": block_n, "BLOCK_K": block_k, "stride_wn": k}, warps, block_n * block_k)
        for block_n, block_k, warps, k in ((4, 2048, 4, 4096), (8, 2048, 8, 13696))
    ]
    for block_n, block_k, warps, k in ((4, 2048, 4, 4096), (8, 2048, 4, 4096), (2, 4096, 4, 4096),
                                       (16, 2048, 4, 4096), (16, 4096, 8, 13696)):
        cases.append((f"int4 runs row {block_n}x{block_k} K={k}", int4_gemv._int4_runs_row_kernel, int4,
                      {"HAS_BIAS": False, "EVEN_K": k % block_k == 0, "EVEN_N": True, "GROUP": 128, "ASM": True,
                       "BLOCK_N": block_n, "BLOCK_K": block_k, "stride_wn": k // 2, "stride_szn": k // 128},
                      warps, block_n * block_k))
    for rows, block_n, block_k, warps, k in ((2, 2, 2048, 4, 4096), (2, 4, 2048, 4, 4096), (4, 2, 2048, 4, 4096),
                                             (4, 4, 2048, 4, 4096), (4, 4, 2048, 4, 13696)):
        cases.append((f"int4 runs {rows} rows {block_n}x{block_k} K={k}", int4_gemv._int4_runs_rows_kernel, int4,
                      {"HAS_BIAS": True, "EVEN_K": k % block_k == 0, "EVEN_N": True, "GROUP": 128, "ASM": True,
                       "BLOCK_M": rows, "BLOCK_N": block_n, "BLOCK_K": block_k, "stride_wn": k // 2,
                       "stride_szn": k // 128}, warps, block_n * block_k))
    from bench.int4_dot_gemv import _int4_dot_gemv_kernel

    for block_n, warps in ((256, 8), (128, 4), (64, 4)):  # the tensor-core probe; loop: one group of K
        cases.append((f"int4 dot probe {block_n}x128", _int4_dot_gemv_kernel, {**int4, "out_ptr": "*fp32"},
                      {"GROUP": 128, "ASM": True, "DOT_F32": False, "BLOCK_N": block_n, "BLOCK_K": 128, "SPLIT_K": 1,
                       "stride_wn": 2048, "stride_szn": 32}, warps, block_n * 128))
    from bench.int4_mma_gemv import _int4_mma_gemv_kernel

    for chains, unroll, warps, k in ((1, 2, 4, 4096), (1, 4, 4, 4096), (1, 8, 4, 13696)):  # the mma.sync probe
        cases.append((f"int4 mma probe {chains}x16 rows x{unroll} K={k}", _int4_mma_gemv_kernel,
                      {"x_ptr": "*i32", "w_ptr": "*i64", "sz_ptr": "*i32"},
                      {"KC": k // 64, "CHUNKS_PER_GROUP": 2, "CHAINS": chains, "UNROLL": unroll, "WARPS": warps,
                       "MODE": 0},
                      warps, 2 * chains * unroll * 16 * 64 * warps))  # two steps a loop (ping-pong)
    for tile in INT8_PROMPT_TILES:  # INT8 prompts of <= 64 tokens: the pinned tiles and session 37's wide ones
        c = GemvConfig.parse(tile)
        cases.append((INT8_PROMPT + tile, gemv._gemv_kernel, {"w_ptr": "*i8", "out_ptr": "*fp32"},
                      {"HAS_SCALE": False, "HAS_BIAS": False, "PARTIAL": True, "EVEN_K": True, "EVEN_N": True,
                       "USE_DOT": True, "INT8": True, "WEIGHT_FIRST": c.weight_first, "BLOCK_M": 64,
                       "BLOCK_N": c.block_n, "BLOCK_K": c.block_k}, c.num_warps, c.block_n * c.block_k))
    for block_m, block_n, block_k, warps in ((16, 64, 128, 4), (64, 128, 128, 8)):
        cases.append((f"int4 runs GEMM {block_m}x{block_n}x{block_k}", int4_gemm._int4_runs_gemm_kernel, int4,
                      {"HAS_BIAS": True, "GROUP": 128, "ASM": True, "DOT_F32": False, "BLOCK_M": block_m,
                       "BLOCK_N": block_n, "BLOCK_K": block_k}, warps, block_n * block_k))
    return cases


def compile_for_sm90(fn: Any, pointers: dict[str, str], constexprs: dict[str, Any], *, warps: int,
                     stages: int | None = None) -> bytes:
    """The kernel's cubin for sm_90, specialised as a launch with aligned pointers and strides is,
    pipelined as its launcher does (``GEMM_STAGES`` for the GEMM, ``stages`` where given)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {p.name: "constexpr" if p.is_constexpr else pointers.get(p.name, "*bf16" if p.name.endswith("_ptr")
                                                                          else "i32") for p in fn.params}
    aligned = {(i,): [["tt.divisibility", 16]] for i, (name, kind) in enumerate(signature.items())
               if kind != "constexpr" and name not in ("M", "N")}
    pdl = {"PDL": True} if "PDL" in fn.arg_names else {}
    source = ASTSource(fn=fn, signature=signature, constexprs={**constexprs, **pdl}, attrs=aligned)
    stages = stages or (GEMM_STAGES if fn is _gemm_kernel() else 1)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps,
                                                                                 "num_stages": stages})
    return compiled.asm["cubin"]


def case_stages(name: str) -> int | None:
    """The pipeline depth a case's name gives (an INT8 prompt tile's ``p``), else None (the launcher's)."""
    from llm.kernels.gemv_configs import GemvConfig

    return GemvConfig.parse(name.removeprefix(INT8_PROMPT)).num_stages if name.startswith(INT8_PROMPT) else None


def _gemm_kernel() -> Any:
    from llm.kernels.int4_gemm import _int4_runs_gemm_kernel

    return _int4_runs_gemm_kernel


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def disassemble(cubin: bytes) -> tuple[str, str]:
    """(resource usage, SASS) of a cubin, by Triton's bundled tools."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
    return usage, sass


def main_loop(sass: str) -> list[str]:
    """The instructions of the longest loop: from a label to the last branch back to it."""
    labels: dict[str, int] = {}
    instructions: list[str] = []
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
        elif _INSTRUCTION.search(line):
            instructions.append(line)
    best: list[str] = []
    for end, line in enumerate(instructions):
        target = re.search(r"BRA[^;]*?(\.L_x_\d+)", line)
        if target and labels.get(target.group(1), end + 1) <= end:
            body = instructions[labels[target.group(1)]:end + 1]
            best = body if len(body) > len(best) else best
    return best


def figures(cubin: bytes, *, weights: int, threads: int) -> dict[str, Any]:
    """Registers, stack and the main loop's counts; instructions per weight of one step."""
    usage, sass = disassemble(cubin)
    loop = main_loop(sass)
    return {
        "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
        "stack": int(re.search(r"STACK:(\d+)", usage).group(1)),
        "loop_instructions": len(loop),
        "loop_global_loads": sum("LDG" in i for i in loop),
        "loop_barriers": sum("BAR" in i for i in loop),
        "loop_shared_accesses": sum(("LDS" in i or "STS" in i) for i in loop),
        "loop_shared_stores": sum("STS" in i for i in loop),
        "loop_byte_permutes": sum("PRMT" in i for i in loop),
        "loop_wgmma": sum("HGMMA" in i for i in loop),
        "instructions_per_weight": round(len(loop) / (weights / threads), 2),
    }


def main() -> None:
    import triton

    args = parser(__doc__).parse_args()
    rows = []
    for name, fn, pointers, constexprs, warps, weights in kernels():
        cubin = compile_for_sm90(fn, pointers, constexprs, warps=warps, stages=case_stages(name))
        rows.append({"kernel": name, "warps": warps, **figures(cubin, weights=weights, threads=warps * 32)})
    header = tuple(rows[0])
    print_table(f"sm_90 SASS, Triton {triton.__version__}", [tuple(r.values()) for r in rows], header)
    path = write_result(args.out, f"sass_triton{triton.__version__}", {"target": "sm_90", "kernels": rows})
    print(f"\n{path}")


if __name__ == "__main__":
    main()
