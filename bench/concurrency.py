"""Concurrent streams on one model: aggregate tokens/s and time to first token (llm.batching).

    python -m bench.concurrency --shape chatglm3-6b              # on the GPU machine
    python -m bench.concurrency --tiny --fast-on-cpu --new-tokens 16   # check the script here

For 1, 4, 16 and 32 concurrent ``ChatGLM.stream`` calls (one thread each, what the API's stream
threads do; distinct prompts, ``--new-tokens`` tokens each, forced with ``min_new_tokens``) on a
random-initialised model of the real shape: aggregate tokens/s (all tokens / wall time from the
common start to the last token), p50/p95 time to first token over every stream, and the ratio of
the aggregate to one stream alone. Requests that find the model busy start together as one batch
(``llm.max_concurrent_batch``, ``--max-batch``); each level runs one unmeasured wave first so
its batch shapes are compiled and captured before the timed waves (``--repeat``).

``--stagger-ms`` spreads the arrivals (stream ``i`` starts ``i`` times that after the first; TTFT
from each stream's own start): a running generation then yields to the newcomers at a token
(``llm.batch_yield.YIELD_AFTER_S``), or with ``--no-yield`` they wait for it to end, as before session 26.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import torch

from bench.common import SHAPES, char_tokenizer, parser, percentile, print_table, sync, write_result

QUESTION = "请用三句话介绍曹操、刘备和孙权三人之间的关系。"


def prompts(count: int) -> list[str]:
    """Distinct prompts of similar length (each row of a batch is its own request)."""
    return [f"第{i + 1}位用户问：{QUESTION}" for i in range(count)]


def wave(llm: Any, questions: list[str], *, new_tokens: int, stagger_s: float = 0.0) -> list[dict[str, float]]:
    """All ``questions`` streamed from their own threads, stream ``i`` starting ``i * stagger_s`` after
    the common start; per stream TTFT (from its own start), end (from the common start) and chunks."""
    start_line = threading.Barrier(len(questions) + 1)
    results: list[dict[str, float]] = [{} for _ in questions]
    errors: list[BaseException] = []
    t0 = [0.0]

    def run(i: int, question: str) -> None:
        try:
            start_line.wait()
            time.sleep(i * stagger_s)
            own = time.perf_counter()
            first = None
            chunks = 0
            for _chunk in llm.stream(question, min_new_tokens=new_tokens, max_new_tokens=new_tokens):
                if first is None:
                    first = time.perf_counter()
                chunks += 1
            end = time.perf_counter()
            results[i] = {"ttft_s": (first or end) - own, "end_s": end - t0[0], "start_s": own - t0[0],
                          "chunks": chunks}
        except BaseException as e:  # reported after the wave
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, q)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
    sync()
    t0[0] = time.perf_counter()
    start_line.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def bench_level(llm: Any, streams: int, *, new_tokens: int, repeat: int, stagger_s: float = 0.0) -> dict[str, Any]:
    questions = prompts(streams)
    warm_s = time.perf_counter()
    if stagger_s:  # staggered arrivals batch in any size up to the level's: compile and capture each first
        for size in sorted({min(streams, 1 << i) for i in range(streams.bit_length() + 1)}):
            wave(llm, questions[:size], new_tokens=new_tokens)
    wave(llm, questions, new_tokens=new_tokens, stagger_s=stagger_s)  # compile/capture this level's batch shapes
    warm_s = time.perf_counter() - warm_s
    runs = [wave(llm, questions, new_tokens=new_tokens, stagger_s=stagger_s) for _ in range(repeat)]
    walls = [max(r["end_s"] for r in run) for run in runs]
    ttfts = [r["ttft_s"] for run in runs for r in run]
    wall = statistics.median(walls)
    return {
        "streams": streams,
        "warm_wave_s": warm_s,
        "wall_s": wall,
        "wall_times_s": walls,
        "aggregate_tok_s": streams * new_tokens / wall,
        "per_stream_tok_s": new_tokens / statistics.median(
            r["end_s"] - r["start_s"] - r["ttft_s"] for run in runs for r in run),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_max_s": max(ttfts),
        "waves": [{"wall_s": w, "ttft_p50_s": percentile([r["ttft_s"] for r in run], 50),
                   "ttft_p95_s": percentile([r["ttft_s"] for r in run], 95)}
                  for w, run in zip(walls, runs, strict=True)],
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--streams", default="1,4,16,32", help="comma-separated concurrency levels")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--max-batch", type=int, default=16, help="llm.max_concurrent_batch")
    p.add_argument("--quantization", choices=("none", "int8", "int4", "int4-triton"), default="none")
    p.add_argument("--fast-on-cpu", action="store_true", help="(tiny) run the fast path on CPU, uncompiled")
    p.add_argument("--sampled", action="store_true",
                   help="the settings' default sampling (temperature 0.8, top_p 0.8; generate's top-k 50), not greedy")
    p.add_argument("--pytorch-choice", action="store_true",
                   help="with --sampled: FastDecodeOptions.sampling_kernel off (the token choice in PyTorch)")
    p.add_argument("--stagger-ms", type=float, default=0.0,
                   help="stream i starts i x this after the others (arrivals spread out, not a burst)")
    p.add_argument("--no-yield", action="store_true",
                   help="running generations never yield to waiting requests (rows join at batch ends only)")
    p.set_defaults(repeat=3)
    args = p.parse_args()

    from bench.decode import build_model, default_sampling
    from llm import ChatGLM, batch_yield
    from llm.fast_decode import FastDecodeOptions, fast_decode_state

    if args.no_yield:
        batch_yield.YIELD_AFTER_S = float("inf")
    shape = "tiny" if args.tiny else args.shape
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    # bench.decode's model: same seed (and quantization) as the decode benchmark.
    name = f"concurrency_{shape}" + ("" if args.quantization == "none" else f"_{args.quantization}")
    name += ("_sampled" if args.sampled else "") + ("_pytorch" if args.pytorch_choice else "")
    name += (f"_stagger{args.stagger_ms:g}ms" if args.stagger_ms else "") + ("_no_yield" if args.no_yield else "")
    sampling = default_sampling() if args.sampled else {"temperature": 0.0}
    model = build_model(shape, device=device, dtype=dtype, tokenizer=tokenizer, kind=args.quantization,
                        group_size=32 if args.tiny else 128)  # the tiny shape: in_features 64
    options = FastDecodeOptions(on_cpu=args.fast_on_cpu, sampling_kernel=not args.pytorch_choice)
    llm = ChatGLM(model=model, tokenizer=tokenizer, max_new_tokens=args.new_tokens, max_concurrent_batch=args.max_batch,
                  max_queue=max(64, 2 * args.max_batch), fast_decode_options=options, **sampling)
    levels = [int(n) for n in args.streams.split(",")]
    result: dict[str, Any] = {"shape": shape, "device": device, "quantization": args.quantization, **sampling,
                              "sampling_kernel": options.sampling_kernel,
                              "new_tokens": args.new_tokens, "max_batch": args.max_batch,
                              "stagger_ms": args.stagger_ms,
                              "yield_after_s": None if args.no_yield else batch_yield.YIELD_AFTER_S,
                              "fast_decode_active": llm.fast_decode_active, "levels": {}}
    for streams in levels:
        result["levels"][str(streams)] = bench_level(llm, streams, new_tokens=args.new_tokens, repeat=args.repeat,
                                                     stagger_s=args.stagger_ms / 1e3)
        result["capture_times_s"] = dict(fast_decode_state(model).capture_times)
        write_result(args.out, name, result)
        level = result["levels"][str(streams)]
        print(f"{streams} streams: {level['aggregate_tok_s']:.1f} tok/s, TTFT p50 {level['ttft_p50_s'] * 1e3:.0f} ms "
              f"p95 {level['ttft_p95_s'] * 1e3:.0f} ms (warm wave {level['warm_wave_s']:.1f} s)", flush=True)
    solo = result["levels"].get("1", {}).get("aggregate_tok_s")
    rows = []
    for streams, level in result["levels"].items():
        level["aggregate_over_one_stream"] = level["aggregate_tok_s"] / solo if solo else None
        rows.append((streams, level["aggregate_tok_s"], level["aggregate_over_one_stream"], level["per_stream_tok_s"],
                     level["ttft_p50_s"] * 1e3, level["ttft_p95_s"] * 1e3))
    write_result(args.out, name, result)
    print_table(f"concurrent ChatGLM.stream, {shape} on {device} ({args.new_tokens} new tokens each, "
                f"max batch {args.max_batch}, {args.quantization}, {sampling})", rows,
                ("streams", "aggregate tok/s", "x one stream", "per-stream tok/s", "TTFT p50 ms", "TTFT p95 ms"))


if __name__ == "__main__":
    main()
