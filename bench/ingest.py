"""Ingest: embedding the chunked 三国演义, and the share of a build spent outside embedding.

    python -m bench.ingest --gpu      # GPU machine: text2vec-large shape (BERT-large), fp16
    python -m bench.ingest --cpu      # here: a small encoder (bge-small-zh shape) and real builds

The encoders are random-initialised BERTs of the real shapes with a character-level BERT vocab of
21128 entries (like bert-base-chinese's), saved as a local folder and loaded through
``kb.embedding.load_embeddings`` exactly as ``ingest build`` does (sentence-transformers under
LangChain's ``HuggingFaceEmbeddings``, fp16 on CUDA, normalized); the chunks are embedded the
way ``KnowledgeBase`` does it (``embed_documents`` per batch of ``embedding.batch_size`` = 64).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO, parser, print_table, sanguo_chunks, sync, write_result

ENCODERS = {
    # GanymedeNil/text2vec-large-chinese (BERT-large): 24 layers, 1024 dims.
    "text2vec-large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
    # BAAI/bge-small-zh-v1.5: 4 layers, 512 dims.
    "bge-small-zh": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "tiny": dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64),
}
VOCAB_SIZE = 21128


def import_kb_embedding() -> Any:
    """``kb.embedding``; on a machine without kb's other dependencies (faiss, jieba, bm25s: the GPU
    machine) its package ``__init__`` is skipped, since ``kb.embedding`` itself needs none of them."""
    try:
        import kb.embedding as embedding

        return embedding
    except ImportError:
        package = types.ModuleType("kb")
        package.__path__ = [str(REPO / "kb")]
        sys.modules["kb"] = package
        import kb.embedding as embedding

        return embedding


def bert_vocab() -> list[str]:
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(0x3000, 0x3040)]
    chars += [chr(c) for c in range(0xFF00, 0xFF60)] + [chr(c) for c in range(0x4E00, 0xA000)]
    vocab = specials + chars
    vocab += [f"##{c}" for c in chars]  # bert-base-chinese also holds ## pieces
    return vocab[:VOCAB_SIZE]


def encoder_folder(shape: str, folder: Path) -> Path:
    """A sentence-transformers folder (BERT of ``shape``, char vocab, mean pooling), random weights."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bert_dir = folder / "bert"
    bert_dir.mkdir(exist_ok=True)
    (bert_dir / "vocab.txt").write_text("\n".join(bert_vocab()) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(bert_dir / "vocab.txt"), tokenize_chinese_chars=True).save_pretrained(bert_dir)
    config = BertConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=512, **ENCODERS[shape])
    torch.manual_seed(0)
    BertModel(config).save_pretrained(bert_dir)
    word = models.Transformer(str(bert_dir), max_seq_length=512)
    dimension = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = models.Pooling(dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(folder / "st"))
    return folder / "st"


class TimedEmbeddings:
    """Wraps a LangChain ``Embeddings`` and adds up the seconds spent in ``embed_documents``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        start = time.perf_counter()
        try:
            return self.inner.embed_documents(texts)
        finally:
            sync()
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)


def embed_like_kb(embeddings: Any, texts: list[str], batch_size: int) -> float:
    """Seconds to embed ``texts`` as ``kb.build.embedder`` does (one call per batch)."""
    sync()
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        embeddings.embed_documents(texts[i : i + batch_size])
    sync()
    return time.perf_counter() - start


def bench_embedding(shape: str, device: str, texts: list[str], *, repeat: int, work: Path) -> dict[str, Any]:
    embedding = import_kb_embedding()
    folder = encoder_folder(shape, work / shape)
    started = time.perf_counter()
    embeddings = embedding.load_embeddings(str(folder), device=device, batch_size=64)
    load_s = time.perf_counter() - started
    model = embeddings._client
    out: dict[str, Any] = {"encoder": shape, "device": device, "dtype": str(next(model.parameters()).dtype),
                           "chunks": len(texts), "characters": sum(map(len, texts)), "load_s": load_s}
    embed_like_kb(embeddings, texts[:64], 64)  # warm-up
    times = [embed_like_kb(embeddings, texts, 64) for _ in range(repeat)]
    out["kb_batches_64_s"] = statistics.median(times)
    out["kb_batches_64_times"] = times
    out["chunks_per_s"] = len(texts) / out["kb_batches_64_s"]
    if device.startswith("cuda"):
        # What one embed_documents call over every chunk gives (sentence-transformers sorts all
        # chunks by length, so batches pad less) with larger batches.
        for size in (128, 256):
            sync()
            start = time.perf_counter()
            model.encode(texts, batch_size=size, normalize_embeddings=True, show_progress_bar=False)
            sync()
            out[f"one_call_batch_{size}_s"] = time.perf_counter() - start
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def bench_build(shape: str, text: str, work: Path) -> dict[str, Any]:
    """A real ``KnowledgeBase.add_texts`` build with ``shape`` on CPU: total vs embedding seconds,
    and the same text keyword-only (no embedding at all)."""
    from kb import KnowledgeBase
    from kb.embedding import load_embeddings

    folder = encoder_folder(shape, work / f"build-{shape}")
    timed_embeddings = TimedEmbeddings(load_embeddings(str(folder), device="cpu", batch_size=64))
    kb = KnowledgeBase(work / "kbs", "dense", create=True, embedding_model=str(folder), device="cpu")
    kb.set_embeddings(timed_embeddings)
    report = kb.add_texts({"sanguo-part": text})
    keyword = KnowledgeBase(work / "kbs", "keyword", create=True, embedding_model="none")
    keyword_report = keyword.add_texts({"sanguo-part": text})
    return {
        "encoder": shape,
        "characters": len(text),
        "chunks": report.chunks_added,
        "build_s": report.seconds,
        "embedding_s": timed_embeddings.seconds,
        "outside_embedding_s": report.seconds - timed_embeddings.seconds,
        "outside_embedding_share": 1 - timed_embeddings.seconds / report.seconds,
        "keyword_only_build_s": keyword_report.seconds,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="text2vec-large shape on CUDA, whole novel")
    p.add_argument("--cpu", action="store_true", help="small encoder on CPU: chunks/s and build shares")
    p.add_argument("--cpu-chunks", type=int, default=160, help="chunks embedded on CPU (the novel has ~1900)")
    args = p.parse_args()
    texts = sanguo_chunks()
    result: dict[str, Any] = {"corpus_chunks": len(texts), "corpus_characters": sum(map(len, texts))}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.gpu or args.tiny:
            shape, device = ("tiny", "cpu") if args.tiny else ("text2vec-large", "cuda")
            chosen = texts[:64] if args.tiny else texts
            gpu = bench_embedding(shape, device, chosen, repeat=args.repeat, work=work)
            result["gpu_embedding"] = gpu
            rows.append((f"{shape} {device} {gpu['dtype']}", gpu["chunks"], gpu["kb_batches_64_s"], gpu["chunks_per_s"]))
            write_result(args.out, "ingest_gpu" if not args.tiny else "ingest_tiny", result)
        if args.cpu:
            shape = "tiny" if args.tiny else "bge-small-zh"
            subset = texts[: args.cpu_chunks]
            cpu = bench_embedding(shape, "cpu", subset, repeat=1, work=work)
            result["cpu_embedding"] = cpu
            rows.append((f"{shape} cpu {cpu['dtype']}", cpu["chunks"], cpu["kb_batches_64_s"], cpu["chunks_per_s"]))
            # A build of the same passage (the chunker sees the text, so overlap makes ~the same count).
            from bench.common import CORPUS
            from kb import load_text

            full = load_text(CORPUS / "sanguo.txt")
            part = full[: int(len(full) * len(subset) / len(texts))]
            result["cpu_build"] = bench_build(shape, part, work)
            with tempfile.TemporaryDirectory() as tmp2:
                from kb import KnowledgeBase

                start = time.perf_counter()
                report = KnowledgeBase(Path(tmp2), "all", create=True, embedding_model="none").add_texts({"sanguo": full})
                result["keyword_only_full_novel"] = {"build_s": report.seconds, "wall_s": time.perf_counter() - start,
                                                     "chunks": report.chunks_added}
            write_result(args.out, "ingest_cpu", result)
    print_table("ingest: embedding the chunked 三国演义 (kb batches of 64)", rows, ("encoder", "chunks", "seconds", "chunks/s"))
    if "cpu_build" in result:
        b = result["cpu_build"]
        print(f"CPU build of {b['chunks']} chunks: {b['build_s']:.1f} s, embedding {b['embedding_s']:.1f} s, "
              f"outside embedding {100 * b['outside_embedding_share']:.1f}%; keyword-only full novel "
              f"{result['keyword_only_full_novel']['build_s']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
