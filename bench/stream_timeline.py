"""Where one ``ChatGLM.stream`` call's time goes: host timestamps of its steps against the GPU's own.

    python -m bench.stream_timeline --kinds none int8 int4-triton --out DIR   # GPU machine
    python -m bench.stream_timeline --tiny                                    # check the script here

Why: ``bench.decode``'s tok/s counts 128 tokens over the whole stream, time to first token included,
and on the H200 INT8's first token (8.5 ms) came only 0.5 ms before bf16's (9.0 ms) although its
captured prompt pass read half the bytes (4.62 against 4.86 ms, run 26): ~4 ms of every stream is
neither prompt pass nor decode step. Per kind this streams ``--repeat`` answers of 128 tokens and
records, without adding a sync, when the prompt was tokenized, the worker started and entered
``graph_generate``, emptied the cache, staged the prompt pass's inputs, launched and left the pass,
and handed each token to the stream (``QueueStreamer.put``), and when the consumer got
its first and last piece; then it replays the captured prompt pass and decode step alone (CUDA
events). So: host work before the prompt pass, the pass itself, the first token's wait, the gap per
token against the replayed step, and the tail after the last token.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.common import char_tokenizer, parser, write_result
from bench.decode import QUESTION, build_model, free_model

NEW_TOKENS = 128


class Timeline:
    """Host timestamps (``time.perf_counter``) of named steps, per stream call."""

    def __init__(self) -> None:
        self.marks: dict[str, list[float]] = {}

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, []).append(time.perf_counter())

    def wrap(self, owner: Any, name: str) -> None:
        """Mark ``name>`` and ``name<`` around every call of ``owner.name``."""
        inner: Callable[..., Any] = getattr(owner, name)

        def marked(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"{name}>")
            try:
                return inner(*args, **kwargs)
            finally:
                self.mark(f"{name}<")

        setattr(owner, name, marked)


def instrument(timeline: Timeline) -> None:
    """Mark the fast path's steps (those this checkout has), the worker's start, and every token
    handed to a stream."""
    import llm.chatglm as chatglm
    import llm.fast_decode as fast_decode
    import llm.fast_decode.decode_graph as decode_graph
    import llm.fast_decode.prefill as prefill
    import llm.streaming as streaming

    timeline.wrap(fast_decode, "graph_generate")
    timeline.wrap(chatglm.ChatGLM, "_generate_kwargs")
    for name in ("prefill", "take_tokens", "_decode_loop"):
        timeline.wrap(decode_graph, name)
    for name in ("empty_cache", "_fill_prefill"):
        if hasattr(prefill, name):
            timeline.wrap(prefill, name)
    submit = streaming.ModelWorker.submit

    def marked_submit(worker: Any, fn: Callable[[], None]) -> Any:
        timeline.mark("submit")

        def task() -> None:
            timeline.mark("worker starts")
            fn()

        return submit(worker, task)

    streaming.ModelWorker.submit = marked_submit  # type: ignore[method-assign]
    put = streaming.QueueStreamer.put

    def marked_put(streamer: Any, value: torch.Tensor) -> None:
        timeline.mark("put")
        put(streamer, value)

    streaming.QueueStreamer.put = marked_put  # type: ignore[method-assign]


def one_stream(llm: Any, timeline: Timeline) -> dict[str, Any]:
    """One answer of ``NEW_TOKENS`` tokens: ms from the call to each step (first marks only)."""
    timeline.marks.clear()
    start = time.perf_counter()
    pieces = [time.perf_counter() for _ in llm.stream(QUESTION, min_new_tokens=NEW_TOKENS)]
    end = time.perf_counter()
    ms = lambda t: round((t - start) * 1e3, 3)  # noqa: E731
    puts = timeline.marks.pop("put", [])
    row: dict[str, Any] = {name: ms(times[0]) for name, times in timeline.marks.items()}
    row.update(first_piece=ms(pieces[0]), last_piece=ms(pieces[-1]), total=ms(end), pieces=len(pieces))
    if len(puts) > 3:  # the first put is the prompt, the second the first token
        row.update(prompt_put=ms(puts[0]), first_token_put=ms(puts[1]), last_token_put=ms(puts[-1]),
                   token_gap_us=round(statistics.median(b - a for a, b in zip(puts[2:], puts[3:])) * 1e6, 1))
    return row


def replayed_ms(model: Any) -> dict[str, Any]:
    """The captured prompt passes (per bucket) and decode step replayed alone, ms (CUDA only)."""
    from bench.prefill import replay_ms
    from llm.fast_decode import fast_decode_state

    graphs = [g for g in fast_decode_state(model).graphs.values() if g.graph is not None]
    if not graphs:
        return {}
    g = graphs[0]
    prompts = {str(bucket): replay_ms(p.graph, repeat=20) for bucket, p in g.prefills.items() if p.graph is not None}
    return {"prompt_pass_ms": prompts, "decode_step_ms": replay_ms(g.graph, repeat=50)}


def bench_kind(kind: str, *, shape: str, device: str, dtype: torch.dtype, tokenizer: Any, repeat: int,
               timeline: Timeline) -> dict[str, Any]:
    from llm import ChatGLM

    free_model()
    from bench.common import SHAPES

    group = min(128, SHAPES[shape]["hidden_size"])  # --tiny: hidden 64, and INT4 groups must divide it
    model = build_model(shape, device=device, dtype=dtype, tokenizer=tokenizer, kind=kind, group_size=group)
    llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=NEW_TOKENS)
    for _ in range(3):  # compile, capture, warm
        one_stream(llm, timeline)
    runs = [one_stream(llm, timeline) for _ in range(repeat)]
    total = statistics.median(r["total"] for r in runs)
    row = {"runs": runs, "total_ms": total, "tok_s": NEW_TOKENS / total * 1e3}
    if device == "cuda":
        row.update(replayed_ms(model))
    del llm, model
    return row


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--kinds", nargs="+", default=["none", "int8", "int4-triton"])
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    shape, device, dtype = (args.shape, "cuda", torch.bfloat16) if cuda else ("tiny", "cpu", torch.float32)
    from bench.common import SHAPES

    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    timeline = Timeline()
    instrument(timeline)
    rows = {}
    for kind in args.kinds:
        rows[kind] = bench_kind(kind, shape=shape, device=device, dtype=dtype, tokenizer=tokenizer,
                                repeat=args.repeat, timeline=timeline)
        last = rows[kind]["runs"][-1]
        print(f"{kind}: {rows[kind]['tok_s']:.1f} tok/s; last run {last}; "
              f"replayed {({k: v for k, v in rows[kind].items() if k.endswith('_ms') and k != 'total_ms'})}",
              flush=True)
    path = write_result(args.out, f"stream_timeline_{shape}", {"shape": shape, "new_tokens": NEW_TOKENS, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
