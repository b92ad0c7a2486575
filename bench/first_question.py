"""The first questions after a server starts: time to first token with and without the start-up warm-up.

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) TRITON_CACHE_DIR=$(mktemp -d) \\
        python -m bench.first_question --shape chatglm3-6b --mode cold --out DIR   # on the GPU machine
    (the same with --mode warm, in a process of its own with empty caches of its own)
    python -m bench.first_question --tiny --fast-on-cpu                            # check the script here

A server loads its model, then (``llm.warm_up``, ``app.warm_up``) compiles the fast path for a first
chat and a first knowledge-base answer in the background. ``--mode cold`` asks both questions at
once, as a server without the warm-up did; ``--mode warm`` runs ``app.warm_up.warm_up_llm`` with the
default settings first (timed), then asks them. The questions: a short chat, then a prompt of the
knowledge-base length the warm-up used (``first_question_lengths``), each with the default
``max_new_tokens`` (1,024), so their cache buckets are a default server's (2,048 and 4,096 slots).
Give each mode empty Inductor and Triton caches (the variables above): otherwise the second process
finds the first one's compiled code on disk and its cold start looks 3x shorter (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import SHAPES, char_tokenizer, parser, write_result

FALLBACK_LENGTHS = (32, 2183)  # first_question_lengths of the default settings (a count of characters)


def first_token_seconds(llm: Any, prompt: str) -> float:
    """Seconds from asking ``prompt`` to its first streamed piece (the rest of the answer is not waited for)."""
    started = time.perf_counter()
    stream = iter(llm.stream(prompt, min_new_tokens=2))
    next(stream)
    seconds = time.perf_counter() - started
    stream.close()  # type: ignore[attr-defined]
    return seconds


def question_of(llm: Any, tokens: int) -> str:
    """A prompt whose rendered chat is about ``tokens`` tokens long (the bench's character tokenizer)."""
    frame = len(llm.tokenizer(llm.render_prompt("问"), add_special_tokens=False)["input_ids"]) - 1
    return "问" * max(1, tokens - frame)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--mode", choices=("cold", "warm", "evict"), default="warm",
                   help="evict: as cold, but with one decode graph kept per model, then both questions again: "
                        "what a graph dropped by the least-recently-used limit costs to build again")
    p.add_argument("--fast-on-cpu", action="store_true", help="(tiny) run the fast path on CPU, uncompiled")
    args = p.parse_args()

    from bench.decode import build_model, default_sampling
    from llm import ChatGLM
    from llm.fast_decode import FastDecodeOptions

    shape = "tiny" if args.tiny else args.shape
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    started = time.perf_counter()
    model = build_model(shape, device=device, dtype=dtype, tokenizer=tokenizer, kind="none", group_size=128)
    llm = ChatGLM(model=model, tokenizer=tokenizer, max_new_tokens=1024, fast_decode_options=FastDecodeOptions(
        on_cpu=args.fast_on_cpu), **default_sampling())
    result: dict[str, Any] = {"shape": shape, "device": device, "mode": args.mode,
                              "load_s": time.perf_counter() - started, "fast_decode_active": llm.fast_decode_active}
    try:
        from app.warm_up import first_question_lengths, warm_up_llm
        from configs import Settings

        settings = Settings()
        lengths = first_question_lengths(settings, llm)
    except ImportError as e:  # the GPU image lacks a server dependency: the same lengths, by hand
        print(f"app.warm_up not importable here ({e}); lengths {FALLBACK_LENGTHS}")
        settings, lengths, warm_up_llm = None, FALLBACK_LENGTHS, None
    result["prompt_tokens"] = list(lengths)
    if args.mode == "warm":
        started = time.perf_counter()
        if warm_up_llm is not None:
            warm_up_llm(llm, settings)
        else:
            llm.warm_up(prompt_tokens=lengths)
        result["warm_up_s"] = time.perf_counter() - started
    if args.mode == "evict":
        import llm.fast_decode.decode_graph as decode_graph

        decode_graph.MAX_GRAPHS_PER_MODEL = 1
    result["first_token_s"] = {str(n): first_token_seconds(llm, question_of(llm, n)) for n in lengths}
    result["second_first_token_s"] = {str(n): first_token_seconds(llm, question_of(llm, n)) for n in lengths}
    if args.mode == "evict" and device == "cuda":  # the memory make_room counts on: a dropped graph's comes back
        from llm.fast_decode import fast_decode_state, graph_memory

        graphs = fast_decode_state(model).graphs
        held = sum(graph_memory.graph_bytes(model, key[:2]) for key in graphs)
        kept = graph_memory.free_bytes(torch.device(device))
        graphs.clear()
        result["dropped_graph_bytes"] = held
        result["freed_bytes"] = graph_memory.free_bytes(torch.device(device)) - kept
        print(f"dropping {held / 2**20:.0f} MiB of graphs freed {result['freed_bytes'] / 2**20:.0f} MiB")
    name = f"first_question_{shape}_{args.mode}"
    write_result(args.out, name, result)
    print(f"{args.mode}: warm-up {result.get('warm_up_s', 0.0):.1f} s; first TTFT "
          + ", ".join(f"{n} tokens {s:.3f} s" for n, s in result["first_token_s"].items())
          + "; again " + ", ".join(f"{s * 1e3:.1f} ms" for s in result["second_first_token_s"].values()), flush=True)


if __name__ == "__main__":
    main()
