"""INT8 prompt-pass GEMMs (16 to 1024 rows) of the ChatGLM3-6B shapes: every tile of a wide grid.

    python -m bench.int8_tiles --out DIR                  # GPU machine: rows 64, 128, 512, 1024
    python -m bench.int8_tiles --rows 64 --out DIR
    python -m bench.int8_tiles --rows 64 --wide --out DIR  # also 128-256 outputs, 2-5 stages, 64-256 of K
    python -m bench.int8_tiles --tiny                     # check the script on CPU (nothing to time)

Why: an INT8 model's prompt pass runs its four GEMMs per layer on ``llm.kernels.gemv``'s
``tl.dot`` tiles up to 64 rows and, past ``gemv_configs.INT8_GEMM_ROWS``, casts each weight to
bf16 for cuBLAS (run 26: a 128-token pass 10.07 ms against bf16's 5.17). ``candidates`` holds a
handful of tiles; this times a grid around them per shape and row count, in both operand orders
(``GemvConfig.weight_first``: the converted weight as wgmma's register A operand, x from shared
memory), against bf16 cuBLAS and the cast + cuBLAS path, and prints the winners as ``TUNED``
lines for ``llm/kernels/gemv_configs.py``. Each tile is timed as ``bench.gemv`` times one: a CUDA
graph of 100 calls over weight copies L2 cannot hold, median of 5 replays.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bench.common import parser, print_table, write_result
from bench.gemv import SHAPES, TINY_SHAPES, Weights, copy_bandwidth, time_calls
from llm.kernels.gemv_op import WRONG_PRODUCT, reference_gemv, relative_error

DEFAULT_ROWS = "64,128,512,1024"


def wide_grid() -> list[Any]:
    """More tiles for <= 64 rows (``--wide``, session 37): 128-256 outputs per program, 64-256 of K,
    1/2/4 K-slices, 2-5 stages as shared memory allows (227 KiB a block). Why: at 64 rows every program
    re-reads all of x from L2 (N / block_n times), twice the weight's own bytes at 64 outputs; the
    grid above stopped at 128 outputs and 4 stages (run 26 / 27)."""
    from llm.kernels.gemv_configs import GemvConfig

    def stages(block_n: int, block_k: int, weight_first: bool) -> int:
        """As many as fit: per stage the int8 weight and the bf16 x; x-first also keeps one bf16 copy of
        the converted weight for wgmma's B operand (Triton 3.6's sm_90 code, read offline)."""
        per_stage = block_n * block_k + 64 * block_k * 2
        converted = 0 if weight_first else block_n * block_k * 2
        return min(5, (220 * 1024 - converted) // per_stage)

    tiles = []
    for weight_first in (True, False):
        for block_n in (128, 256):
            for block_k in (64, 128, 256):
                for split in (1, 2, 4):
                    for warps in (4, 8):
                        n_stages = stages(block_n, block_k, weight_first)
                        if (block_n == 256 and warps == 4 and block_k > 64) or n_stages < 2:
                            continue
                        tiles.append(GemvConfig(block_n, block_k, split_k=split, num_warps=warps,
                                                num_stages=n_stages, weight_first=weight_first))
    return tiles


def grid(rows: int, *, wide: bool = False) -> list[Any]:
    """The tiles timed for ``rows`` rows: up to 64 rows one row tile (as the decode graph's prompt
    bucket runs), 64-128 outputs x 64-128 of K in 1 or 4 K-slices; past 64, 64- and 128-row tiles of
    64-128 outputs over 64 of K, one slice (the weight is read once per row tile, from L2 after the
    first; 256-row tiles computed wrong products, ``gemv_configs.MAX_BLOCK_M_TILE``). Both operand
    orders each."""
    from llm.kernels.gemv_configs import GemvConfig

    tiles = []
    for weight_first in (False, True):
        if rows <= 64:
            for block_n in (64, 128):
                for block_k in (64, 128):
                    for split in (1, 4):
                        tiles.append(GemvConfig(block_n, block_k, split_k=split, num_warps=4 if block_n == 64 else 8,
                                                num_stages=4 if block_k == 64 else 3, weight_first=weight_first))
        else:
            for block_m in (64, 128):
                for block_n in (64, 128):
                    tiles.append(GemvConfig(block_n, 64, num_warps=4 if block_m * block_n <= 8192 else 8,
                                            num_stages=4, block_m=block_m, weight_first=weight_first))
    if wide and rows <= 64:
        tiles += [t for t in wide_grid() if t not in tiles]
    return tiles


def use_sweep(paths: list[str]) -> None:
    """Take an ``int8_tiles.json``'s winners as ``gemv_configs.TUNED``'s INT8 entries for the rest of the
    process (``--int8-tiles`` of ``bench.prefill`` / ``bench.decode``): a sweep's tiles timed inside the
    prompt pass before they are pinned (run 26: a 100-call pick is not always the best in the pass)."""
    import json

    from llm.kernels import gemv_configs

    results = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            results += json.load(f)["results"]
    for r in results:
        if r.get("best"):
            gemv_configs.TUNED[("int8", gemv_configs.row_bucket(r["rows"]), r["N"], r["K"])] = r["best"]
            print(f"int8 tile for {r['rows']} x {r['N']} x {r['K']}: {r['best']} ({r['tiles'][r['best']]:.1f} us)")


def bench_rows(n: int, k: int, rows: int, *, device: str, dtype: torch.dtype,
               wide: bool = False) -> dict[str, Any]:
    """us per call of bf16 cuBLAS, the INT8 layer as built, the cast + cuBLAS path, and
    every tile of ``grid(rows)`` (an error string where one fails or its product is wrong: run 27
    pinned a fast tile whose products were off by 10 %, timed and never checked)."""
    from llm.kernels.gemv import launch_gemv

    w = Weights(n, k, device=device, dtype=dtype)
    x = torch.randn(rows, k, device=device, dtype=dtype)
    out: dict[str, Any] = {"N": n, "K": k, "rows": rows, "tiles": {}}
    with torch.inference_mode():
        ws, layers = w.get("bf16"), w.get("int8")
        out["bf16_cublas_us"] = time_calls(lambda i: F.linear(x, ws[i % len(ws)]), device=device) * 1e6
        out["int8_layer_us"] = time_calls(lambda i: layers[i % len(layers)](x), device=device) * 1e6
        out["int8_cast_us"] = time_calls(lambda i: reference_gemv(x, layers[i % len(layers)].weight,
                                                                  scales=layers[i % len(layers)].scales),
                                         device=device) * 1e6
        reference = reference_gemv(x, layers[0].weight, scales=layers[0].scales)
        for tile in grid(rows, wide=wide):
            try:
                call = lambda i, c=tile: launch_gemv(x, layers[i % len(layers)].weight,  # noqa: E731
                                                     layers[i % len(layers)].scales, None, c)
                error = relative_error(call(0), reference)
                if error > WRONG_PRODUCT:
                    out["tiles"][str(tile)] = f"wrong: relative error {error:.2e}"
                    continue
                out["tiles"][str(tile)] = time_calls(call, device=device) * 1e6
            except Exception as e:  # one tile failing must not stop the grid
                out["tiles"][str(tile)] = f"error: {type(e).__name__}: {str(e)[:200]}"
    timed = {c: t for c, t in out["tiles"].items() if isinstance(t, float)}
    out["best"] = min(timed, key=timed.get) if timed else None
    del w
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    from llm.kernels.gemv_configs import row_bucket

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", default=DEFAULT_ROWS, help="comma-separated prompt rows M")
    p.add_argument("--wide", action="store_true", help="up to 64 rows also wide_grid's tiles")
    p.add_argument("--shapes", default="qkv,o_proj,gate_up,down", help=f"comma-separated among {', '.join(SHAPES)}")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = TINY_SHAPES if args.tiny else {s: SHAPES[s] for s in args.shapes.split(",")}
    rows_list = [16] if args.tiny else [int(r) for r in args.rows.split(",")]
    results, table, tuned = [], [], []
    for rows in rows_list:
        for name, (n, k) in shapes.items():
            r = bench_rows(n, k, rows, device=device, dtype=dtype, wide=args.wide)
            results.append({"name": name, **r})
            best = r["best"]
            best_us = r["tiles"][best] if best else None
            table.append((name, rows, f"{r['bf16_cublas_us']:.1f}", f"{r['int8_layer_us']:.1f}",
                          f"{r['int8_cast_us']:.1f}", best, f"{best_us:.1f}" if best_us is not None else "-"))
            if best:
                tuned.append(f'    ("int8", {row_bucket(rows)}, {n}, {k}): "{best}",  # {best_us:.2f}')
            print(f"  {name} M={rows}: {table[-1]}", flush=True)
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print_table(f"INT8 prompt GEMMs ({device_name}), us per call",
                table, ("shape", "rows", "bf16 cuBLAS", "int8 as built", "int8 cast", "best tile", "us"))
    print("\n".join(tuned))
    path = write_result(args.out, "int8_tiles", {"device": device_name, "bandwidth_copy": copy_bandwidth(device),
                                                 "results": results})
    print(f"\n{path}")


if __name__ == "__main__":
    main()
