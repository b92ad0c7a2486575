"""Retrieval latency on CPU: flat vs an automatically chosen approximate index, and hybrid with BM25.

    python -m bench.retrieval                     # 10k, 100k, 1M (1M needs ~5 GB RAM, a few minutes)
    python -m bench.retrieval --tiny              # check the script (2k, 20k)

Vectors: 1024 dims, unit length, drawn around cluster centres (one per 100 vectors, noise such
that a vector's cosine to its centre is ~0.6), because uniform random vectors in 1024 dimensions
have no neighbourhood structure for any approximate index to use, unlike real embeddings.
Queries: fresh vectors drawn the same way. Latency: one query per ``search`` call (as
``KnowledgeBase.search`` does), p50/p99 over ``--queries``; recall@10 against the flat index.

The index choice (``choose_index``) is what we propose for ``kb``: flat (exact) up to
``FLAT_LIMIT`` vectors, IVF-Flat above, with ``nlist`` ~ 2*sqrt(n) and ``nprobe`` from the
measured recall table.

Hybrid at 100k: the kb's own pieces (``kb.tokenize`` of a real question from the sanguo QA set,
``BM25Index.search`` over 100k real chunks of 三国演义 and 西游记 repeated, the flat dense
search, ``reciprocal_rank_fusion``), depth ``CANDIDATE_DEPTH`` as ``KnowledgeBase.search``;
embedding the question is not included (it is measured by bench.ingest).
"""

from __future__ import annotations

import math
import time
from typing import Any

import faiss
import numpy as np

from bench.common import CORPUS, REPO, parser, percentile, print_table, write_result

DIM = 1024
FLAT_LIMIT = 200_000
CHUNK = 100_000
K = 10


def choose_index(n: int, dim: int) -> tuple[Any, dict[str, Any]]:
    """The proposed automatic choice: exact inner-product search up to ``FLAT_LIMIT`` vectors,
    IVF-Flat (inner product) above it; returns the untrained index and its parameters."""
    if n <= FLAT_LIMIT:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), {"kind": "flat"}
    nlist = 1 << round(math.log2(2 * math.sqrt(n)))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.nprobe = 32
    return index, {"kind": "ivf_flat", "nlist": nlist, "quantizer": quantizer}


def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """``n`` unit vectors around random ``centres`` (cosine ~0.6 to their centre)."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(centres), size=n)
    x = centres[pick] + rng.standard_normal((n, DIM), dtype=np.float32) * (1.33 / math.sqrt(DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Graded:
    """Vectors with graded neighbourhoods, like chunks of books: topic (1 per 1000 vectors) ->
    passage group (1 per 10, cosine ~0.7 to its topic) -> vector (cosine ~0.8 to its group)."""

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(2024)
        topics = unit(rng.standard_normal((max(1, n // 1000), DIM), dtype=np.float32))
        groups = max(1, n // 10)
        pick = rng.integers(0, len(topics), size=groups)
        self.groups = unit(topics[pick] + rng.standard_normal((groups, DIM), dtype=np.float32) * (1.02 / math.sqrt(DIM)))

    def draw(self, count: int, seed: int, *, first: int | None = None) -> np.ndarray:
        """``count`` vectors; with ``first`` vector i belongs to group (first + i) // 10, else groups are random."""
        rng = np.random.default_rng(seed)
        if first is None:
            index = rng.integers(0, len(self.groups), size=count)
        else:
            index = (np.arange(first, first + count) // 10) % len(self.groups)
        return unit(self.groups[index] + rng.standard_normal((count, DIM), dtype=np.float32) * (0.75 / math.sqrt(DIM)))


def make_centres(n: int) -> np.ndarray:
    c = np.random.default_rng(12345).standard_normal((max(1, n // 100), DIM), dtype=np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def chunks_of(n: int) -> list[tuple[int, int]]:
    return [(start, min(n, start + CHUNK)) for start in range(0, n, CHUNK)]


def latencies(search: Any, queries: np.ndarray) -> list[float]:
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - start)
    return times


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def bench_size(n: int, *, queries: int, flat_queries: int, data: str = "clusters", hnsw: bool = False) -> dict[str, Any]:
    if data == "graded":
        model = Graded(n)

        def draw(count: int, seed: int, first: int | None = None) -> np.ndarray:
            return model.draw(count, seed, first=first)
    else:
        centres = make_centres(n)

        def draw(count: int, seed: int, first: int | None = None) -> np.ndarray:
            return clustered(count, seed, centres)

    q = draw(queries, 999)
    out: dict[str, Any] = {"n": n, "data": data}
    # Flat: the kb's current index.
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    start = time.perf_counter()
    for i, (a, b) in enumerate(chunks_of(n)):
        flat.add_with_ids(draw(b - a, i, a), np.arange(a, b, dtype=np.int64))
    out["flat_build_s"] = time.perf_counter() - start
    times = latencies(lambda x: flat.search(x, K), q[:flat_queries])
    out["flat_p50_ms"], out["flat_p99_ms"] = 1e3 * percentile(times, 50), 1e3 * percentile(times, 99)
    out["flat_queries"] = len(times)
    _, truth = flat.search(q, K)
    del flat
    if hnsw:
        out["hnsw"] = bench_hnsw(n, draw, q, truth)
    index, params = choose_index(n, DIM)
    out["auto_index"] = params["kind"]
    if params["kind"] == "flat":
        return out
    out["nlist"] = params["nlist"]
    start = time.perf_counter()
    train = draw(min(n, 50 * params["nlist"]), 10_000)
    index.train(train)
    del train
    out["ivf_train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for i, (a, b) in enumerate(chunks_of(n)):
        index.add_with_ids(draw(b - a, i, a), np.arange(a, b, dtype=np.int64))
    out["ivf_add_s"] = time.perf_counter() - start
    table = []
    for nprobe in (8, 16, 32, 64, 128, 256):
        index.nprobe = nprobe
        _, found = index.search(q, K)
        times = latencies(lambda x: index.search(x, K), q)
        table.append({"nprobe": nprobe, "recall_at_10": recall_at_k(found, truth),
                      "p50_ms": 1e3 * percentile(times, 50), "p99_ms": 1e3 * percentile(times, 99)})
    out["ivf"] = table
    return out


def bench_hnsw(n: int, draw: Any, q: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """HNSW (M=32) for comparison: build time, and recall / latency per efSearch."""
    index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    start = time.perf_counter()
    for i, (a, b) in enumerate(chunks_of(n)):
        index.add(draw(b - a, i, a))
    out: dict[str, Any] = {"M": 32, "efConstruction": 64, "build_s": time.perf_counter() - start, "table": []}
    for ef in (32, 64, 128, 256):
        index.hnsw.efSearch = ef
        _, found = index.search(q, K)
        times = latencies(lambda x: index.search(x, K), q)
        out["table"].append({"efSearch": ef, "recall_at_10": recall_at_k(found, truth),
                             "p50_ms": 1e3 * percentile(times, 50), "p99_ms": 1e3 * percentile(times, 99)})
    return out


def corpus_chunks() -> list[str]:
    from kb import load_text, split_document

    texts = []
    for name in ("sanguo.txt", "xiyouji.txt"):
        texts += [c.text for c in split_document(load_text(CORPUS / name), chunk_size=400, chunk_overlap=80)]
    return texts


def bench_hybrid(n: int, *, queries: int) -> dict[str, Any]:
    from kb import load_qa, reciprocal_rank_fusion, tokenize
    from kb.bm25_index import BM25Index
    from kb.search import CANDIDATE_DEPTH

    start = time.perf_counter()
    unique = corpus_chunks()
    tokens = [tokenize(t) for t in unique]
    tokenize_s = time.perf_counter() - start
    repeated = [tokens[i % len(tokens)] for i in range(n)]
    start = time.perf_counter()
    bm25 = BM25Index.build(repeated, list(range(n)))
    bm25_build_s = time.perf_counter() - start
    centres = make_centres(n)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    for i, (a, b) in enumerate(chunks_of(n)):
        flat.add_with_ids(clustered(b - a, i, centres), np.arange(a, b, dtype=np.int64))
    questions = [item.q for item in load_qa(REPO / "tests" / "data" / "sanguo_qa.jsonl")]
    vectors = clustered(queries, 999, centres)
    depth = max(CANDIDATE_DEPTH, 4 * 5)

    def hybrid(i: int) -> list[tuple[int, float]]:
        sparse = bm25.search(tokenize(questions[i % len(questions)]), depth)
        scores, ids = flat.search(vectors[i : i + 1], depth)
        dense = [int(x) for x in ids[0] if x >= 0]
        return reciprocal_rank_fusion([dense, [j for j, _ in sparse]])[:5]

    hybrid(0)
    times, bm25_times = [], []
    for i in range(queries):
        start = time.perf_counter()
        hybrid(i)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        bm25.search(tokenize(questions[i % len(questions)]), depth)
        bm25_times.append(time.perf_counter() - start)
    return {"n": n, "unique_chunks": len(unique), "tokenize_unique_s": tokenize_s, "bm25_build_s": bm25_build_s,
            "hybrid_p50_ms": 1e3 * percentile(times, 50), "hybrid_p99_ms": 1e3 * percentile(times, 99),
            "bm25_p50_ms": 1e3 * percentile(bm25_times, 50), "bm25_p99_ms": 1e3 * percentile(bm25_times, 99),
            "queries": queries, "depth": depth}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--flat-queries-1m", type=int, default=30)
    p.add_argument("--hybrid-n", type=int, default=100_000)
    p.add_argument("--data", choices=("clusters", "graded"), default="clusters",
                   help="clusters: 100 near-equidistant vectors per centre; graded: topic > group > vector")
    p.add_argument("--hnsw-max", type=int, default=0, help="also build HNSW for sizes up to this")
    p.add_argument("--skip-hybrid", action="store_true")
    args = p.parse_args()
    sizes = [2000, 20000] if args.tiny else [int(s) for s in args.sizes.split(",")]
    if args.tiny:
        global FLAT_LIMIT
        FLAT_LIMIT = 5000
    result: dict[str, Any] = {"dim": DIM, "k": K, "flat_limit": FLAT_LIMIT, "faiss": faiss.__version__,
                              "faiss_threads": faiss.omp_get_max_threads(), "sizes": []}
    rows = []
    for n in sizes:
        r = bench_size(n, queries=args.queries, flat_queries=args.queries if n < 1_000_000 else args.flat_queries_1m,
                       data=args.data, hnsw=n <= args.hnsw_max)
        result["sizes"].append(r)
        rows.append((n, "flat", "", r["flat_p50_ms"], r["flat_p99_ms"], 1.0))
        for row in r.get("ivf", []):
            rows.append((n, f"ivf nlist={r['nlist']}", row["nprobe"], row["p50_ms"], row["p99_ms"], row["recall_at_10"]))
        for row in r.get("hnsw", {}).get("table", []):
            rows.append((n, "hnsw M=32", f"ef={row['efSearch']}", row["p50_ms"], row["p99_ms"], row["recall_at_10"]))
        write_result(args.out, f"retrieval_{args.data}", result)
    print_table(f"dense search, one query per call (CPU, {args.data} vectors)", rows,
                ("n", "index", "nprobe", "p50 ms", "p99 ms", "recall@10"))
    if args.skip_hybrid:
        return
    h = bench_hybrid(2000 if args.tiny else args.hybrid_n, queries=50 if args.tiny else args.queries)
    result["hybrid"] = h
    write_result(args.out, f"retrieval_{args.data}", result)
    print(f"hybrid at {h['n']}: p50 {h['hybrid_p50_ms']:.1f} ms, p99 {h['hybrid_p99_ms']:.1f} ms "
          f"(BM25 alone p50 {h['bm25_p50_ms']:.1f} ms)", flush=True)


if __name__ == "__main__":
    main()
