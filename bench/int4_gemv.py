"""The four GEMVs of a ChatGLM3-6B decode step at batch 1: bf16 (cuBLAS) against INT4 on tinygemm.

    python -m bench.int4_gemv                         # on the GPU machine (needs CUDA, sm80+)
    python -m bench.int4_gemv --groups 64 128 --inner-k-tiles 2 4 8

Each variant runs the fused q/k/v, o_proj, gate_up and down GEMVs of all 28 layers (distinct
weights, so nothing is served from L2) inside one captured CUDA graph, as in the decode graph
(``bench.kernels``' method). Reported per variant: microseconds per layer, the share of the
device-to-device copy bandwidth the weight bytes were read at, and the speed-up over bf16. INT4
goes through ``WeightOnlyInt4Linear`` itself (its tinygemm form), so what is timed is what the
model runs; ``--inner-k-tiles`` overrides ``llm.int4_tinygemm``'s choice (8 where K allows).
"""

from __future__ import annotations

from typing import Any

import torch

from bench.common import SHAPES, parser, print_table, write_result


def layer_shapes(shape: str) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of the four GEMVs of one layer."""
    c = SHAPES[shape]
    hidden, ffn = c["hidden_size"], c["intermediate_size"]
    qkv = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * c["head_dim"]
    return {"qkv": (qkv, hidden), "o": (hidden, c["num_attention_heads"] * c["head_dim"]),
            "gate_up": (2 * ffn, hidden), "down": (hidden, ffn)}


def time_variant(shape: str, *, kind: str, group: int, tiles: int | None) -> dict[str, Any]:
    """µs per layer and bytes read for the layer GEMVs of ``kind`` ("bf16" or "int4")."""
    from bench.kernels import graph_time
    from llm import int4_tinygemm
    from llm.quantization import WeightOnlyInt4Linear, weight_bytes

    layers = SHAPES[shape]["num_hidden_layers"]
    chosen = int4_tinygemm.inner_k_tiles
    if tiles is not None:
        int4_tinygemm.inner_k_tiles = lambda k: tiles if k % (tiles * 16) == 0 else chosen(k)
    try:
        modules: list[torch.nn.Module] = []
        for _ in range(layers):
            for out_f, in_f in layer_shapes(shape).values():
                w = torch.randn(out_f, in_f, device="cuda", dtype=torch.bfloat16) * 0.02
                if kind == "bf16":
                    linear = torch.nn.Linear(in_f, out_f, bias=False, device="meta")
                    linear.weight = torch.nn.Parameter(w, requires_grad=False)
                    modules.append(linear)
                else:
                    modules.append(WeightOnlyInt4Linear(w, None, group_size=group))
                del w
    finally:
        int4_tinygemm.inner_k_tiles = chosen
    kernels = sorted({getattr(m, "kernel", "cuBLAS") for m in modules})
    x = {n: torch.randn(1, n, device="cuda", dtype=torch.bfloat16) for n in {s[1] for s in layer_shapes(shape).values()}}

    def run() -> None:
        for m in modules:
            m(x[m.in_features])

    with torch.inference_mode():
        seconds = graph_time(run)
    read = sum(weight_bytes(m) for m in modules)
    del modules
    torch.cuda.empty_cache()
    return {"kind": kind, "group": group if kind == "int4" else None, "inner_k_tiles": tiles, "kernels": kernels,
            "us_per_layer": seconds / layers * 1e6, "bytes": read, "bytes_per_s": read / seconds}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--groups", type=int, nargs="+", default=[128, 64, 32])
    p.add_argument("--inner-k-tiles", type=int, nargs="+", default=[8, 4, 2])
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.int4_gemv needs a CUDA GPU")
    from bench.decode import measured_bandwidth

    copy_rate = measured_bandwidth()
    rows = [time_variant(args.shape, kind="bf16", group=0, tiles=None)]
    rows += [time_variant(args.shape, kind="int4", group=g, tiles=None) for g in args.groups]
    rows += [time_variant(args.shape, kind="int4", group=128, tiles=t) for t in args.inner_k_tiles]
    base = rows[0]["us_per_layer"]
    for row in rows:
        row["speedup_over_bf16"] = base / row["us_per_layer"]
        row["share_of_copy_bandwidth"] = row["bytes_per_s"] / copy_rate if copy_rate else None
    write_result(args.out, f"int4_gemv_{args.shape}", {"shape": args.shape, "copy_bytes_per_s": copy_rate,
                                                      "rows": rows})
    print_table(
        f"layer GEMVs of {args.shape} at batch 1 (all layers, one CUDA graph)",
        [(r["kind"], r["group"], r["inner_k_tiles"], ",".join(r["kernels"]), r["us_per_layer"], r["bytes"] / 2**20,
          r["share_of_copy_bandwidth"], r["speedup_over_bf16"]) for r in rows],
        ("kind", "group", "inner k-tiles", "kernel", "us/layer", "MiB read", "x copy bw", "x bf16"),
    )


if __name__ == "__main__":
    main()
