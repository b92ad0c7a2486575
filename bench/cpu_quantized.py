"""INT8/INT4 on the CPU: glmkb's weight-only layers on torch's CPU kernels (``llm.quantized_cpu``)
against float32/bfloat16 weights and against the dequantizing path CPU runs took before.

    python -m bench.cpu_quantized                  # ~6 min on 2 cores; writes $OUT/cpu_quantized.json
    ATEN_CPU_CAPABILITY=avx2 python -m bench.cpu_quantized --layers-only   # as on a CPU without AVX-512

Part 1, per layer: ms per call of one ChatGLM3-6B linear shape (q/k/v 4608x4096, gate_up
27392x4096, down 4096x13696) at 1, 16 and 128 input rows; enough distinct weights are cycled
that they do not fit in the caches (decoding reads every weight once per token).
Part 2, end to end: ``generate`` of 32 greedy tokens after a 16-token prompt, batch 1, on a
ChatGLM3-6B-wide model cut to ``--layers`` layers (the 65,024-row LM head included), tokens per
second and weight GiB per variant.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import parser, print_table, write_result

LAYER_SHAPES = {"qkv": (4608, 4096), "gate_up": (27392, 4096), "down": (4096, 13696)}
ROWS = (1, 16, 128)
CACHE_BYTES = 256 << 20  # cycle weights totalling at least this much
VARIANTS = ("float32", "bfloat16", "int8 float32 (dequantizing)", "int8 bfloat16 (CPU kernel)",
            "int4 float32 (dequantizing)", "int4 bfloat16 (CPU kernel)")


def layer_variants(out_features: int, in_features: int, count: int) -> dict[str, list[Any]]:
    """``count`` layers of each variant, all of one shape, placed on the CPU."""
    from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear

    weights = [torch.randn(out_features, in_features) * 0.02 for _ in range(count)]
    return {
        "float32": [lambda x, w=w: F.linear(x, w) for w in weights],
        "bfloat16": [lambda x, w=w.bfloat16(): F.linear(x, w) for w in weights],
        "int8 float32 (dequantizing)": [WeightOnlyInt8Linear(w, None).to("cpu") for w in weights],
        "int8 bfloat16 (CPU kernel)": [WeightOnlyInt8Linear(w.bfloat16(), None).to("cpu") for w in weights],
        "int4 float32 (dequantizing)": [WeightOnlyInt4Linear(w, None, group_size=128).to("cpu") for w in weights],
        "int4 bfloat16 (CPU kernel)": [WeightOnlyInt4Linear(w.bfloat16(), None, group_size=128).to("cpu")
                                       for w in weights],
    }


def ms_per_call(layers: list[Any], x: torch.Tensor, *, repeat: int) -> float:
    with torch.inference_mode():
        for layer in layers:
            layer(x)
        start = time.perf_counter()
        for _ in range(repeat):
            for layer in layers:
                layer(x)
    return (time.perf_counter() - start) / (repeat * len(layers)) * 1e3


def run_layers(*, repeat: int, tiny: bool) -> list[dict[str, Any]]:
    results = []
    shapes = {"tiny": (256, 256)} if tiny else LAYER_SHAPES
    for name, (n, k) in shapes.items():
        count = max(2, -(-CACHE_BYTES // (n * k * 4))) if not tiny else 2
        variants = layer_variants(n, k, count)
        for rows in ROWS:
            x = torch.randn(rows, k)
            for variant, layers in variants.items():
                dtype = torch.bfloat16 if "bfloat16" in variant else torch.float32
                runs = 1 if "dequantizing" in variant and rows == 128 else repeat
                ms = ms_per_call(layers, x.to(dtype), repeat=runs)
                results.append({"layer": name, "shape": [n, k], "rows": rows, "variant": variant, "ms": round(ms, 3)})
        del variants
    return results


def run_model(*, layers: int, tokens: int, tiny: bool) -> list[dict[str, Any]]:
    from bench.common import SHAPES, char_tokenizer, glm_model
    from llm.quantization import quantize_model_, weight_bytes

    shape = "tiny" if tiny else "chatglm3-6b"
    SHAPES["cut"] = {**SHAPES[shape], "num_hidden_layers": layers}
    tokenizer = char_tokenizer(SHAPES[shape]["vocab_size"])
    prompt = torch.randint(200, 5000, (1, 16))
    results = []
    for variant in ("float32", "bfloat16", "int8 float32", "int8 bfloat16", "int4 float32", "int4 bfloat16"):
        kind, _, dtype_name = variant.rpartition(" ")
        dtype = getattr(torch, dtype_name or variant)
        model = glm_model("cut", device="cpu", dtype=dtype, tokenizer=tokenizer)
        if kind:
            quantize_model_(model, kind, group_size=128 if not tiny else 32)
            model.to("cpu")
        kwargs = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "do_sample": False,
                  "max_new_tokens": tokens, "min_new_tokens": tokens}
        with torch.inference_mode():
            model.generate(**{**kwargs, "max_new_tokens": 2, "min_new_tokens": 2})
            start = time.perf_counter()
            model.generate(**kwargs)
            seconds = time.perf_counter() - start
        results.append({"variant": variant, "tok_s": round(tokens / seconds, 2),
                        "weight_gib": round(weight_bytes(model) / 2**30, 2)})
        del model
    return results


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the end-to-end model")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--layers-only", action="store_true", help="skip the end-to-end part")
    args = p.parse_args()
    torch.manual_seed(0)
    capability = torch.backends.cpu.get_cpu_capability()
    layer_rows = run_layers(repeat=args.repeat, tiny=args.tiny)
    print_table(f"ms per call, {capability}", [(r["layer"], r["rows"], r["variant"], r["ms"]) for r in layer_rows],
                ("layer", "rows", "variant", "ms"))
    model_rows = [] if args.layers_only else run_model(layers=args.layers, tokens=args.tokens, tiny=args.tiny)
    if model_rows:
        print_table(f"generate, {args.layers} layers", [(r["variant"], r["tok_s"], r["weight_gib"]) for r in model_rows],
                    ("variant", "tok/s", "weight GiB"))
    suffix = "" if capability == "AVX512" else f"_{capability.lower()}"
    path = write_result(args.out, f"cpu_quantized{suffix}",
                        {"cpu_capability": capability, "threads": torch.get_num_threads(), "layers": layer_rows,
                         "generate": model_rows, "generate_layers": args.layers})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
