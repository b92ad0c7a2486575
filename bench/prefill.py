"""The captured prompt pass per prompt-length bucket (bf16 / INT8 / INT4): milliseconds and its kernels.

    python -m bench.prefill --out DIR                 # GPU machine: none int8 int4, buckets 128/512/1024
    python -m bench.prefill --kinds int4 --out DIR
    python -m bench.prefill --ablation --out DIR      # each bucket also with the prompt pass's swaps off
    python -m bench.prefill --kinds int8 --int8-rows 64 --out DIR   # INT8 prompts past 64 tokens cast for cuBLAS
    python -m bench.prefill --tiny                    # check the script on CPU (nothing to time)

Why: the decode bench's 45-token prompt hides how the prompt pass grows with the prompt, and a
RAG prompt holds retrieved passages (hundreds to thousands of tokens). Run 19 found INT8 spending
60 % of a 128-token pass in PyTorch's int8 -> bf16 copy and INT4 growing linearly with the rows
on tinygemm (409 ms at 1024 tokens); docs/PERFORMANCE.md. Per kind, one model: four prompts of
~45 / ~65 / ~275 / ~945 tokens (buckets 64 / 128 / 512 / 1024 on one 1024-slot cache, one compile; the
first is bench.decode's, whose time to first token it is), each
bucket's captured graph replayed (median of ``--repeat``, CUDA events), and the kernels of the
smallest bucket by the CUDA profiler.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from bench.common import SHAPES, char_tokenizer, parser, print_table, sanguo_chunks, write_result
from bench.decode import QUESTION, build_model, free_model

PROMPT_CHARS = (0, 20, 230, 900)  # + QUESTION: buckets 64 (bench.decode's prompt), 128, 512, 1024, one 1024-slot cache


def replay_ms(graph: Any, *, repeat: int) -> float:
    """Median milliseconds of one replay of ``graph`` (CUDA events)."""
    graph.replay()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def bench_kind(kind: str, *, shape: str, tokenizer: Any, repeat: int, group_size: int, ablation: bool
               ) -> dict[str, Any]:
    from bench.step_profile import kernel_table, profile_graph
    from llm import ChatGLM
    from llm.fast_decode import fast_decode_state

    free_model()
    model = build_model(shape, device="cuda", dtype=torch.bfloat16, tokenizer=tokenizer, kind=kind,
                        group_size=group_size)
    llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=8)
    text = "".join(sanguo_chunks()).replace("\n", "")
    row: dict[str, Any] = {"bucket_ms": time_buckets(llm, text, repeat=repeat)}
    graphs = [g for g in fast_decode_state(model).graphs.values() if g.graph is not None]
    if not graphs:
        return {"error": "no captured decode graph", "report": llm.fast_decode_report}
    first = graphs[0].prefills[min(graphs[0].prefills)]
    prof = profile_graph(first.graph, replays=repeat)
    row["kernels_smallest_bucket"] = kernel_table(prof, steps=repeat)[:40]
    if ablation:  # the same decode graphs, their prompt passes captured again without session 11's swaps
        for g in graphs:
            g.prefills.clear()
            g.prompt_steps, g.steps, g.fused, g.packed = [], [], [], False
        row["bucket_ms_swaps_off"] = time_buckets(llm, text, repeat=repeat)
    del llm, model, graphs, first
    return row


def time_buckets(llm: Any, text: str, *, repeat: int) -> dict[str, float]:
    """Stream the four prompts (each twice: the first call of a bucket captures it), then replay
    every captured prompt pass: ``"cache slots/bucket"`` -> ms."""
    from llm.fast_decode import fast_decode_state

    for chars in PROMPT_CHARS:
        for _ in range(2):
            for _chunk in llm.stream(text[:chars] + QUESTION, min_new_tokens=8):
                pass
    out = {}
    for g in fast_decode_state(llm.model).graphs.values():
        for bucket, p in sorted(g.prefills.items()):
            if p.graph is not None:
                out[f"{g.mask.shape[-1]}/{bucket}"] = replay_ms(p.graph, repeat=repeat)
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--kinds", nargs="+", default=["none", "int8", "int4"], choices=("none", "int8", "int4"))
    p.add_argument("--int8-tiles", nargs="+", default=None,
                   help="int8_tiles.json files (bench.int8_tiles) whose winners replace gemv_configs.TUNED's INT8 tiles")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--int8-rows", type=int, default=None,
                   help="rows up to which INT8 layers take the Triton kernel (gemv_configs.INT8_GEMM_ROWS; "
                        "default 1024 since session 22; 64: past it, the cast for cuBLAS as before)")
    p.add_argument("--ablation", action="store_true",
                   help="also time each bucket with the prompt pass's swaps off (the model's own forward over the "
                        "whole cache: no narrowed attention, fused q/k/v, rotary, RMSNorm or SwiGLU kernels)")
    args = p.parse_args()
    if args.int8_tiles:
        from bench.int8_tiles import use_sweep

        use_sweep(args.int8_tiles)
    if not torch.cuda.is_available() or args.tiny:
        print("prefill: no CUDA device (or --tiny), nothing to time (the captured prompt pass is CUDA-only)")
        return
    tokenizer = char_tokenizer(SHAPES[args.shape]["vocab_size"])
    result: dict[str, Any] = {"shape": args.shape, "kinds": {}, "int8_rows": args.int8_rows}
    if args.int8_rows is not None:
        import llm.kernels.gemv_configs as gemv_configs

        gemv_configs.INT8_GEMM_ROWS = args.int8_rows
    for kind in args.kinds:
        r = bench_kind(kind, shape=args.shape, tokenizer=tokenizer, repeat=args.repeat, group_size=args.group_size,
                       ablation=args.ablation)
        result["kinds"][kind] = r
        write_result(args.out, f"prefill_{args.shape}", result)
        if "error" in r:
            print(f"{kind}: {r['error']}", flush=True)
            continue
        off = r.get("bucket_ms_swaps_off", {})
        print_table(f"{kind}: captured prompt pass (cache slots / bucket)",
                    [(b, ms, off.get(b, "")) for b, ms in r["bucket_ms"].items()], ("cache/bucket", "ms", "swaps off"))
        print_table(f"{kind}: kernels of the smallest bucket", [
            (x["name"][:90], x["per_step"], x["us_each"], x["us_per_step"]) for x in r["kernels_smallest_bucket"][:20]
        ], ("kernel", "per pass", "us each", "us/pass"))


if __name__ == "__main__":
    main()
