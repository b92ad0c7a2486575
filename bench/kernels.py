"""What one decode step of a ChatGLM3-6B-shaped layer costs, kernel group by kernel group.

    python -m bench.kernels            # on the GPU machine (needs CUDA)

Each group runs for all 28 layers (distinct weights per layer, so nothing is served from L2)
inside one captured CUDA graph, like the decode graph; the median of 20 replays is reported
as microseconds per layer and as the share of the device-to-device copy bandwidth the weights
were read at. Variants measured side by side in the same run:

- q/k/v as three GEMVs (what transformers' attention does) vs one GEMV over concatenated weights;
- attention over a 1024-token static cache (compiled, as in the decode graph): K/V repeated per
  query head + SDPA (what compiled transformers does), query heads packed onto their K/V head +
  SDPA, and packed + two batched matmuls around a float32 softmax (``llm.fast_decode``).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import SHAPES, parser, print_table, replay_seconds, write_result
from bench.decode import measured_bandwidth
from llm.fast_decode import capture_graph, packed_gqa_attention, warm_up_on_side_stream


def graph_time(fn: Callable[[], Any], *, replays: int = 20) -> float:
    """Median seconds of one replay of a CUDA graph holding ``fn``."""
    warm_up_on_side_stream(fn)
    return replay_seconds(capture_graph(fn), replays=replays, skip=3)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shape", default="chatglm3-6b")
    p.add_argument("--cache", type=int, default=1024, help="static cache length")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.kernels needs a CUDA GPU")
    c = SHAPES[args.shape]
    layers, hidden, ffn = c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]
    heads, kv, dim = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    q_out, kv_out = heads * dim, kv * dim
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)

    def w(rows: int, cols: int) -> list[torch.Tensor]:
        return [torch.randn(rows, cols, device=dev, dtype=dt) * 0.02 for _ in range(layers)]

    def b(rows: int) -> list[torch.Tensor]:
        return [torch.randn(rows, device=dev, dtype=dt) * 0.02 for _ in range(layers)]

    x = torch.randn(1, hidden, device=dev, dtype=dt)
    wq, wk, wv, bq, bk, bv = w(q_out, hidden), w(kv_out, hidden), w(kv_out, hidden), b(q_out), b(kv_out), b(kv_out)
    wqkv = [torch.cat([a, k_, v_]) for a, k_, v_ in zip(wq, wk, wv, strict=True)]
    bqkv = [torch.cat([a, k_, v_]) for a, k_, v_ in zip(bq, bk, bv, strict=True)]
    wo, wgu, wd = w(hidden, q_out), w(2 * ffn, hidden), w(hidden, ffn)
    kcache = [torch.randn(1, kv, args.cache, dim, device=dev, dtype=dt) for _ in range(layers)]
    vcache = [torch.randn(1, kv, args.cache, dim, device=dev, dtype=dt) for _ in range(layers)]
    mask = torch.zeros(1, 1, 1, args.cache, dtype=torch.bool, device=dev)
    mask[..., :173] = True  # a 45-token prompt + 128 new tokens
    q = torch.randn(1, heads, 1, dim, device=dev, dtype=dt)
    a = torch.randn(1, q_out, device=dev, dtype=dt)
    h = torch.randn(1, ffn, device=dev, dtype=dt)

    def qkv_three() -> None:
        for i in range(layers):
            F.linear(x, wq[i], bq[i]), F.linear(x, wk[i], bk[i]), F.linear(x, wv[i], bv[i])

    def qkv_fused() -> None:
        for i in range(layers):
            F.linear(x, wqkv[i], bqkv[i]).split([q_out, kv_out, kv_out], dim=-1)

    groups = heads // kv

    def attention_repeated(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # compiled transformers
        k = k[:, :, None].expand(1, kv, groups, args.cache, dim).reshape(1, heads, args.cache, dim)
        v = v[:, :, None].expand(1, kv, groups, args.cache, dim).reshape(1, heads, args.cache, dim)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def attention_packed_sdpa(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q.reshape(1, kv, groups, dim), k, v, attn_mask=mask)

    module = types.SimpleNamespace(num_key_value_groups=groups)

    def attention_packed_matmul(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # llm.fast_decode's
        return packed_gqa_attention(module, q, k, v, mask, scaling=dim**-0.5)[0]

    def all_layers(one: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        compiled = torch.compile(one, dynamic=False)  # one graph for every layer: same shapes

        def run() -> None:
            for i in range(layers):
                compiled(kcache[i], vcache[i])
        return run

    def gemv(weights: list[torch.Tensor], inp: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            for i in range(layers):
                F.linear(inp, weights[i])
        return run

    def nbytes(*groups_: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for g in groups_ for t in g[:1])

    bandwidth = measured_bandwidth() or 0.0
    cases = [
        ("q/k/v: three GEMVs", qkv_three, nbytes(wq, wk, wv, bq, bk, bv)),
        ("q/k/v: one fused GEMV", qkv_fused, nbytes(wqkv, bqkv)),
        ("attention: K/V repeated + SDPA", all_layers(attention_repeated), nbytes(kcache, vcache)),
        ("attention: packed + SDPA", all_layers(attention_packed_sdpa), nbytes(kcache, vcache)),
        ("attention: packed + matmuls", all_layers(attention_packed_matmul), nbytes(kcache, vcache)),
        ("o_proj GEMV", gemv(wo, a), nbytes(wo)),
        ("gate_up GEMV", gemv(wgu, x), nbytes(wgu)),
        ("down GEMV", gemv(wd, h), nbytes(wd)),
    ]
    result: dict[str, Any] = {"shape": args.shape, "cache": args.cache, "bandwidth_measured": bandwidth,
                              "device": torch.cuda.get_device_name(0), "cases": {}}
    rows = []
    with torch.inference_mode():
        for name, fn, size in cases:
            seconds = graph_time(fn) / layers
            share = size / seconds / bandwidth if bandwidth else None
            result["cases"][name] = {"us_per_layer": seconds * 1e6, "bytes_per_layer": size, "share_of_copy_read": share}
            rows.append((name, seconds * 1e6, size / 2**20, share if share is not None else ""))
    r = result["cases"]
    result["qkv_fusion_saves_us_per_token"] = layers * (r["q/k/v: three GEMVs"]["us_per_layer"]
                                                        - r["q/k/v: one fused GEMV"]["us_per_layer"])
    result["packed_attention_saves_us_per_token"] = layers * (r["attention: K/V repeated + SDPA"]["us_per_layer"]
                                                              - r["attention: packed + matmuls"]["us_per_layer"])
    write_result(args.out, f"kernels_{args.shape}", result)
    print_table(f"one decode step, per layer ({args.shape}, bf16, batch 1, cache {args.cache})", rows,
                ("kernel group", "us/layer", "MiB read", "share of copy bw"))
    print(f"per token: q/k/v fusion would save {result['qkv_fusion_saves_us_per_token']:.0f} us; "
          f"packed attention saves {result['packed_attention_saves_us_per_token']:.0f} us", flush=True)


if __name__ == "__main__":
    main()
