"""Peak host RAM and GPU memory while loading an original ChatGLM3-6B-format checkpoint in shards.

    python -m bench.memory --dir /tmp/chatglm3-6b-orig     # GPU machine: write 7 fp16 .bin shards, load
    python -m bench.memory --tiny --dir /tmp/tiny-orig      # check the script here

Writes a random checkpoint of the real shapes in THUDM's format (``config.json``,
``pytorch_model-0000N-of-0000M.bin`` fp16 shards plus their index, ``tokenizer.model``), then
loads it in a fresh process through ``llm.chatglm_legacy.load_chatglm_legacy`` (bf16 on the
GPU), sampling ``/proc/self/status`` every millisecond: peak RSS (and its anonymous / file-backed
parts) above the process's baseline just before loading, against the largest shard.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import DATA, parser, print_table, write_result

SHAPE_6B = dict(hidden_size=4096, ffn_hidden_size=13696, kv_channels=128, num_attention_heads=32,
                multi_query_group_num=2, num_layers=28, padded_vocab_size=65024, seq_length=8192)
SHAPE_TINY = dict(hidden_size=64, ffn_hidden_size=96, kv_channels=16, num_attention_heads=4,
                  multi_query_group_num=2, num_layers=4, padded_vocab_size=4096, seq_length=256)


def tensor_shapes(c: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    h, d, heads, kv = c["hidden_size"], c["kv_channels"], c["num_attention_heads"], c["multi_query_group_num"]
    qkv = (heads + 2 * kv) * d
    shapes = [("transformer.embedding.word_embeddings.weight", (c["padded_vocab_size"], h))]
    for i in range(c["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attention.query_key_value.weight", (qkv, h)),
            (p + "self_attention.query_key_value.bias", (qkv,)),
            (p + "self_attention.dense.weight", (h, heads * d)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.dense_h_to_4h.weight", (2 * c["ffn_hidden_size"], h)),
            (p + "mlp.dense_4h_to_h.weight", (h, c["ffn_hidden_size"])),
        ]
    shapes += [("transformer.encoder.final_layernorm.weight", (h,)),
               ("transformer.output_layer.weight", (c["padded_vocab_size"], h))]
    return shapes


def split_shards(shapes: list[tuple[str, tuple[int, ...]]], count: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Consecutive groups of roughly equal bytes (THUDM's shards are also cut in model order)."""
    sizes = [torch.Size(s).numel() for _, s in shapes]
    target = sum(sizes) / count
    groups: list[list[Any]] = [[]]
    filled = 0
    for item, size in zip(shapes, sizes, strict=True):
        if filled >= target * len(groups) and len(groups) < count:
            groups.append([])
        groups[-1].append(item)
        filled += size
    return groups


def write_checkpoint(folder: Path, *, dims: dict[str, Any], shards: int) -> dict[str, Any]:
    import sentencepiece as spm

    from tests.fixtures.chatglm_legacy import tiny_config, write_remote_code_stand_ins

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sp_model = DATA / "tokenizer.model"
    sp_size = spm.SentencePieceProcessor(model_file=str(sp_model)).vocab_size()
    config = tiny_config(sp_size, **dims, torch_dtype="float16")
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    shutil.copy(sp_model, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "ChatGLMTokenizer"}), encoding="utf-8")
    write_remote_code_stand_ins(folder, variant="chatglm3", rope_style="base")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(0)
    groups = split_shards(tensor_shapes(config), shards)
    weight_map, sizes = {}, []
    start = time.perf_counter()
    for i, group in enumerate(groups, start=1):
        name = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
        part = {}
        for key, shape in group:
            if "layernorm" in key:
                part[key] = torch.ones(shape, dtype=torch.float16)
            else:
                part[key] = (torch.randn(shape, generator=gen, device=device) * 0.02).half().cpu()
            weight_map[key] = name
        torch.save(part, folder / name)
        sizes.append((folder / name).stat().st_size)
        del part
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index), encoding="utf-8")
    return {"write_s": time.perf_counter() - start, "shard_bytes": sizes, "total_bytes": sum(sizes)}


def status_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0])
    return values


def load_and_measure(folder: Path) -> dict[str, Any]:
    """In this (fresh) process: baseline, then the streamed load with a 1 ms RSS sampler."""
    from llm.chatglm_legacy import load_chatglm_legacy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.zeros(1, device="cuda")  # CUDA context in the baseline
        torch.cuda.reset_peak_memory_stats()
    baseline = status_kib()
    peaks = dict(baseline)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for key, value in status_kib().items():
                peaks[key] = max(peaks[key], value)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    model, _tokenizer = load_chatglm_legacy(folder, device=device, dtype="bfloat16")
    if device == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - start
    done.set()
    sampler.join()
    for key, value in status_kib().items():
        peaks[key] = max(peaks[key], value)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"device": device, "load_s": load_s, "baseline_kib": baseline, "peak_kib": peaks,
           "after_kib": status_kib(), "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "model_weight_bytes": weights}
    if device == "cuda":
        out["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["gpu_peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("/tmp/glmkb-bench-chatglm3-orig"))
    p.add_argument("--shards", type=int, default=7)
    p.add_argument("--load-only", action="store_true", help="(internal) measure a load in this process")
    args = p.parse_args()
    if args.load_only:
        print(json.dumps(load_and_measure(args.dir)))
        return
    dims = SHAPE_TINY if args.tiny else SHAPE_6B
    result: dict[str, Any] = {"shape": "tiny" if args.tiny else "chatglm3-6b (28 layers)", "dims": dims,
                              "format": "original ChatGLM3 .bin shards, fp16", "shards": args.shards}
    result["checkpoint"] = write_checkpoint(args.dir, dims=dims, shards=args.shards)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.memory", "--load-only", "--dir", str(args.dir)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"load failed:\n{proc.stderr[-3000:]}")
    load = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load"] = load
    largest = max(result["checkpoint"]["shard_bytes"])
    peak_above = (load["peak_kib"]["VmRSS"] - load["baseline_kib"]["VmRSS"]) * 1024
    anon_above = (load["peak_kib"]["RssAnon"] - load["baseline_kib"]["RssAnon"]) * 1024
    result.update(largest_shard_bytes=largest, peak_rss_above_baseline_bytes=peak_above,
                  peak_rss_over_largest_shard=peak_above / largest,
                  peak_anon_above_baseline_bytes=anon_above, peak_anon_over_largest_shard=anon_above / largest)
    if "gpu_peak_allocated_bytes" in load:
        result["gpu_peak_over_weights"] = load["gpu_peak_allocated_bytes"] / load["model_weight_bytes"]
    write_result(args.out, "memory_tiny" if args.tiny else "memory", result)
    shutil.rmtree(args.dir, ignore_errors=True)
    gib = 2**30
    rows = [("largest shard", largest / gib, ""),
            ("peak RSS above baseline", peak_above / gib, result["peak_rss_over_largest_shard"]),
            ("  of which anonymous", anon_above / gib, result["peak_anon_over_largest_shard"])]
    if "gpu_peak_allocated_bytes" in load:
        rows.append(("GPU peak allocated", load["gpu_peak_allocated_bytes"] / gib, result["gpu_peak_over_weights"]))
    print_table(f"loading {result['shape']} from {args.shards} shards ({load['load_s']:.1f} s)",
                rows, ("what", "GiB", "ratio"))


if __name__ == "__main__":
    main()
