"""Programmatic dependent launch variants of the decode graph: step time, streamed tok/s, greedy text.

    python -m bench.pdl --out DIR                       # GPU machine: int8 and bf16, off / ours / all
    python -m bench.pdl --kinds int8 --variants off all all   # the same variant twice = two compiles
    python -m bench.pdl --tiny                          # check the script on CPU (nothing to time)

Why: ``FastDecodeOptions.pdl`` switches PDL for glmkb's Triton kernels ("ours") and Inductor's
together ("all"); this script also times "ours" alone (Inductor's compile option withheld), so
the two contributions are apart (run 18, docs/PERFORMANCE.md). Per variant, on one model per
kind: one captured decode step replayed alone and back to back (CUDA events), ``ChatGLM.stream``
tokens/s (median of ``--repeat``), whether the greedy text equals the first variant's, and
whether the graph's replays agree with each other (a race would show there first).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from bench.common import char_tokenizer, parser, print_table, replay_seconds, write_result
from bench.decode import QUESTION

VARIANTS = {"off": (False, False), "ours": (True, False), "all": (True, True)}  # (pdl, Inductor's too)


def back_to_back_us(graph: Any, *, replays: int = 100) -> float:
    """Microseconds per replay with ``replays`` replays queued back to back (as streaming runs them)."""
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays * 1e3


def time_variant(model: Any, tokenizer: Any, label: str, *, new_tokens: int, repeat: int) -> dict[str, Any]:
    import llm.fast_decode.decode_graph as decode_graph
    from llm import ChatGLM
    from llm.fast_decode import FastDecodeOptions, fast_decode_state

    pdl, inductor = VARIANTS[label]
    has_option = decode_graph._inductor_has_pdl
    if not inductor:
        decode_graph._inductor_has_pdl = lambda: False  # "ours": Inductor's kernels launch as before
    try:
        fast_decode_state(model).graphs.clear()
        llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=new_tokens,
                      fast_decode_options=FastDecodeOptions(pdl=pdl))
        started = time.perf_counter()
        text = llm.invoke(QUESTION, min_new_tokens=new_tokens)  # builds, compiles and captures
        build_s = time.perf_counter() - started
    finally:
        decode_graph._inductor_has_pdl = has_option
    graph = [g for g in fast_decode_state(model).graphs.values() if g.graph is not None][-1].graph
    runs, texts = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        texts.append("".join(llm.stream(QUESTION, min_new_tokens=new_tokens)))
        runs.append(time.perf_counter() - started)
    return {"pdl": pdl, "inductor_pdl": inductor and has_option(), "build_s": build_s,
            "single_us": replay_seconds(graph, replays=50, skip=3) * 1e6,
            "back_to_back_us": min(back_to_back_us(graph) for _ in range(3)),
            "stream_tok_s": new_tokens / statistics.median(runs), "text": text,
            "replays_agree": all(t == text for t in texts)}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--kinds", nargs="+", default=["int8", "none"], choices=("none", "int8", "int4"))
    p.add_argument("--variants", nargs="+", default=["off", "ours", "all"], choices=tuple(VARIANTS))
    p.add_argument("--new-tokens", type=int, default=128)
    args = p.parse_args()
    if args.tiny or not torch.cuda.is_available():
        print("pdl: no CUDA device (or --tiny), nothing to time (PDL is a Hopper launch attribute)")
        return
    from bench.common import SHAPES
    from bench.decode import build_model, free_model

    tokenizer = char_tokenizer(SHAPES[args.shape]["vocab_size"])
    result: dict[str, Any] = {"shape": args.shape, "new_tokens": args.new_tokens, "kinds": {}}
    for kind in args.kinds:
        free_model()
        model = build_model(args.shape, device="cuda", dtype=torch.bfloat16, tokenizer=tokenizer, kind=kind,
                            group_size=128)
        rows = []
        for label in args.variants:
            r = time_variant(model, tokenizer, label, new_tokens=args.new_tokens, repeat=args.repeat)
            r["same_text_as_first"] = r["text"] == (rows[0][1]["text"] if rows else r["text"])
            rows.append((label, r))
            result["kinds"].setdefault(kind, []).append({"variant": label, **r})
            write_result(args.out, f"pdl_{args.shape}", result)
        print_table(f"{kind}: PDL variants, {args.shape}", [
            (label, r["single_us"], r["back_to_back_us"], r["stream_tok_s"], r["same_text_as_first"],
             r["replays_agree"]) for label, r in rows],
            ("variant", "step us", "back to back us", "stream tok/s", "same text", "replays agree"))
        del model


if __name__ == "__main__":
    main()
