"""Adapters on the ChatGLM3-6B shape: decode with a P-tuning prefix vs without, LoRA merged vs base, LoRA training.

``python -m bench.adapters`` (GPU) / ``python -m bench.adapters --tiny`` (CPU, checks the script):

- decode tok/s of ``ChatGLM.stream`` for the base model, the same model with a 128-token P-tuning
  prefix (eager: the fast path refuses a prefix today, see docs/ADAPTERS.md), the base model on
  the eager path (the fair comparison for the prefix), and a LoRA adapter merged into the weights
  (fast path, should equal the base);
- LoRA training (r=8 on q/k/v, bf16 base, fp32 adapters) at sequence ``--train-seq`` (1024) and
  batch ``--train-batch`` (4): tokens/s over timed optimizer steps and peak GPU memory.

Random weights of the real shapes (speed does not depend on values); results go to
``$OUT/adapters_<shape>.json`` (bench/common.py).
"""

from __future__ import annotations

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


def stream_tok_s(llm: Any, *, new_tokens: int, repeat: int) -> float:
    """Median tokens/s of ``llm.stream`` forced to ``new_tokens`` tokens."""
    force = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "temperature": 0}
    seconds, _ = median_time(lambda: "".join(llm.stream(PROMPT, **force)), repeat=repeat, warmup=2)
    return new_tokens / seconds


def with_random_prefix(model: Any, *, pre_seq_len: int) -> Any:
    from llm.adapters.ptuning import PrefixEncoder, PrefixShape, attach_prefix

    c = model.config
    shape = PrefixShape(pre_seq_len=pre_seq_len, projection=False, num_layers=c.num_hidden_layers,
                        num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_size=c.hidden_size)
    encoder = PrefixEncoder(shape).to(model.device).eval()
    with torch.no_grad():
        encoder.embedding.weight.mul_(0.02)
    attach_prefix(model, encoder)
    return model


def with_random_lora(model: Any, *, merge: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"],
                                                  init_lora_weights=False))
    return peft_model.merge_and_unload() if merge else peft_model


def bench_decode(shape: str, *, device: str, dtype: torch.dtype, new_tokens: int, repeat: int, pre_seq_len: int) -> dict[str, Any]:
    from llm.adapters.ptuning import detach_prefix
    from llm.chatglm import ChatGLM

    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    model = glm_model(shape, device=device, dtype=dtype, tokenizer=tokenizer)
    base = ChatGLM(model=model, tokenizer=tokenizer, temperature=0)
    out: dict[str, Any] = {"new_tokens": new_tokens, "pre_seq_len": pre_seq_len}
    out["base_fast_tok_s"] = stream_tok_s(base, new_tokens=new_tokens, repeat=repeat)
    eager = base.model_copy(update={"fast_decode": False})
    out["base_eager_tok_s"] = stream_tok_s(eager, new_tokens=new_tokens, repeat=repeat)
    with_random_prefix(model, pre_seq_len=pre_seq_len)
    out["prefix_fast_path_active"] = base.fast_decode_active
    out["prefix_tok_s"] = stream_tok_s(base, new_tokens=new_tokens, repeat=repeat)
    out["prefix_over_base_eager"] = out["prefix_tok_s"] / out["base_eager_tok_s"]
    out["prefix_over_base_fast"] = out["prefix_tok_s"] / out["base_fast_tok_s"]
    detach_prefix(model)
    merged = with_random_lora(model, merge=True)
    lora = ChatGLM(model=merged, tokenizer=tokenizer, temperature=0)
    out["lora_merged_tok_s"] = stream_tok_s(lora, new_tokens=new_tokens, repeat=repeat)
    out["lora_merged_over_base_fast"] = out["lora_merged_tok_s"] / out["base_fast_tok_s"]
    del model, merged, base, eager, lora
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def bench_training(shape: str, *, device: str, dtype: torch.dtype, seq: int, batch: int, steps: int,
                   gradient_checkpointing: bool) -> dict[str, Any]:
    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    model = glm_model(shape, device=device, dtype=dtype, tokenizer=tokenizer)
    model.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    peft_model = with_random_lora(model, merge=False)
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, SHAPES[shape]["vocab_size"], (batch, seq), device=device)

    def step() -> float:
        loss = peft_model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step()  # warm-up (allocator, kernels)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    seconds, _ = timed(lambda: [step() for _ in range(steps)])
    out = {"seq": seq, "batch": batch, "steps": steps, "gradient_checkpointing": gradient_checkpointing,
           "tokens_per_s": steps * batch * seq / seconds, "step_s": seconds / steps}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--pre-seq-len", type=int, default=128)
    p.add_argument("--train-seq", type=int, default=1024)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--gradient-checkpointing", action="store_true")
    args = p.parse_args()

    shape = "tiny" if args.tiny else args.shape
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    seq, batch = (64, 2) if args.tiny else (args.train_seq, args.train_batch)
    torch.manual_seed(0)
    result: dict[str, Any] = {"shape": shape, "device": device}
    result["decode"] = bench_decode(shape, device=device, dtype=dtype, new_tokens=args.new_tokens, repeat=args.repeat,
                                    pre_seq_len=args.pre_seq_len)
    write_result(args.out, f"adapters_{shape}", result)
    result["train"] = bench_training(shape, device=device, dtype=dtype, seq=seq, batch=batch, steps=args.train_steps,
                                     gradient_checkpointing=args.gradient_checkpointing)
    write_result(args.out, f"adapters_{shape}", result)
    d, t = result["decode"], result["train"]
    print_table(f"decode {shape} on {device} ({args.new_tokens} new tokens)", [
        ("base, fast path", d["base_fast_tok_s"], 1.0),
        ("base, eager", d["base_eager_tok_s"], d["base_eager_tok_s"] / d["base_fast_tok_s"]),
        (f"P-tuning prefix {args.pre_seq_len} (fast path: {d['prefix_fast_path_active']})", d["prefix_tok_s"], d["prefix_over_base_fast"]),
        ("LoRA merged, fast path", d["lora_merged_tok_s"], d["lora_merged_over_base_fast"]),
    ], ("model", "tok/s", "x base fast"))
    print_table(f"LoRA training {shape} seq {seq} batch {batch}", [
        ("tokens/s", t["tokens_per_s"]), ("s/step", t["step_s"]), ("peak GiB", t.get("peak_gpu_gib", "n/a")),
    ], ("measure", "value"))


if __name__ == "__main__":
    main()
