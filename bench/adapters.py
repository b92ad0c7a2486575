"""Adapters on the ChatGLM3-6B shape: decode with a P-tuning prefix vs without, LoRA merged vs base, LoRA training.

``python -m bench.adapters`` (GPU; ``bash bench/run_all.sh adapters6b``) /
``python -m bench.adapters --tiny`` (CPU, the fast path forced on with ``on_cpu``: checks the script):

- ``decode``: tok/s of ``ChatGLM.stream`` on the fast path for the base model and for the same
  model with a ``--pre-seq-len`` (128) P-tuning prefix (held in the decode graph's static cache;
  target: within 5 % of the base), plus the prefixed model on the eager path (what it ran at
  before the fast path held prefixes; fewer tokens, it is slow);
- ``lora_merged``: a fresh model with a random LoRA (r=8 on q/k/v) merged into its weights, on
  the fast path (target: the base model's speed);
- ``train``: LoRA training as ``glmkb finetune`` sets it up (``llm.finetune.train.prepare_model``,
  r=8 on q/k/v, bf16 base, fp32 adapters, AdamW) at sequence ``--train-seq`` (1024) and batch
  ``--train-batch`` (4): tokens/s over a few timed steps and peak GPU memory. Without gradient
  checkpointing unless that runs out of memory (then again with it; the JSON says which).

Random weights of the real shapes, built on the GPU directly in bf16 (speed does not depend on
values). Each part runs on its own (an error is recorded, the next part still runs); results go
to ``$OUT/adapters_<shape>.json`` after every part (bench/common.py).
"""

from __future__ import annotations

import gc
import traceback
from collections.abc import Callable
from typing import Any

import torch

from bench.common import (
    SHAPES,
    char_tokenizer,
    glm_model,
    median_time,
    parser,
    print_table,
    timed,
    write_result,
)

PROMPT = "请用三句话介绍三国演义中诸葛亮的主要事迹。" * 4
TARGET_RATIO = 0.95  # issue 16: decode with a 128-token prefix within 5 % of the same model without


def stream_tok_s(llm: Any, *, new_tokens: int, repeat: int, warmup: int = 2) -> float:
    """Median tokens/s of ``llm.stream`` forced to ``new_tokens`` tokens."""
    force = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "temperature": 0}
    seconds, _ = median_time(lambda: "".join(llm.stream(PROMPT, **force)), repeat=repeat, warmup=warmup)
    return new_tokens / seconds


def with_random_prefix(model: Any, *, pre_seq_len: int) -> Any:
    from llm.adapters.ptuning import PrefixEncoder, PrefixShape, attach_prefix

    c = model.config
    shape = PrefixShape(pre_seq_len=pre_seq_len, projection=False, num_layers=c.num_hidden_layers,
                        num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_size=c.hidden_size)
    encoder = PrefixEncoder(shape).to(model.device).eval().requires_grad_(False)
    with torch.no_grad():
        encoder.embedding.weight.mul_(0.02)
    attach_prefix(model, encoder)
    return model


def with_random_lora(model: Any, *, merge: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"],
                                                  init_lora_weights=False))
    return peft_model.merge_and_unload() if merge else peft_model


def chat(model: Any, tokenizer: Any, options: Any) -> Any:
    from llm.chatglm import ChatGLM

    return ChatGLM(model=model, tokenizer=tokenizer, temperature=0, fast_decode_options=options)


def graph_prefixes(model: Any) -> list[int]:
    """The prefix length each decode graph of ``model`` was built with (shows the prefix took the graph)."""
    from llm.fast_decode import fast_decode_state

    return [g.prefix for g in fast_decode_state(model).graphs.values()]


def release(model: Any) -> None:
    """Drop the model's decode graphs and caches (their closures hold the model: GPU memory)."""
    from llm.fast_decode import fast_decode_state

    state = fast_decode_state(model)
    state.graphs.clear()
    state.caches.clear()
    state.fused = None


def bench_decode(shape: str, *, device: str, dtype: torch.dtype, options: Any, new_tokens: int, eager_tokens: int,
                 repeat: int, pre_seq_len: int) -> dict[str, Any]:
    """Base vs P-tuning prefix on the fast path, and the prefix on the eager path."""
    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    model = glm_model(shape, device=device, dtype=dtype, tokenizer=tokenizer)
    base = chat(model, tokenizer, options)
    out: dict[str, Any] = {"new_tokens": new_tokens, "pre_seq_len": pre_seq_len, "target_ratio": TARGET_RATIO}
    out["base_fast_path_active"] = base.fast_decode_active
    out["base_fast_tok_s"] = stream_tok_s(base, new_tokens=new_tokens, repeat=repeat)
    with_random_prefix(model, pre_seq_len=pre_seq_len)
    out["prefix_fast_path_active"] = base.fast_decode_active
    out["prefix_fast_decode_report"] = base.fast_decode_report
    out["prefix_tok_s"] = stream_tok_s(base, new_tokens=new_tokens, repeat=repeat)
    out["prefix_graph_prefixes"] = graph_prefixes(model)  # expect [0, pre_seq_len]: both took the decode graph
    out["prefix_over_base_fast"] = out["prefix_tok_s"] / out["base_fast_tok_s"]
    out["prefix_within_target"] = out["prefix_over_base_fast"] >= TARGET_RATIO
    eager = base.model_copy(update={"fast_decode": False})
    out["eager_tokens"] = eager_tokens
    out["prefix_eager_tok_s"] = stream_tok_s(eager, new_tokens=eager_tokens, repeat=2, warmup=1)
    out["prefix_fast_over_eager"] = out["prefix_tok_s"] / out["prefix_eager_tok_s"]
    release(model)
    return out


def bench_lora_merged(shape: str, *, device: str, dtype: torch.dtype, options: Any, new_tokens: int,
                      repeat: int) -> dict[str, Any]:
    """A fresh model with a random LoRA merged in: plain weights, the fast path like the base."""
    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    merged = with_random_lora(glm_model(shape, device=device, dtype=dtype, tokenizer=tokenizer), merge=True)
    lora = chat(merged, tokenizer, options)
    out: dict[str, Any] = {"fast_path_active": lora.fast_decode_active}
    out["tok_s"] = stream_tok_s(lora, new_tokens=new_tokens, repeat=repeat)
    out["fast_decode_report"] = lora.fast_decode_report
    release(merged)
    return out


def bench_training(shape: str, *, device: str, dtype: torch.dtype, seq: int, batch: int, steps: int,
                   gradient_checkpointing: bool) -> dict[str, Any]:
    """tokens/s and peak memory of glmkb's LoRA training step; retried with gradient
    checkpointing if it runs out of GPU memory without."""
    try:
        return training_run(shape, device=device, dtype=dtype, seq=seq, batch=batch, steps=steps,
                            gradient_checkpointing=gradient_checkpointing)
    except torch.cuda.OutOfMemoryError as e:
        if gradient_checkpointing:
            raise
        reason = f"out of memory: {str(e).splitlines()[0]}"
    free_memory()  # outside the except block: the failed run's frames (its model) are gone
    out = training_run(shape, device=device, dtype=dtype, seq=seq, batch=batch, steps=steps,
                       gradient_checkpointing=True)
    return {**out, "without_checkpointing": reason}


def training_run(shape: str, *, device: str, dtype: torch.dtype, seq: int, batch: int, steps: int,
                 gradient_checkpointing: bool) -> dict[str, Any]:
    from llm.finetune.train import FinetuneConfig, accumulate, prepare_model

    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    model = glm_model(shape, device=device, dtype=dtype, tokenizer=tokenizer)
    cfg = FinetuneConfig(data="-", model_path="-", output="-", method="lora", batch_size=batch, max_length=seq,
                         gradient_checkpointing=gradient_checkpointing, progress=False)
    trainable = prepare_model(model, cfg)
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    ids = torch.randint(0, SHAPES[shape]["vocab_size"], (batch, seq))
    group = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}]

    def step() -> float:
        loss = accumulate(trainable, group, device=model.device)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step()  # warm-up (allocator, kernels, optimizer state)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds, losses = timed(lambda: [step() for _ in range(steps)])
    out = {"seq": seq, "batch": batch, "steps": steps, "gradient_checkpointing": gradient_checkpointing,
           "trainable_params": sum(p.numel() for p in params), "adapter_dtype": str(params[0].dtype),
           "tokens_per_s": steps * batch * seq / seconds, "step_s": seconds / steps, "losses": losses}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_part(result: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]], save: Callable[[], Any]) -> None:
    """``result[name] = fn()``, or the error; the JSON is written either way; memory freed after."""
    try:
        result[name] = fn()
    except Exception as e:  # one part failing must not lose the others
        result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
    save()
    free_memory()


def report(result: dict[str, Any], *, shape: str, device: str) -> None:
    d, m, t = result.get("decode", {}), result.get("lora_merged", {}), result.get("train", {})
    base = d.get("base_fast_tok_s") or m.get("tok_s")
    rows = [("base, fast path", d["base_fast_tok_s"], 1.0)] if "base_fast_tok_s" in d else []
    if "prefix_tok_s" in d:
        rows += [(f"P-tuning prefix {d['pre_seq_len']}, fast path", d["prefix_tok_s"], d["prefix_over_base_fast"]),
                 (f"P-tuning prefix {d['pre_seq_len']}, eager", d["prefix_eager_tok_s"],
                  d["prefix_eager_tok_s"] / base)]
    if "tok_s" in m and base:
        rows.append(("LoRA merged, fast path", m["tok_s"], m["tok_s"] / base))
    if rows:
        print_table(f"decode {shape} on {device}", rows, ("model", "tok/s", "x base fast"))
    if "prefix_within_target" in d:
        print(f"prefix within {100 * (1 - TARGET_RATIO):.0f} % of base: {d['prefix_within_target']}; "
              f"decode graphs built with prefixes {d['prefix_graph_prefixes']}")
    if "tokens_per_s" in t:
        print_table(f"LoRA training {shape} seq {t['seq']} batch {t['batch']}", [
            ("tokens/s", t["tokens_per_s"]), ("s/step", t["step_s"]), ("peak GiB", t.get("peak_gpu_gib", "n/a")),
            ("gradient checkpointing", t["gradient_checkpointing"]),
        ], ("measure", "value"))
    for name in ("decode", "lora_merged", "train"):
        if "error" in result.get(name, {}):
            print(f"{name}: {result[name]['error']}")


def main() -> None:
    from llm.fast_decode import FastDecodeOptions

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--eager-tokens", type=int, default=32, help="tokens of the (slow) eager prefix run")
    p.add_argument("--pre-seq-len", type=int, default=128)
    p.add_argument("--train-seq", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=4)
    p.add_argument("--gradient-checkpointing", action="store_true", help="from the start (default: only if needed)")
    p.add_argument("--parts", nargs="+", default=["decode", "lora_merged", "train"],
                   choices=["decode", "lora_merged", "train"])
    args = p.parse_args()

    shape = "tiny" if args.tiny else args.shape
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    options = FastDecodeOptions(on_cpu=device == "cpu")
    seq, batch = (64, 2) if args.tiny else (args.train_seq, args.train_batch)
    new_tokens, eager_tokens = (16, 8) if args.tiny else (args.new_tokens, args.eager_tokens)
    torch.manual_seed(0)
    result: dict[str, Any] = {"shape": shape, "device": device, "dtype": str(dtype)}

    def save() -> None:
        write_result(args.out, f"adapters_{shape}", result)

    parts = {
        "decode": lambda: bench_decode(shape, device=device, dtype=dtype, options=options, new_tokens=new_tokens,
                                       eager_tokens=eager_tokens, repeat=args.repeat, pre_seq_len=args.pre_seq_len),
        "lora_merged": lambda: bench_lora_merged(shape, device=device, dtype=dtype, options=options,
                                                 new_tokens=new_tokens, repeat=args.repeat),
        "train": lambda: bench_training(shape, device=device, dtype=dtype, seq=seq, batch=batch, steps=args.train_steps,
                                        gradient_checkpointing=args.gradient_checkpointing),
    }
    for name in args.parts:
        run_part(result, name, parts[name], save)
    report(result, shape=shape, device=device)


if __name__ == "__main__":
    main()
