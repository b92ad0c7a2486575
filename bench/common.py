"""Shared helpers of the benchmarks: timing, environment facts, JSON output, random models.

No real weights exist here, so the LLM benchmarks build random-initialised models of the real
shapes (speed does not depend on weight values) and a character-level fast tokenizer whose ids
index the vocabulary. Generation lengths are forced with ``min_new_tokens`` so that every run
produces exactly the number of tokens it is timed for.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".benchdata"  # ignored; corpus chunks and tokenizer.model carried to the GPU machine
CORPUS = REPO.parent / "shared" / "corpus"

# Real shapes (config.json of THUDM/chatglm3-6b and THUDM/glm-4-9b-chat-hf).
SHAPES: dict[str, dict[str, Any]] = {
    "chatglm3-6b": dict(
        num_hidden_layers=28, hidden_size=4096, intermediate_size=13696, num_attention_heads=32,
        num_key_value_heads=2, head_dim=128, vocab_size=65024, attention_bias=True,
        max_position_embeddings=8192,
    ),
    "glm4-9b": dict(
        num_hidden_layers=40, hidden_size=4096, intermediate_size=13696, num_attention_heads=32,
        num_key_value_heads=2, head_dim=128, vocab_size=151552, attention_bias=True,
        max_position_embeddings=131072,
    ),
    "tiny": dict(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=30000, attention_bias=True,
        max_position_embeddings=4096,
    ),
}

SPECIAL_TOKENS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                  "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
EOS_TOKENS = ["<|endoftext|>", "<|user|>", "<|observation|>"]
CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# ----- command line and output ---------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="tiny shapes on CPU, to check the script")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out")), help="folder for JSON")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions (median reported)")
    return p


def environment() -> dict[str, Any]:
    """Device, versions and host facts recorded with every result file."""
    import transformers

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, sm_count=props.multi_processor_count)
    return info


def write_result(out: Path, name: str, result: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"environment": environment(), **result}, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def print_table(title: str, rows: Iterable[tuple[Any, ...]], header: tuple[str, ...]) -> None:
    rows = [tuple(_fmt(v) for v in row) for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print(f"\n## {title}", flush=True)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), flush=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


# ----- timing ------------------------------------------------------------------------------


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of ``fn()`` with the GPU synchronized before and after."""
    sync()
    start = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - start, value


def median_time(fn: Callable[[], Any], *, repeat: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = [timed(fn)[0] for _ in range(repeat)]
    return statistics.median(times), times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# ----- tokenizer and models ----------------------------------------------------------------


def char_tokenizer(vocab_size: int) -> Any:
    """A character-level ``PreTrainedTokenizerFast`` (GLM specials, chat template) of ``vocab_size`` ids.

    Ids: the special tokens, then ASCII, CJK punctuation and the CJK block (U+4E00..) as single
    characters (what text encodes to), then filler tokens ``<n>`` up to ``vocab_size``, so that
    every id a random model samples decodes to some text, as with a real tokenizer.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    chars += [chr(c) for c in range(0x3000, 0x3040)] + [chr(c) for c in range(0xFF00, 0xFF60)]
    chars += [chr(c) for c in range(0x4E00, 0xA000)]
    room = vocab_size - len(SPECIAL_TOKENS) - 1
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab["[UNK]"] = len(vocab)
    for ch in chars[:room]:
        vocab.setdefault(ch, len(vocab))
    while len(vocab) < vocab_size:
        vocab[f"<{len(vocab)}>"] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="[UNK]",
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t != "<|endoftext|>"], padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def glm_model(shape: str, *, device: str, dtype: torch.dtype, tokenizer: Any) -> Any:
    """A random ``GlmForCausalLM`` of ``shape`` built directly on ``device`` (normal std 0.02 init)."""
    from transformers import GenerationConfig, GlmConfig, GlmForCausalLM

    dims = SHAPES[shape]
    eos_ids = tokenizer.convert_tokens_to_ids(EOS_TOKENS)
    config = GlmConfig(
        **dims, hidden_act="silu", rms_norm_eps=1e-5, attention_dropout=0.0, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, bos_token_id=None,
    )
    with torch.device(device):
        model = GlmForCausalLM._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
    return model.eval()


def weight_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def sanguo_chunks() -> list[str]:
    """Chunk texts of 三国演义 as ``kb.split_document`` makes them (400/80), from the corpus or the
    carried ``.benchdata/sanguo_chunks.json`` (written by ``python -m bench.prepare``)."""
    cached = DATA / "sanguo_chunks.json"
    if cached.is_file():
        return json.loads(cached.read_text(encoding="utf-8"))["chunks"]
    from kb import load_text, split_document

    text = load_text(CORPUS / "sanguo.txt")
    return [c.text for c in split_document(text, chunk_size=400, chunk_overlap=80)]


def replay_seconds(graph: Any, *, replays: int, skip: int = 1) -> float:
    """Median seconds of one replay of a captured CUDA ``graph`` (CUDA events), the first
    ``skip`` replays left out (clock ramp-up, first-touch)."""
    times = []
    for _ in range(replays + skip):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times[skip:])
