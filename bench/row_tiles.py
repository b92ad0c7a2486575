"""One-row decode GEMVs of the ChatGLM3-6B shapes over a wide tile grid: INT8 and INT4 "runs".

    python -m bench.row_tiles --out DIR       # GPU machine (bash bench/run_all.sh rowtiles)
    python -m bench.row_tiles --tiny          # check the script on CPU (interpreter, untimed)

Why: the ops time only a short candidate list on first use (``gemv_configs.candidates`` for
INT8, ``int4_gemv_op.ROW_CONFIGS`` for INT4: 4-8 tiles, a few seconds of compiles per shape at
model load), chosen from run 15-17 sweeps of older kernels. This sweep times every tile of a
wider grid (1-16 outputs per program, 1-8 KiB of K per step, 1-8 warps, 16-128 weight bytes per
thread per step) for the kernels the decode step runs now, as ``bench.gemv`` times calls: a CUDA
graph of 100 calls over weight copies L2 cannot hold. Per shape it prints the best tile, its
microseconds and TB/s, next to the op's own choice and bf16 cuBLAS, so the candidate lists can be
cut to the tiles that win. ``--kinds gemlite4`` adds gemlite's A16W4 layer (Apache-2.0, its own
autotuned GEMV; needs its wheel in .whl/) on the same quantized weights, as a library to beat.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bench.common import parser, print_table, write_result
from bench.gemv import SHAPES, Weights, shapes_setup, time_calls, weight_size

KIB = 1024


def grid(*, k: int, bytes_per_k: float, tiny: bool) -> list[tuple[int, int, int]]:
    """``(block_n, block_k, num_warps)`` tiles: ``block_k`` <= K, each warp's step spans >= 256
    weight bytes along K (one 8-byte run per thread; narrower steps put x through shared memory),
    and each thread holds 16-128 weight bytes per step."""
    if tiny:
        return [(16, 256, 1)]
    tiles = []
    for warps in (2, 4, 8):
        for block_k in (1024, 2048, 4096, 8192):
            row_bytes = int(block_k * bytes_per_k)
            if row_bytes < warps * 256 or block_k > k:
                continue
            for block_n in (1, 2, 4, 8, 16):
                per_thread = block_n * row_bytes // (warps * 32)
                if 16 <= per_thread <= 128:
                    tiles.append((block_n, block_k, warps))
    return tiles


def sweep_int8(w: Weights, x: torch.Tensor, tiles: list[tuple[int, int, int]], *, device: str) -> dict[str, Any]:
    from llm.kernels.gemv import launch_gemv
    from llm.kernels.gemv_configs import GemvConfig

    layers, out = w.get("int8"), {}
    for block_n, block_k, warps in tiles:
        config = GemvConfig(block_n, block_k, num_warps=warps, num_stages=1)

        def call(i: int, c: GemvConfig = config) -> Any:
            layer = layers[i % len(layers)]
            return launch_gemv(x, layer.weight, layer.scales, None, c)

        out[str(config)] = _timed(call, device=device)
    return out


def sweep_int4(w: Weights, x: torch.Tensor, tiles: list[tuple[int, int, int]], *, device: str) -> dict[str, Any]:
    from llm.kernels.int4_gemv import launch_int4_runs_row

    layers = w.get("int4triton")
    if layers[0].kernel != "triton":
        return {"skipped": f"the layer is in its {layers[0].kernel!r} form"}
    scratch, out = torch.empty((1, w.n), dtype=x.dtype, device=device), {}
    for tile in tiles:
        def call(i: int, t: tuple[int, int, int] = tile) -> Any:
            layer = layers[i % len(layers)]
            return launch_int4_runs_row(x, layer.weight, layer.scales_zeros, None, group_size=128, block_n=t[0],
                                        block_k=t[1], num_warps=t[2], out=scratch)

        out[str(tile)] = _timed(call, device=device)
    return out


def sweep_int4_dot(w: Weights, x: torch.Tensor, *, device: str) -> dict[str, Any]:
    """The tensor-core probe (``bench.int4_dot_gemv``) over its tiles, each checked against the
    row kernel's product first (``max_rel_err``)."""
    from bench.int4_dot_gemv import TILES, launch_int4_dot_gemv

    layers = w.get("int4triton")
    if layers[0].kernel != "triton":
        return {"skipped": f"the layer is in its {layers[0].kernel!r} form"}
    scratch = torch.empty((1, w.n), dtype=torch.float32, device=device)
    calls = {}
    for block_n, block_k, warps, split in TILES if device == "cuda" else TILES[-1:]:
        def call(i: int, t: tuple[int, int, int, int] = (block_n, block_k, warps, split)) -> Any:
            layer = layers[i % len(layers)]
            return launch_int4_dot_gemv(x, layer.weight, layer.scales_zeros, group_size=128, block_n=t[0],
                                        block_k=t[1], num_warps=t[2], split_k=t[3], out=scratch)

        calls[f"({block_n}, {block_k}, {warps}) split {split}"] = call
    return _checked_sweep(calls, _runs_reference(layers[0], x), device=device)


def sweep_int4_mma(w: Weights, x: torch.Tensor, *, device: str) -> dict[str, Any]:
    """The ``mma.sync`` probe (``bench.int4_mma_gemv``) over its tiles, each checked against the row
    kernel's product first (``max_rel_err``; a layout Triton assigned otherwise shows here as garbage)."""
    from bench.int4_mma_gemv import TILES, from_runs, launch_int4_mma_gemv

    layers = w.get("int4triton")
    if layers[0].kernel != "triton":
        return {"skipped": f"the layer is in its {layers[0].kernel!r} form"}
    if device != "cuda":
        return {"skipped": "mma.sync runs on CUDA only (no interpreter form)"}
    forms = [from_runs(layer.weight, layer.scales_zeros) for layer in layers]
    scratch = torch.empty((1, w.n), dtype=x.dtype, device=device)
    calls = {}
    for chains, unroll, warps in TILES:
        def call(i: int, t: tuple[int, int, int] = (chains, unroll, warps)) -> Any:
            packed, sz = forms[i % len(forms)]
            return launch_int4_mma_gemv(x, packed, sz, n=w.n, k=w.k, group_size=128, chains=t[0], unroll=t[1],
                                        num_warps=t[2], out=scratch)

        calls[f"({chains} x 16 rows, {unroll} chunks, {warps} warps)"] = call
    return _checked_sweep(calls, _runs_reference(layers[0], x), device=device)


def _runs_reference(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """The INT4 row kernel's product for ``layer`` (what the probes are checked against), float32."""
    from llm.kernels.int4_gemv import launch_int4_runs_row

    return launch_int4_runs_row(x, layer.weight, layer.scales_zeros, None, group_size=128).float()


def _checked_sweep(calls: dict[str, Any], reference: torch.Tensor, *, device: str) -> dict[str, Any]:
    """Each named ``call(i)`` checked once against ``reference`` (max error relative to its largest
    value, under 2e-2), then timed; a tile that fails or is wrong is named with why, not timed."""
    out: dict[str, Any] = {}
    errors: dict[str, float] = {}
    for name, call in calls.items():
        try:
            err = ((call(0).float() - reference).abs().max() / reference.abs().max()).item()
        except Exception as e:  # a tile that does not fit this shape
            out[name] = f"error: {type(e).__name__}: {str(e)[:200]}"
            continue
        out[name] = _timed(call, device=device) if err < 2e-2 else f"error: max_rel_err {err:.3g}"
        errors[name] = err
    return {**out, "max_rel_err": errors}  # a dict: ``best`` looks at the float entries only


def _timed(call: Any, *, device: str) -> float | str:
    try:
        return time_calls(call, device=device) * 1e6
    except Exception as e:  # one tile failing must not stop the sweep
        return f"error: {type(e).__name__}: {str(e)[:200]}"


def op_choice(w: Weights, x: torch.Tensor, kind: str, *, device: str) -> float | str:
    """The layer as the decode step calls it (its op picks among its own candidates)."""
    layers = w.get(kind)
    return _timed(lambda i: layers[i % len(layers)](x), device=device)


def best(times: dict[str, Any]) -> tuple[str, float] | None:
    timed = {c: t for c, t in times.items() if isinstance(t, float)}
    return min(timed.items(), key=lambda kv: kv[1]) if timed else None


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated among {', '.join(SHAPES)}")
    p.add_argument("--kinds", nargs="+", default=["int8", "int4"],
                   choices=("int8", "int4", "int4dot", "int4mma", "gemlite4"),
                   help="int4dot: the tensor-core probe (bench.int4_dot_gemv) on the INT4 weights; "
                        "int4mma: the mma.sync probe fed from registers (bench.int4_mma_gemv); "
                        "gemlite4: gemlite's A16W4 layer (g128), its own autotuned choice")
    p.add_argument("--resident", action="store_true",
                   help="one weight copy, no cycling: L2-resident where it fits (the kernels' own ceiling)")
    p.add_argument("--int8-shapes", default="qkv,o_proj", help="shapes to sweep INT8 on (its others read 3.4-3.9 TB/s)")
    args = p.parse_args()
    device, dtype, shapes, bandwidth = shapes_setup(args)
    results, rows = {}, []
    with torch.inference_mode():
        for name, (n, k) in shapes.items():
            w = Weights(n, k, device=device, dtype=dtype, resident=args.resident)
            x = torch.randn(1, k, device=device, dtype=dtype)
            ws = w.get("bf16")
            entry: dict[str, Any] = {"N": n, "K": k, "cublas_bf16_us": _timed(
                lambda i, ws=ws, x=x: F.linear(x, ws[i % len(ws)]), device=device)}
            for kind in args.kinds:
                if kind.startswith("int4") and name == "lm_head":
                    continue  # the LM head is INT8 in both quantized kinds
                if kind == "int8" and not args.tiny and name not in args.int8_shapes.split(","):
                    continue
                layer_kind = {"int8": "int8", "gemlite4": "gemlite4"}.get(kind, "int4triton")
                tiles = grid(k=k, bytes_per_k=1.0 if kind == "int8" else 0.5, tiny=args.tiny)
                if kind == "gemlite4":
                    if device != "cuda":
                        continue  # gemlite runs on CUDA only
                    try:
                        w.get(layer_kind)
                    except Exception as e:  # no wheel, or its kernel failed its check
                        entry[kind] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                        print(f"  {name} {kind}: {entry[kind]['error']}", flush=True)
                        continue
                    op_us = op_choice(w, x, layer_kind, device=device)
                    sweep = {"own choice": op_us}
                elif kind == "int4dot":
                    sweep = sweep_int4_dot(w, x, device=device)
                elif kind == "int4mma":
                    sweep = sweep_int4_mma(w, x, device=device)
                else:
                    sweep = (sweep_int8 if kind == "int8" else sweep_int4)(w, x, tiles, device=device)
                size = weight_size(w.get(layer_kind)[0])
                if kind != "gemlite4":
                    op_us = op_choice(w, x, layer_kind, device=device)
                top = best(sweep)
                entry[kind] = {"bytes": size, "op_us": op_us, "sweep_us": sweep,
                               "best": top and {"tile": top[0], "us": top[1], "tb_s": size / top[1] / 1e6}}
                rows.append((name, kind, op_us, top[0] if top else "-", top[1] if top else "-",
                             size / top[1] / 1e6 if top else "-", entry["cublas_bf16_us"]))
                print(f"  {name} {kind}: op {op_us}, best {top}", flush=True)
            results[name] = entry
            del w
            if device == "cuda":
                torch.cuda.empty_cache()
    write_result(args.out, "row_tiles", {"bandwidth_copy": bandwidth, "resident": args.resident, "results": results})
    print_table("one-row GEMVs, wide tile grid", rows,
                ("shape", "kind", "op us", "best tile", "best us", "TB/s", "bf16 cuBLAS us"))


if __name__ == "__main__":
    main()
