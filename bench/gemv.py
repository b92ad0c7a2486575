"""Small-batch linear layers (decode GEMVs) of the ChatGLM3-6B shapes, kernel by kernel.

    python -m bench.gemv --out DIR          # on the GPU machine (bash bench/run_all.sh gemv)
    python -m bench.gemv --tiny             # check the script on CPU (tiny shapes, untimed numbers)

Per weight shape (N, K) and rows M in {1, 16}, each variant is timed as one CUDA graph of 100
back-to-back calls, replayed 5 times (median), so launch overhead is excluded as in the decode
graph. The calls cycle through enough copies of the weight (>= 256 MiB) that L2 (50 MiB) serves
none of them. Reported: microseconds per call, GB/s of weight bytes read (scales and zero
points included) and the share of the device-to-device copy bandwidth (a 1 GiB ``copy_``,
read + written bytes over time, as in ``bench.kernels`` and ``bench.decode``).

Variants: bf16 ``F.linear`` (cuBLAS); bf16 ``torch.compile`` with coordinate-descent tuning;
bf16 Triton (``llm.kernels``, the best swept config); bf16 ``gemv_linear`` as the decode step's
``gemv_kernel="triton"`` runs it (tuned per shape, cuBLAS allowed to win); INT8 as the layer's
PyTorch forward under ``torch.compile`` (the decode graph before the kernel); INT8 Triton (the
layer as the decode step runs it, tuned); INT4 ``WeightOnlyInt4Linear`` compiled as loaded
(tinygemm's form on sm80+) and in its dequantizing form; and
``torch.ops.aten._weight_int4pack_mm`` (tinygemm, group 128) where torch has it; INT4 in glmkb's
"runs" layout through its Triton row kernel (``llm.kernels.int4_gemv``, the layer's op: tile
timed on first use; the sweep times every tile the op may pick for M: the row kernel's at 1, the
GEMM's and dequantize + cuBLAS at 16); where the
``gemlite`` package is installed (Apache-2.0, Triton kernels; a wheel in .whl/, see
docs/PERFORMANCE.md), its A16W4 (group 128, asymmetric: glmkb's INT4 form) and A16W8 (per
channel: glmkb's INT8 form) layers with their own default kernel choice (GEMV_REVSPLITK /
GEMV_SPLITK at M = 1, autotuned on first use). With
``--sweep`` (default) every Triton candidate config is timed too and the fastest printed as
a ``TUNED`` line for ``llm/kernels/gemv_configs.py``. A failing variant is reported as its
error string; the others still run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import parser, print_table, replay_seconds, write_result

SHAPES = {  # ChatGLM3-6B: (N, K) of each decode GEMV
    "qkv": (4608, 4096),
    "o_proj": (4096, 4096),
    "gate_up": (27392, 4096),
    "down": (4096, 13696),
    "lm_head": (65024, 4096),
}
TINY_SHAPES = {"qkv": (96, 128), "down": (64, 384)}  # K a multiple of INT4's group 128
CALLS = 100
MIN_BYTES = 256 * 2**20  # weight copies cycled per graph: several times the H200's 50 MiB L2


def copy_bandwidth(device: str) -> float | None:
    """Read + written bytes per second of a 1 GiB device-to-device ``copy_`` (median of 10)."""
    if device != "cuda":
        return None
    x = torch.empty(2**30, dtype=torch.uint8, device=device).random_(0, 255)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del x, y
    return 2 * 2**30 / statistics.median(times)


def time_calls(call: Callable[[int], Any], *, device: str, replays: int = 5) -> float:
    """Seconds per call of ``call(i)`` for i in 0..99: a captured CUDA graph of the 100 calls,
    median of ``replays`` replays (CPU: a plain loop, only to check the script)."""
    def hundred() -> None:
        for i in range(CALLS):
            call(i)

    if device != "cuda":
        hundred()
        start = time.perf_counter()
        hundred()
        return (time.perf_counter() - start) / CALLS
    from llm.fast_decode import capture_graph, warm_up_on_side_stream

    warm_up_on_side_stream(hundred, times=2)  # compiles, tunes, allocates before capture
    graph = capture_graph(hundred)
    seconds = replay_seconds(graph, replays=replays, skip=1)
    del graph
    return seconds / CALLS


def nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def copies_for(size: int) -> int:
    return max(1, min(CALLS, math.ceil(MIN_BYTES / max(1, size))))


class Weights:
    """The copies of one shape's weight in each storage kind, built on first use."""

    def __init__(self, n: int, k: int, *, device: str, dtype: torch.dtype, resident: bool = False) -> None:
        self.n, self.k, self.device, self.dtype, self.resident = n, k, device, dtype, resident
        self._made: dict[str, list[Any]] = {}

    def get(self, kind: str) -> list[Any]:
        """The copies, cycled by the timed calls; one alone with ``resident`` (it stays in L2 if it fits:
        what a kernel costs when bytes are not what bounds it)."""
        if kind not in self._made:
            made = self._make(kind)
            self._made[kind] = made[:1] if self.resident else made
        return self._made[kind]

    def _make(self, kind: str) -> list[Any]:
        from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear

        w = torch.randn(self.n, self.k, device=self.device, dtype=self.dtype) * 0.02
        one: Any
        if kind == "bf16":
            one = w
        elif kind == "int8":
            one = WeightOnlyInt8Linear(w, None)
        elif kind == "int4":  # as glmkb loads it: tinygemm's form where the GPU runs it (sm80+, bf16)
            one = WeightOnlyInt4Linear(w, None, group_size=128)
        elif kind == "int4triton":  # glmkb's "runs" layout for its Triton GEMV (llm.int4_kernel: triton)
            one = WeightOnlyInt4Linear(w, None, group_size=128, int4_kernel="triton")
        elif kind == "int4dequant":  # the PyTorch form, dequantized inside the compiled forward
            one = WeightOnlyInt4Linear(w, None, group_size=128)
            if hasattr(one, "_use_dequant"):
                one._use_dequant()
        elif kind in ("gemlite4", "gemlite8"):
            one = gemlite_layer(w, bits=4 if kind == "gemlite4" else 8)
        else:  # tinygemm: uint8 [N, K/2] -> int4pack, scales and zeros [K/128, N, 2]
            q = torch.randint(0, 256, (self.n, self.k // 2), dtype=torch.uint8, device=self.device)
            packed = torch.ops.aten._convert_weight_to_int4pack(q, 8)
            sz = torch.rand(self.k // 128, self.n, 2, device=self.device, dtype=torch.bfloat16) * 0.01
            one = (packed, sz)
        size = weight_size(one)
        return [one] + [_clone(one) for _ in range(copies_for(size) - 1)]


def gemlite_layer(w: torch.Tensor, *, bits: int) -> Any:
    """``w`` as a gemlite layer: A16W4 from glmkb's own INT4 quantization (nibbles, scales and zero
    points per group of 128), or A16W8 quantized per output channel by gemlite itself."""
    import gemlite
    from gemlite.helper import A16W8_INT8, A16Wn  # GPU-only at import (reads the device's properties)

    # On sm90 gemlite sums its split-K partials with bf16 atomics: 1.1-2.5 % relative error on the
    # 6B shapes (run 22), not a product glmkb could use. float32 partials, then one cast.
    gemlite.set_native_atomic_bfp16(False)

    if bits == 8:
        return A16W8_INT8(device=str(w.device), dtype=w.dtype).from_weights(w.clone())
    from llm.quantization import quantize_int4

    q, scales, zeros = quantize_int4(w, group_size=128)
    layer = A16Wn(device=str(w.device), dtype=w.dtype).from_weights(q, scales.to(w.dtype), zeros.to(w.dtype), 4, 128)
    # a fast wrong answer must not pass for a kernel: check one product against the dequantized weight
    s, z = (t.to(w.dtype).float().repeat_interleave(128, dim=1) for t in (scales, zeros))
    x = torch.randn(1, w.shape[1], device=w.device, dtype=w.dtype)
    want = x.float() @ ((q.float() - z) * s).t()
    error = ((layer(x).float() - want).norm() / want.norm()).item()
    if error > 5e-3:
        raise RuntimeError(f"gemlite A16W4 disagrees with the dequantized weight: rel. error {error:.3g}")
    return layer


def weight_size(one: Any) -> int:
    if isinstance(one, torch.Tensor):
        return nbytes(one)
    if isinstance(one, tuple):
        return nbytes(*one)
    if hasattr(one, "get_tensor_args"):  # a gemlite layer: packed weight, scales, zero points
        return nbytes(*(t for t in one.get_tensor_args() if isinstance(t, torch.Tensor)))
    return nbytes(*one.buffers())


def _clone(one: Any) -> Any:
    import copy

    if isinstance(one, torch.Tensor):
        return one.clone()
    if isinstance(one, tuple):
        return tuple(t.clone() for t in one)
    return copy.deepcopy(one)  # a quantized layer: its own buffers


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(fn, dynamic=False, options={"coordinate_descent_tuning": True})


def variants(
    w: Weights, x: torch.Tensor, best: dict[str, str]
) -> dict[str, tuple[str, Callable[[], Callable[[int], Any]]]]:
    """name -> (weight kind, builder of ``call(i)``); builders run inside the variant's try.
    ``best``: the fastest swept Triton config per weight kind (else the heuristic)."""
    from llm.kernels import gemv_linear
    from llm.kernels.gemv import launch_gemv
    from llm.kernels.gemv_configs import GemvConfig, candidates

    rows = x.numel() // x.shape[-1]
    x2 = x.reshape(rows, -1)

    def triton_config(kind: str) -> GemvConfig:
        if kind in best:
            return GemvConfig.parse(best[kind])
        return candidates(rows, w.n, w.k, int8=kind == "int8")[0]

    def bf16_cublas() -> Callable[[int], Any]:
        ws = w.get("bf16")
        return lambda i: F.linear(x, ws[i % len(ws)])

    def bf16_compiled() -> Callable[[int], Any]:
        ws, fn = w.get("bf16"), compiled(lambda a, b: F.linear(a, b))
        return lambda i: fn(x, ws[i % len(ws)])

    def bf16_triton() -> Callable[[int], Any]:
        ws, config = w.get("bf16"), triton_config("bf16")
        return lambda i: launch_gemv(x2, ws[i % len(ws)], None, None, config)

    def bf16_routed() -> Callable[[int], Any]:  # what gemv_kernel="triton" runs: tuned, cuBLAS allowed
        ws = w.get("bf16")
        return lambda i: gemv_linear(x, ws[i % len(ws)])

    def int8_layer(kernel: str, *, compile_: bool) -> Callable[[], Callable[[int], Any]]:
        def build() -> Callable[[int], Any]:
            layers = w.get("int8")
            for layer in layers:
                layer.kernel = kernel
            fn = compiled(lambda layer, a: layer(a)) if compile_ else (lambda layer, a: layer(a))
            return lambda i: fn(layers[i % len(layers)], x)
        return build

    def int4_compiled(kind: str) -> Callable[[], Callable[[int], Any]]:
        def build() -> Callable[[int], Any]:
            layers, fn = w.get(kind), compiled(lambda layer, a: layer(a))
            return lambda i: fn(layers[i % len(layers)], x)
        return build

    def int4_tinygemm() -> Callable[[int], Any]:
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
            raise RuntimeError("torch.ops.aten._weight_int4pack_mm is missing in this torch")
        ws, x2 = w.get("int4pack"), x.reshape(-1, x.shape[-1])  # the op takes a 2-D input only
        return lambda i: torch.ops.aten._weight_int4pack_mm(x2, ws[i % len(ws)][0], 128, ws[i % len(ws)][1])

    def layer_calls(kind: str) -> Callable[[], Callable[[int], Any]]:  # the layer as built, called as is
        def build() -> Callable[[int], Any]:
            layers = w.get(kind)
            return lambda i: layers[i % len(layers)](x)
        return build

    return {
        "bf16 F.linear (cuBLAS)": ("bf16", bf16_cublas),
        "bf16 compiled (coord. descent)": ("bf16", bf16_compiled),
        "bf16 Triton (best swept)": ("bf16", bf16_triton),
        "bf16 gemv_linear (tuned, cuBLAS allowed)": ("bf16", bf16_routed),
        "int8 compiled (PyTorch forward)": ("int8", int8_layer("torch", compile_=True)),
        "int8 Triton (layer, tuned)": ("int8", int8_layer("triton", compile_=False)),
        "int4 layer compiled (as loaded)": ("int4", int4_compiled("int4")),
        "int4 layer compiled (dequant form)": ("int4dequant", int4_compiled("int4dequant")),
        "int4 tinygemm (_weight_int4pack_mm)": ("int4pack", int4_tinygemm),
        "int4 Triton runs layout (layer, tuned)": ("int4triton", layer_calls("int4triton")),
        "int4 gemlite A16W4 (g128)": ("gemlite4", layer_calls("gemlite4")),
        "int8 gemlite A16W8": ("gemlite8", layer_calls("gemlite8")),
    }


def sweep(w: Weights, x: torch.Tensor, kind: str, *, device: str) -> dict[str, Any]:
    """Every Triton candidate config of this shape timed alone: config -> us per call (or error)."""
    from llm.kernels.gemv import launch_gemv
    from llm.kernels.gemv_configs import candidates

    rows = x.numel() // x.shape[-1]
    x2 = x.reshape(rows, -1)
    out: dict[str, Any] = {}
    if kind == "int4triton":
        return sweep_int4_runs(w, x2, device=device)
    for config in candidates(rows, w.n, w.k, int8=kind == "int8"):
        try:
            if kind == "int8":
                layers = w.get("int8")
                call = lambda i, c=config: launch_gemv(x2, layers[i % len(layers)].weight,  # noqa: E731
                                                       layers[i % len(layers)].scales, None, c)
            else:
                ws = w.get("bf16")
                call = lambda i, c=config: launch_gemv(x2, ws[i % len(ws)], None, None, c)  # noqa: E731
            out[str(config)] = time_calls(call, device=device) * 1e6
        except Exception as e:  # one config failing must not stop the sweep
            out[str(config)] = f"error: {type(e).__name__}: {str(e)[:200]}"
    return out


def sweep_int4_runs(w: Weights, x2: torch.Tensor, *, device: str) -> dict[str, Any]:
    """Every tile the INT4 runs op may pick for these rows: the row kernel's (1 row,
    ``ROW_CONFIGS``), the 2-4 row kernel's (``ROWS_CONFIGS``) or the GEMM's (9-256 rows,
    ``gemm_options``, dequantize + cuBLAS among them) -> us per call."""
    from llm.kernels import int4_gemv_op as op

    layers, rows, out = w.get("int4triton"), x2.shape[0], {}
    if layers[0].kernel != "triton":  # e.g. float32 on CPU: the layer kept its "dequant" form
        return {"skipped": f"the layer is in its {layers[0].kernel!r} form"}
    if rows <= 4:
        configs: list[Any] = list(op.ROW_CONFIGS if rows == 1 else op.ROWS_CONFIGS)
        scratch = torch.empty((rows, w.n), dtype=x2.dtype, device=device)
        launch = lambda layer, c: op._launch_rows(x2, layer.weight, layer.scales_zeros, None,  # noqa: E731
                                                  group_size=128, out=scratch, config=c)
    elif op.MAX_ROW_KERNEL_ROWS < rows <= op.MAX_GEMM_ROWS:
        configs = op.gemm_options(rows, 128, op.GEMM_CONFIGS + op.SPLIT_GEMM_CONFIGS)
        launch = lambda layer, c: op._launch_gemm(x2, layer.weight, layer.scales_zeros, None,  # noqa: E731
                                                  group_size=128, config=c)
    else:
        return {}
    for config in configs:
        def call(i: int, config: Any = config) -> Any:
            return launch(layers[i % len(layers)], config)
        try:
            out[str(config)] = time_calls(call, device=device) * 1e6
        except Exception as e:  # one tile failing must not stop the sweep
            out[str(config)] = f"error: {type(e).__name__}: {str(e)[:200]}"
    return out


def bench_shape(name: str, n: int, k: int, rows: int, *, device: str, dtype: torch.dtype, bandwidth: float | None,
                do_sweep: bool) -> dict[str, Any]:
    torch._dynamo.reset()  # each shape compiles afresh: no recompile limit reached across the 10 cases
    w = Weights(n, k, device=device, dtype=dtype)
    x = torch.randn(rows, 1, k, device=device, dtype=dtype)  # (batch, one token, hidden) as in the decode step
    result: dict[str, Any] = {"N": n, "K": k, "rows": rows, "variants": {}}
    with torch.inference_mode():
        best: dict[str, str] = {}
        if do_sweep:
            result["sweep"] = {kind: sweep(w, x, kind, device=device) for kind in ("bf16", "int8", "int4triton")}
            for kind, times in list(result["sweep"].items())[:2]:  # bf16, int8: the configs variants() takes
                timed = {c: t for c, t in times.items() if isinstance(t, float)}
                if timed:
                    best[kind] = min(timed, key=timed.get)
        for label, (kind, build) in variants(w, x, best).items():
            try:
                seconds = time_calls(build(), device=device)
                size = weight_size(w.get(kind)[0])
                gbs = size / seconds / 1e9
                result["variants"][label] = {"us": seconds * 1e6, "bytes": size, "gb_s": gbs,
                                             "share_of_copy": size / seconds / bandwidth if bandwidth else None}
            except Exception as e:  # report and go on with the next variant
                result["variants"][label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  {name} M={rows} {label}: {result['variants'][label]}", flush=True)
    del w
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def best_configs(results: list[dict[str, Any]]) -> dict[str, str]:
    """``TUNED`` entries: (kind, rows, N, K) -> fastest swept config, or "torch" for a bf16 shape
    where cuBLAS beat every Triton config."""
    best = {}
    for r in results:
        for kind, times in r.get("sweep", {}).items():
            timed = {c: t for c, t in times.items() if isinstance(t, float)}
            if not timed:
                continue
            key = ("int8" if kind == "int8" else "float", r["rows"], r["N"], r["K"])
            winner = min(timed, key=timed.get)
            cublas = r["variants"].get("bf16 F.linear (cuBLAS)", {}).get("us")
            if kind == "bf16" and cublas is not None and cublas < timed[winner]:
                winner = "torch"
            best[repr(key)] = winner
    return best


def markdown(results: list[dict[str, Any]], bandwidth: float | None, device_name: str) -> str:
    labels = list(results[0]["variants"]) if results else []
    lines = [f"# Decode GEMVs, ChatGLM3-6B shapes ({device_name})", "",
             f"Copy bandwidth (1 GiB copy_, read + write): {bandwidth / 1e9:.0f} GB/s" if bandwidth else "No CUDA.",
             "", "Each cell: us per call / GB/s of weight read / share of copy bandwidth.", "",
             "| shape | M | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for r in results:
        cells = []
        for label in labels:
            v = r["variants"][label]
            if "error" in v:
                cells.append("error")
            else:
                share = f" / {v['share_of_copy']:.2f}" if v.get("share_of_copy") else ""
                cells.append(f"{v['us']:.1f} / {v['gb_s']:.0f}{share}")
        lines.append(f"| {r['name']} ({r['N']}x{r['K']}) | {r['rows']} | " + " | ".join(cells) + " |")
    errors = [f"- {r['name']} M={r['rows']} {label}: {v['error']}" for r in results
              for label, v in r["variants"].items() if "error" in v]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def shapes_setup(args: Any) -> tuple[str, torch.dtype, dict[str, tuple[int, int]], float | None]:
    """``(device, dtype, shapes, copy bandwidth)`` for ``--tiny`` / ``--shapes``, seed set: the 6B
    shapes in bf16 on CUDA, the tiny ones in float32 on CPU (to check a script)."""
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = TINY_SHAPES if args.tiny else {s: SHAPES[s] for s in args.shapes.split(",")}
    torch.manual_seed(0)
    return device, dtype, shapes, copy_bandwidth(device)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,16", help="comma-separated batch rows M")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated among {', '.join(SHAPES)}")
    p.add_argument("--no-sweep", action="store_true", help="skip timing every Triton candidate config")
    args = p.parse_args()
    device, dtype, shapes, bandwidth = shapes_setup(args)
    results = []
    for name, (n, k) in shapes.items():
        for rows in (int(r) for r in args.rows.split(",")):
            r = bench_shape(name, n, k, rows, device=device, dtype=dtype, bandwidth=bandwidth,
                            do_sweep=not args.no_sweep)
            results.append({"name": name, **r})
    from llm.kernels import chosen_configs

    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    result = {"device": device_name, "bandwidth_copy": bandwidth, "calls_per_graph": CALLS, "results": results,
              "chosen_configs": chosen_configs(), "best_swept_configs": best_configs(results)}
    write_result(args.out, "gemv", result)
    md = markdown(results, bandwidth, device_name)
    Path(args.out, "gemv.md").write_text(md, encoding="utf-8")
    rows = [(f"{r['name']} M={r['rows']}", label, v.get("us", v.get("error", "")[:60]), v.get("gb_s", ""),
             v.get("share_of_copy") or "") for r in results for label, v in r["variants"].items()]
    print_table(f"decode GEMVs on {device_name}", rows, ("shape", "variant", "us", "GB/s", "share of copy"))
    print("\nTUNED entries (llm/kernels/gemv_configs.py):")
    for key, config in result["best_swept_configs"].items():
        print(f"    {key}: {config!r},")


if __name__ == "__main__":
    main()
