"""Decode speed, streaming overhead and the batched map stage of a ChatGLM-shaped model.

    python -m bench.decode --shape chatglm3-6b --map     # on the GPU machine
    python -m bench.decode --tiny --map --fast-on-cpu    # check the script here (CPU, tiny)

Measures, for one random-initialised model of the real shape (bf16 on CUDA):

- plain ``model.generate`` (DynamicCache, eager) on the calling thread: the baseline;
- ``ChatGLM.stream`` with ``fast_decode=False`` and with the default fast path (static cache +
  compiled decode step), plus raw ``generate`` with exactly the same keyword arguments on the
  same worker thread (``llm.streaming.run_generate``): the streaming overhead in tokens/s and
  time to first token;
- the first fast call of a shape (compile + CUDA graph capture), separately;
- with ``--map``: 16 prompts of 512 tokens, 128 new tokens each, through ``ChatGLM.batch``
  (one batched generate) against 16 one-by-one ``ChatGLM.invoke`` calls.

Every timed generation produces exactly ``--new-tokens`` tokens (``min_new_tokens``).

``--quantization none int8 int4 [int4-triton]`` measures instead, per kind, the same random model (same seed)
with glmkb's weight-only layers (``llm.quantization``): ``ChatGLM.stream`` tokens/s and TTFT on the
fast path, weight GiB on the GPU, and against the bf16 model the logits' relative error and
greedy top-1 agreement over a teacher-forced sequence (``quant_<shape>.json``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from bench.common import (
    parser,
    print_table,
    sanguo_chunks,
    sync,
    timed,
    weight_bytes,
    write_result,
)

NOMINAL_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
QUESTION = "话说天下大势，分久必合，合久必分。请用三句话介绍曹操、刘备和孙权三人之间的关系。"


def measured_bandwidth() -> float | None:
    """Device-to-device copy rate (bytes read + written per second), median of 10 copies of 2 GiB."""
    if not torch.cuda.is_available():
        return None
    x = torch.empty(2**30, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    times = [timed(lambda: y.copy_(x))[0] for _ in range(10)]
    del x, y
    return 2 * 2**31 / statistics.median(times)


def nominal_bandwidth() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((bw for key, bw in NOMINAL_BANDWIDTH.items() if key in name), None)


def stream_once(llm: Any, prompt: str, **kwargs: Any) -> dict[str, float]:
    """Time to the first chunk and to the end of one ``llm.stream`` call."""
    sync()
    start = time.perf_counter()
    first = None
    chunks = 0
    for _chunk in llm.stream(prompt, **kwargs):
        if first is None:
            first = time.perf_counter() - start
        chunks += 1
    total = time.perf_counter() - start
    return {"ttft_s": first or total, "total_s": total, "chunks": chunks}


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench_decode(model: Any, tokenizer: Any, *, new_tokens: int, repeat: int, options: Any = None) -> dict[str, Any]:
    from llm import ChatGLM
    from llm.fast_decode import DECODE_GRAPH, STATIC_CACHE, FastDecodeOptions, fast_decode_state
    from llm.model_device import on_model_device
    from llm.streaming import run_generate

    options = options or FastDecodeOptions()
    eager = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=new_tokens, fast_decode=False,
                    fast_decode_options=options)
    fast = eager.model_copy(update={"fast_decode": None})
    force = {"min_new_tokens": new_tokens}
    kwargs = eager._generate_kwargs([QUESTION], dict(force))
    prompt_tokens = int(kwargs["input_ids"].shape[1])
    first_kwargs = {**kwargs, "max_new_tokens": 1, "min_new_tokens": 1}
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeat": repeat}

    def generate_tok_s(fn: Any) -> tuple[float, list[float]]:
        fn()  # warm-up
        times = [timed(fn)[0] for _ in range(repeat)]
        return new_tokens / statistics.median(times), times

    # Baseline: what a user of plain transformers gets (DynamicCache, eager, this thread).
    with torch.inference_mode():
        on_device = on_model_device(model, kwargs)
        out["plain_generate_tok_s"], out["plain_generate_times"] = generate_tok_s(lambda: model.generate(**on_device))

    # Eager path (fast_decode=False): raw generate on the worker vs ChatGLM.stream.
    out["eager_raw_tok_s"], _ = generate_tok_s(lambda: run_generate(model, kwargs))
    out["eager_raw_ttft_s"] = statistics.median(timed(lambda: run_generate(model, first_kwargs))[0] for _ in range(repeat))
    stream_once(eager, QUESTION, **force)
    runs = [stream_once(eager, QUESTION, **force) for _ in range(repeat)]
    out["eager_stream_tok_s"] = new_tokens / median_of(runs, "total_s")
    out["eager_stream_ttft_s"] = median_of(runs, "ttft_s")

    # Fast path: the first call of the shape compiles; then raw and streamed, same kwargs.
    out["fast_decode_active"] = fast.fast_decode_active
    out["fast_first_call_s"], _ = timed(lambda: fast.invoke(QUESTION, **force))
    state = fast_decode_state(model)
    out["fast_warmups_s"] = {**{f"generate {b}x{n}": s for (b, n), s in state.warmups.items()},
                             **{f"graph {k}": s for k, s in state.capture_times.items()}}
    out["fast_disabled_reason"] = state.off.get(STATIC_CACHE)
    out["graph_disabled_reason"] = state.off.get(DECODE_GRAPH)
    out["fast_decode_report"] = fast.fast_decode_report
    fast_options = fast._fast_decode()
    out["fast_raw_tok_s"], out["fast_raw_times"] = generate_tok_s(lambda: run_generate(model, kwargs, fast_decode=fast_options))
    run_generate(model, first_kwargs, fast_decode=fast_options)
    out["fast_raw_ttft_s"] = statistics.median(
        timed(lambda: run_generate(model, first_kwargs, fast_decode=fast_options))[0] for _ in range(repeat)
    )
    stream_once(fast, QUESTION, **force)
    runs = [stream_once(fast, QUESTION, **force) for _ in range(repeat)]
    out["fast_stream_runs"] = runs
    out["fast_stream_tok_s"] = new_tokens / median_of(runs, "total_s")
    out["fast_stream_ttft_s"] = median_of(runs, "ttft_s")
    out["fast_stream_decode_tok_s"] = (new_tokens - 1) / (median_of(runs, "total_s") - median_of(runs, "ttft_s"))

    out["stream_over_raw_eager"] = out["eager_stream_tok_s"] / out["eager_raw_tok_s"]
    out["stream_over_raw_fast"] = out["fast_stream_tok_s"] / out["fast_raw_tok_s"]
    out["ttft_overhead_eager_ms"] = 1e3 * (out["eager_stream_ttft_s"] - out["eager_raw_ttft_s"])
    out["ttft_overhead_fast_ms"] = 1e3 * (out["fast_stream_ttft_s"] - out["fast_raw_ttft_s"])
    out["fast_stream_over_plain_generate"] = out["fast_stream_tok_s"] / out["plain_generate_tok_s"]
    return out


ABLATION = {  # variant: (packed_attention, fused_qkv) of FastDecodeOptions
    "neither": (False, False),
    "packed_attention": (True, False),
    "fused_qkv": (False, True),
    "both": (True, True),
}


def bench_ablation(model: Any, tokenizer: Any, *, new_tokens: int, repeat: int, options: Any = None) -> dict[str, Any]:
    """``ChatGLM.stream`` tokens/s with the decode step's packed attention and fused q/k/v each
    off and on, same run, same model: every variant builds (compiles, captures) its own graph."""
    from llm import ChatGLM
    from llm.fast_decode import FastDecodeOptions, fast_decode_state

    base = options or FastDecodeOptions()
    force = {"min_new_tokens": new_tokens}
    out: dict[str, Any] = {}
    for name, (packed, fused) in ABLATION.items():
        variant = base.model_copy(update={"packed_attention": packed, "fused_qkv": fused})
        llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=new_tokens,
                      fast_decode_options=variant)
        fast_decode_state(model).graphs.clear()  # one variant's graphs at a time in GPU memory
        stream_once(llm, QUESTION, **force)  # build + warm
        runs = [stream_once(llm, QUESTION, **force) for _ in range(repeat)]
        out[f"{name}_tok_s"] = new_tokens / median_of(runs, "total_s")
    for name in ABLATION:
        out[f"{name}_over_neither"] = out[f"{name}_tok_s"] / out["neither_tok_s"]
    return out


def build_model(shape: str, *, device: str, dtype: torch.dtype, tokenizer: Any, kind: str, group_size: int) -> Any:
    """The random model of ``shape`` (seed 0: the same weights for every kind), quantized when asked;
    ``int4-triton``: INT4 in the layout of glmkb's Triton GEMV (``llm.int4_kernel: triton``)."""
    from bench.common import glm_model
    from llm.quantization import quantize_model_

    torch.manual_seed(0)
    model = glm_model(shape, device=device, dtype=dtype, tokenizer=tokenizer)
    quantization, _, int4_kernel = kind.partition("-")
    if quantization != "none":
        quantize_model_(model, quantization, group_size=group_size, int4_kernel=int4_kernel or "tinygemm")
    return model


def layer_kernels(model: Any) -> dict[str, int]:
    """How many weight-only layers of each kind run on which kernel, e.g. ``{"int4:tinygemm": 196}``:
    INT4 on a bf16 sm80+ GPU should be all tinygemm (``llm.int4_tinygemm``); {} for bf16."""
    from collections import Counter

    from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear

    counts: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, WeightOnlyInt4Linear):
            counts[f"int4:{module.kernel}"] += 1
        elif isinstance(module, WeightOnlyInt8Linear):
            counts[f"int8:{getattr(module, 'kernel', 'dequant')}"] += 1
    return dict(counts)


def free_model() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_sampling() -> dict[str, float]:
    """What a chat samples with unless told otherwise: the settings' own defaults."""
    from configs.settings import GenerationSettings

    defaults = GenerationSettings()
    return {"temperature": defaults.temperature, "top_p": defaults.top_p}

def bench_quantization(
    shape: str, kinds: list[str], *, device: str, dtype: torch.dtype, tokenizer: Any, new_tokens: int, repeat: int,
    options: Any, group_size: int, quality_tokens: int = 256, variants: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row per kind: speed through ``ChatGLM.stream`` (fast path), weight memory, and quality
    against the full-precision model on ``quality_tokens`` teacher-forced positions. ``variants``
    (label -> (FastDecodeOptions, sampling kwargs)): each also timed on the same model, same run
    (``stream_tok_s_<label>``), its graphs built after the default's are freed."""
    from llm import ChatGLM
    from llm.fast_decode import fast_decode_state
    from llm.quantization import weight_bytes as stored_bytes

    vocab = len(tokenizer)
    ids = torch.randint(len(tokenizer.all_special_ids) + 1, vocab, (1, quality_tokens),
                        generator=torch.Generator().manual_seed(1)).to(device)
    force = {"min_new_tokens": new_tokens}
    rows: dict[str, Any] = {}
    reference: torch.Tensor | None = None
    for kind in ["none", *[k for k in kinds if k != "none"]]:
        free_model()
        built, model = timed(lambda k=kind: build_model(shape, device=device, dtype=dtype, tokenizer=tokenizer, kind=k,
                                                        group_size=group_size))
        free_model()
        row: dict[str, Any] = {"build_s": built, "weight_gib": stored_bytes(model) / 2**30,
                               "kernel": layer_kernels(model)}
        if torch.cuda.is_available():
            row["gpu_allocated_gib"] = torch.cuda.memory_allocated() / 2**30
        with torch.inference_mode():
            logits = model(ids).logits.float()
        if reference is None:
            reference = logits
        row["logits_rel_error"] = float((logits - reference).norm() / reference.norm())
        row["top1_agreement"] = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
        del logits
        if kind not in kinds:  # the reference only
            del model
            continue
        llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=new_tokens,
                      fast_decode_options=options)
        row["fast_decode_active"] = llm.fast_decode_active
        row["first_call_s"], _ = timed(lambda: llm.invoke(QUESTION, **force))
        row["fast_decode_report"] = llm.fast_decode_report
        row["capture_times_s"] = dict(fast_decode_state(model).capture_times)
        stream_once(llm, QUESTION, **force)
        runs = [stream_once(llm, QUESTION, **force) for _ in range(repeat)]
        row["stream_tok_s"] = new_tokens / median_of(runs, "total_s")
        row["stream_ttft_s"] = median_of(runs, "ttft_s")
        for label, (variant, sampling) in (variants or {}).items():
            fast_decode_state(model).graphs.clear()
            other = ChatGLM(model=model, tokenizer=tokenizer, max_new_tokens=new_tokens,
                            fast_decode_options=variant, **{"temperature": 0.0, **sampling})
            stream_once(other, QUESTION, **force)  # build + warm
            runs = [stream_once(other, QUESTION, **force) for _ in range(repeat)]
            row[f"stream_tok_s_{label}"] = new_tokens / median_of(runs, "total_s")
            row[f"stream_ttft_s_{label}"] = median_of(runs, "ttft_s")
            del other
        rows[kind] = row
        del llm, model
    base = rows.get("none", {}).get("stream_tok_s")
    for row in rows.values():
        row["tok_s_over_bf16"] = row["stream_tok_s"] / base if base else None
    return {"group_size": group_size, "quality_tokens": quality_tokens, "new_tokens": new_tokens, "rows": rows}


def ablation_variants(args: Any, options: Any) -> dict[str, tuple[Any, dict[str, float]]]:
    """``--rope-ablation`` / ``--rope-attention-ablation`` / ``--pdl-ablation`` / ``--token-ablation`` /
    ``--sampled``: the options and sampling settings each variant of a row is timed with (greedy where
    they say nothing)."""
    variants: dict[str, tuple[Any, dict[str, float]]] = {}
    if args.rope_ablation:
        variants["fused_rope_off"] = options.model_copy(update={"fused_rope": False}), {}
    if args.pdl_ablation:
        variants["pdl_off"] = options.model_copy(update={"pdl": False}), {}
    if args.rope_attention_ablation:
        variants["rope_in_attention"] = options.model_copy(update={"rope_in_attention": True}), {}
    if args.token_ablation:
        variants["token_kernel_off"] = options.model_copy(update={"token_kernel": False}), {}
        variants["tables_off"] = options.model_copy(update={"rotary_tables": False}), {}
        variants["both_off"] = options.model_copy(update={"token_kernel": False, "rotary_tables": False}), {}
    if args.sampled:  # what a user gets by default (the sampling kernels on), and with PyTorch's choice
        variants["sampled"] = options, default_sampling()
        variants["sampled_pytorch"] = options.model_copy(update={"sampling_kernel": False}), default_sampling()
    return variants


def run_quantization(args: Any, *, shape: str, device: str, dtype: torch.dtype, tokenizer: Any, options: Any) -> None:
    """``--quantization``: the INT8/INT4/bf16 table (``quant_<shape>.json``)."""
    result = {"shape": shape, "device": device, "dtype": str(dtype)}
    result["quantization"] = bench_quantization(
        shape, args.quantization, device=device, dtype=dtype, tokenizer=tokenizer, new_tokens=args.new_tokens,
        repeat=args.repeat, options=options, group_size=args.group_size,
        variants=ablation_variants(args, options) or None,
    )
    result["gemv_kernel"] = options.gemv_kernel
    suffix = "" if options.gemv_kernel == "auto" else f"_gemv-{options.gemv_kernel}"
    write_result(args.out, f"quant_{shape}{suffix}", result)
    rows = [
        (kind, r["weight_gib"], r["stream_tok_s"], r["tok_s_over_bf16"], r["stream_ttft_s"] * 1e3,
         r["logits_rel_error"], r["top1_agreement"], r["fast_decode_active"],
         " ".join(f"{k}x{n}" for k, n in r["kernel"].items()) or "F.linear")
        for kind, r in result["quantization"]["rows"].items()
    ]
    print_table(f"weight-only quantization, {shape} on {device} ({args.new_tokens} new tokens, ChatGLM.stream)", rows,
                ("kind", "weight GiB", "tok/s", "x bf16", "TTFT ms", "logits rel err", "top-1 agree", "fast path",
                 "kernel"))
    for kind, r in result["quantization"]["rows"].items():
        other = {k: round(v * (1e3 if "ttft" in k else 1), 1) for k, v in r.items()
                 if k.startswith(("stream_tok_s_", "stream_ttft_s_"))}
        if other:
            print(f"{kind}: {r['stream_tok_s']:.1f} tok/s; variants {other}", flush=True)


def map_prompts(tokenizer: Any, *, count: int, tokens: int) -> list[str]:
    """``count`` summarize prompts whose chat-rendered input is ``tokens`` tokens (distinct passages)."""
    head = "请用两三句话概括下面这段《三国演义》原文的主要内容：\n"
    text = "".join(sanguo_chunks()).replace("\n", "")

    def length(prompt: str) -> int:
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return len(tokenizer.encode(rendered, add_special_tokens=False))

    body = max(1, tokens - length(head))
    prompts = []
    for i in range(count):
        start = (i * 7919 * body) % max(1, len(text) - body)
        prompts.append(head + text[start : start + body])
    return prompts


def bench_map(
    model: Any, tokenizer: Any, *, batch: int, prompt_tokens: int, new_tokens: int, repeat: int, options: Any = None
) -> dict[str, Any]:
    from llm import ChatGLM
    from llm.fast_decode import DECODE_GRAPH, FastDecodeOptions, fast_decode_state

    llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=new_tokens,
                  fast_decode_options=options or FastDecodeOptions())
    prompts = map_prompts(tokenizer, count=batch, tokens=prompt_tokens)
    lengths = sorted({len(llm._generate_kwargs([p], {})["input_ids"][0]) for p in prompts})
    force = {"min_new_tokens": new_tokens}
    out: dict[str, Any] = {"batch": batch, "prompt_tokens": lengths, "new_tokens": new_tokens,
                           "fast_decode_active": llm.fast_decode_active}

    llm.invoke(prompts[0], **force)  # warm (batch 1 shape)
    one_by_one, per_call = timed(lambda: [timed(lambda p=p: llm.invoke(p, **force))[0] for p in prompts])
    out["one_by_one_s"] = one_by_one
    out["one_by_one_call_median_s"] = statistics.median(per_call)
    out["one_by_one_tok_s"] = batch * new_tokens / one_by_one

    out["batch_first_call_s"], texts = timed(lambda: llm.batch(prompts, **force))
    state = fast_decode_state(model)
    out["fast_warmups_s"] = {**{f"generate {b}x{n}": s for (b, n), s in state.warmups.items()},
                             **{f"graph {k}": s for k, s in state.capture_times.items()}}
    out["graph_disabled_reason"] = state.off.get(DECODE_GRAPH)
    times = [timed(lambda: llm.batch(prompts, **force))[0] for _ in range(repeat)]
    out["batch_times"] = times
    out["batch_s"] = statistics.median(times)
    out["batch_tok_s"] = batch * new_tokens / out["batch_s"]
    out["batch_over_one_by_one"] = out["batch_tok_s"] / out["one_by_one_tok_s"]
    out["answers_nonempty"] = sum(bool(t) for t in texts)

    eager = llm.model_copy(update={"fast_decode": False})
    eager.batch(prompts[:2], **force)
    out["eager_batch_s"] = timed(lambda: eager.batch(prompts, **force))[0]
    out["eager_batch_tok_s"] = batch * new_tokens / out["eager_batch_s"]
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--map", action="store_true", help="also the batched map stage (16 x 512 tokens)")
    p.add_argument("--map-batch", type=int, default=16)
    p.add_argument("--map-prompt-tokens", type=int, default=512)
    p.add_argument("--ablate", action="store_true", help="also each decode-step optimisation off vs on")
    p.add_argument("--fast-on-cpu", action="store_true", help="(tiny) run the static-cache path on CPU, uncompiled")
    p.add_argument("--quantization", nargs="+", choices=("none", "int8", "int4", "int4-triton"),
                   help="instead: one row per weight-only kind (speed, weight GiB, error vs bf16)")
    p.add_argument("--rope-ablation", action="store_true",
                   help="with --quantization: each kind also with FastDecodeOptions.fused_rope off, same run")
    p.add_argument("--token-ablation", action="store_true",
                   help="with --quantization: each kind also with FastDecodeOptions.token_kernel / rotary_tables off")
    p.add_argument("--sampled", action="store_true",
                   help="with --quantization: each kind also with the default sampling (temperature 0.8, top_p 0.8), "
                        "with FastDecodeOptions.sampling_kernel as set (on by default) and off")
    p.add_argument("--rope-attention-ablation", action="store_true",
                   help="with --quantization: each kind also with FastDecodeOptions.rope_in_attention on, same run")
    p.add_argument("--pdl-ablation", action="store_true",
                   help="with --quantization: each kind also timed without programmatic dependent launch")
    p.add_argument("--int8-tiles", nargs="+", default=None,
                   help="int8_tiles.json files (bench.int8_tiles) whose winners replace gemv_configs.TUNED's INT8 tiles")
    p.add_argument("--group-size", type=int, default=128, help="INT4 group size (llm.quantization_group_size)")
    p.add_argument("--gemv-kernel", choices=("auto", "triton", "torch"), default="auto",
                   help="FastDecodeOptions.gemv_kernel: the decode step's GEMVs (auto: Triton for INT8, cuBLAS for bf16)")
    args = p.parse_args()
    if args.int8_tiles:
        from bench.int8_tiles import use_sweep

        use_sweep(args.int8_tiles)

    from bench.common import char_tokenizer, glm_model

    shape = "tiny" if args.tiny else args.shape
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    from llm.fast_decode import FastDecodeOptions

    options = FastDecodeOptions(on_cpu=args.fast_on_cpu, gemv_kernel=args.gemv_kernel)
    torch.manual_seed(0)
    from bench.common import SHAPES

    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.quantization:
        run_quantization(args, shape=shape, device=device, dtype=dtype, tokenizer=tokenizer, options=options)
        return
    built, model = timed(lambda: glm_model(shape, device=device, dtype=dtype, tokenizer=tokenizer))
    per_token = weight_bytes(model) - model.model.embed_tokens.weight.numel() * 2  # one embedding row is read
    result: dict[str, Any] = {"shape": shape, "device": device, "build_s": built,
                              "weight_bytes": weight_bytes(model), "bytes_read_per_token": per_token}
    bw_measured, bw_nominal = measured_bandwidth(), nominal_bandwidth()
    result.update(bandwidth_measured=bw_measured, bandwidth_nominal=bw_nominal)
    decode = bench_decode(model, tokenizer, new_tokens=args.new_tokens, repeat=args.repeat, options=options)
    for label, bw in (("nominal", bw_nominal), ("measured", bw_measured)):
        if bw:
            decode[f"limit_tok_s_{label}"] = bw / per_token
            decode[f"share_of_limit_{label}"] = decode["fast_stream_tok_s"] / (bw / per_token)
    result["decode"] = decode
    if torch.cuda.is_available():
        result["peak_gpu_gib_after_decode"] = torch.cuda.max_memory_allocated() / 2**30
    name = f"decode_{shape}" + ("" if options.gemv_kernel == "auto" else f"_gemv-{options.gemv_kernel}")
    write_result(args.out, name, result)
    rows = [
        ("plain generate (baseline)", decode["plain_generate_tok_s"], "", ""),
        ("eager raw generate (worker)", decode["eager_raw_tok_s"], decode["eager_raw_ttft_s"] * 1e3, ""),
        ("eager ChatGLM.stream", decode["eager_stream_tok_s"], decode["eager_stream_ttft_s"] * 1e3, decode["stream_over_raw_eager"]),
        ("fast raw generate (worker)", decode["fast_raw_tok_s"], decode["fast_raw_ttft_s"] * 1e3, ""),
        ("fast ChatGLM.stream", decode["fast_stream_tok_s"], decode["fast_stream_ttft_s"] * 1e3, decode["stream_over_raw_fast"]),
    ]
    print_table(f"decode {shape} on {device} ({args.new_tokens} new tokens, prompt {decode['prompt_tokens']})",
                rows, ("path", "tok/s", "TTFT ms", "stream/raw"))
    print(f"fast first call {decode['fast_first_call_s']:.1f} s; warm-ups {decode['fast_warmups_s']}; "
          f"fast stream / plain generate = {decode['fast_stream_over_plain_generate']:.2f}x; "
          f"share of limit {decode.get('share_of_limit_nominal')} (nominal) {decode.get('share_of_limit_measured')} (measured)",
          flush=True)
    if args.ablate:
        result["ablation"] = bench_ablation(model, tokenizer, new_tokens=args.new_tokens, repeat=args.repeat,
                                            options=options)
        write_result(args.out, name, result)
        print(f"ablation (ChatGLM.stream tok/s): {result['ablation']}", flush=True)
    if args.map:
        result["map"] = bench_map(model, tokenizer, batch=args.map_batch, prompt_tokens=args.map_prompt_tokens,
                                  new_tokens=args.new_tokens, repeat=max(1, min(args.repeat, 3)), options=options)
        write_result(args.out, name, result)
        m = result["map"]
        print_table(f"map stage {shape}: {m['batch']} x {m['prompt_tokens']} tokens, {m['new_tokens']} new",
                    [("one-by-one invoke", m["one_by_one_tok_s"], m["one_by_one_s"]),
                     ("ChatGLM.batch (fast)", m["batch_tok_s"], m["batch_s"]),
                     ("ChatGLM.batch (eager)", m["eager_batch_tok_s"], m["eager_batch_s"])],
                    ("path", "tok/s", "seconds"))
        print(f"batch / one-by-one = {m['batch_over_one_by_one']:.2f}x; batch first call {m['batch_first_call_s']:.1f} s",
              flush=True)


if __name__ == "__main__":
    main()
