"""Every kernel of one captured decode step, timed by the CUDA profiler (bf16 / INT8 / INT4).

    python -m bench.step_profile --out DIR        # GPU machine (bash bench/run_all.sh stepprof)
    python -m bench.step_profile --tiny           # check the script on CPU (no kernels to list)

Why: the kernel-group table (``bench.kernels``) times the GEMVs on their own and leaves "the
rest" of a step (norms, rotary, cache writes, attention, residual adds, the token choice) as one
difference of ~1 ms per token. Here ``torch.profiler`` records the kernels of real decode-graph
replays (CUPTI traces the kernel nodes of a CUDA graph), so each of them gets a name, a count per
step and a duration, and the step's wall time minus the kernels' sum is the launch gaps.
Per kind: ChatGLM3-6B shape, one warmed ``ChatGLM.stream`` (which captures the graph), then
``--replays`` replays of the step profiled; kernels grouped by name, sorted by time per step,
and summed per category (GEMV, attention, Inductor reductions / pointwise, other).

With programmatic dependent launch (``FastDecodeOptions.pdl``, the default on Hopper) a kernel's
recorded duration includes the time its programs waited after an early start, so per-kernel
times overlap and the gaps come out negative: read kernel times from ``--pdl off``; the step
time is right either way.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import torch

from bench.common import (
    char_tokenizer,
    parser,
    print_table,
    replay_seconds,
    write_result,
)
from bench.decode import QUESTION

CATEGORIES = (  # first match wins; names as CUPTI reports them (Inductor's names mention the ops they
    # fuse, e.g. "..._gemv_mean_mul_pow_rsqrt..." is an RMSNorm next to a glmkb::gemv call)
    ("GEMV / matmul", re.compile(r"^_gemv|tinygemm|^nvjet|gemm|cutlass|cublas|splitK|^sm\d\d_", re.IGNORECASE)),
    ("attention (Triton)", re.compile(r"^_flash_decode")),
    ("reduction (Inductor)", re.compile(r"^triton_(red|per)_")),
    ("pointwise (Inductor)", re.compile(r"^triton_poi_")),
)


def category(name: str) -> str:
    return next((label for label, pattern in CATEGORIES if pattern.search(name)), "other")


def kernel_table(prof: Any, *, steps: int) -> list[dict[str, Any]]:
    """Kernels by name: count per step and microseconds per step (device time)."""
    per: dict[str, list[float]] = defaultdict(list)
    for event in prof.events():
        if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        us = getattr(event, "device_time", None) or getattr(event, "cuda_time", 0.0)
        per[event.name].append(float(us))
    rows = [{"name": name, "category": category(name), "per_step": len(times) / steps,
             "us_per_step": sum(times) / steps, "us_each": sum(times) / len(times)} for name, times in per.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])


def kernels_by_launch(prof: Any, *, steps: int, path: str) -> list[dict[str, Any]]:
    """Kernels by (name, grid, block) from the profiler's trace: the same kernel at different
    shapes (e.g. one GEMV kernel for q/k/v, o_proj, gate_up, down and the LM head) apart."""
    import json

    prof.export_chrome_trace(path)
    with open(path, encoding="utf-8") as f:
        events = json.load(f).get("traceEvents", [])
    per: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") != "kernel":
            continue
        args = e.get("args", {})
        per[(e.get("name", "?"), str(args.get("grid")), str(args.get("block")))].append(float(e.get("dur", 0.0)))
    rows = [{"name": n, "grid": g, "block": b, "per_step": len(t) / steps, "us_each": sum(t) / len(t),
             "us_per_step": sum(t) / steps} for (n, g, b), t in per.items()]
    return sorted(rows, key=lambda r: -r["us_per_step"])


def profile_graph(graph: Any, *, replays: int) -> Any:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    return prof


def profile_kind(
    kind: str, *, shape: str, tokenizer: Any, replays: int, group_size: int, gemv_kernel: str = "auto",
    pdl: bool = True,
) -> dict[str, Any]:
    from bench.decode import build_model, free_model, layer_kernels
    from llm import ChatGLM
    from llm.fast_decode import FastDecodeOptions, fast_decode_state

    free_model()
    model = build_model(shape, device="cuda", dtype=torch.bfloat16, tokenizer=tokenizer, kind=kind,
                        group_size=group_size)
    llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=32,
                  fast_decode_options=FastDecodeOptions(gemv_kernel=gemv_kernel, pdl=pdl))
    for _ in llm.stream(QUESTION, min_new_tokens=32):
        pass
    graphs = [g for g in fast_decode_state(model).graphs.values() if getattr(g, "graph", None) is not None]
    if not graphs:
        return {"error": "no captured decode graph", "report": llm.fast_decode_report}
    g = graphs[-1]
    step_s = replay_seconds(g.graph, replays=50, skip=3)
    prof = profile_graph(g.graph, replays=replays)
    rows = kernel_table(prof, steps=replays)
    import os
    import tempfile

    from llm.kernels import chosen_configs

    launches = kernels_by_launch(prof, steps=replays, path=os.path.join(tempfile.mkdtemp(), "trace.json"))
    by_category: dict[str, dict[str, float]] = defaultdict(lambda: {"us": 0.0, "kernels": 0.0})
    for r in rows:
        by_category[r["category"]]["us"] += r["us_per_step"]
        by_category[r["category"]]["kernels"] += r["per_step"]
    kernels_us = sum(r["us_per_step"] for r in rows)
    result = {"kind": kind, "gemv_kernel": gemv_kernel, "pdl": pdl, "layer_kernels": layer_kernels(model), "step_us": step_s * 1e6,
              "kernels_us": kernels_us, "gaps_us": step_s * 1e6 - kernels_us,
              "kernels_per_step": sum(r["per_step"] for r in rows), "by_category": dict(by_category), "kernels": rows,
              "launches": launches[:40], "gemv_configs": chosen_configs()}
    del llm, model, g, graphs
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--kinds", nargs="+", default=["none", "int8", "int4-triton"],
                   choices=("none", "int8", "int4", "int4-triton"),
                   help="int4: tinygemm's layout; int4-triton: glmkb's Triton kernels (the default on Hopper)")
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--gemv-kernel", nargs="+", default=["auto"], choices=("auto", "triton", "torch"),
                   help="FastDecodeOptions.gemv_kernel: one profile per kind and value")
    p.add_argument("--pdl", nargs="+", default=["on"], choices=("on", "off"),
                   help="FastDecodeOptions.pdl (programmatic dependent launch): one profile per kind and value")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("step_profile: no CUDA device, nothing to profile (the decode graph is CUDA-only)")
        return
    from bench.common import SHAPES

    tokenizer = char_tokenizer(SHAPES[args.shape]["vocab_size"])
    result: dict[str, Any] = {"shape": args.shape, "replays": args.replays, "kinds": {}}
    for kind, gemv_kernel, pdl in [(k, g, d) for k in args.kinds for g in args.gemv_kernel for d in args.pdl]:
        r = profile_kind(kind, shape=args.shape, tokenizer=tokenizer, replays=args.replays, group_size=args.group_size,
                         gemv_kernel=gemv_kernel, pdl=pdl == "on")
        kind = kind if gemv_kernel == "auto" else f"{kind}/gemv-{gemv_kernel}"
        kind = kind if pdl == "on" else f"{kind}/pdl-off"
        result["kinds"][kind] = r
        write_result(args.out, f"step_profile_{args.shape}", result)
        if "error" in r:
            print(f"{kind}: {r['error']}", flush=True)
            continue
        print(f"\n{kind}: step {r['step_us']:.0f} us ({1e6 / r['step_us']:.1f} tok/s), kernels {r['kernels_us']:.0f} us "
              f"in {r['kernels_per_step']:.0f} launches, gaps {r['gaps_us']:.0f} us; {r['layer_kernels']}", flush=True)
        print_table(f"{kind}: by category", [(c, v["kernels"], v["us"]) for c, v in r["by_category"].items()],
                    ("category", "kernels/step", "us/step"))
        print(f"GEMV configs: {r['gemv_configs']}")
        print_table(f"{kind}: top launches by grid", [(x["name"][:60], x["grid"], x["block"], x["per_step"], x["us_each"])
                                                      for x in r["launches"][:16]],
                    ("kernel", "grid", "block", "per step", "us each"))
        print_table(f"{kind}: top kernels", [(x["name"][:90], x["category"], x["per_step"], x["us_each"], x["us_per_step"])
                                             for x in r["kernels"][:45]],
                    ("kernel", "category", "per step", "us each", "us/step"))


if __name__ == "__main__":
    main()
