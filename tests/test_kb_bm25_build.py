"""BM25Index.build: a two-pass streaming build, bit-identical to bm25s.BM25.index, in bounded memory.

Regression (glmkb issue #9): building BM25 over a 100 MB novel (~112k chunks, ~25M tokens) held every
chunk's token ids and then bm25s's scores/doc/vocab arrays plus a sorted CSC copy, taking the build's
peak from ~1.4 GiB to 2.2 GiB RSS. The streaming build holds one chunk's tokens at a time.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import bm25s
import numpy as np
import pytest

from kb.bm25_index import BM25Index
from kb.splitting import split_document
from kb.tokenizing import tokenize


def reference_model(token_lists: Sequence[Sequence[str]]) -> bm25s.BM25:
    """The pre-streaming build: token ids in first-seen order, then ``bm25s.BM25().index``."""
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(t, len(vocab)) for t in tokens] for tokens in token_lists]
    model = bm25s.BM25()
    model.index(bm25s.tokenization.Tokenized(ids=ids, vocab=vocab), show_progress=False)
    return model


def assert_identical(built: bm25s.BM25, reference: bm25s.BM25) -> None:
    """Same arrays bit for bit (dtype, shape, bytes), same num_docs, same vocabulary in the same order."""
    for key in ("data", "indices", "indptr"):
        a, b = built.scores[key], reference.scores[key]
        assert a.dtype == b.dtype, key
        assert a.shape == b.shape, key
        assert a.tobytes() == b.tobytes(), key
    assert built.scores["num_docs"] == reference.scores["num_docs"]
    assert type(built.scores["num_docs"]) is int  # bm25s writes it into params.index.json
    assert list(built.vocab_dict.items()) == list(reference.vocab_dict.items())
    assert built.unique_token_ids_set == reference.unique_token_ids_set
    assert built.nonoccurrence_array is None and reference.nonoccurrence_array is None


@pytest.fixture(scope="module")
def sanguo_tokens(sanguo_path: Path) -> list[list[str]]:
    text = sanguo_path.read_text(encoding="utf-8")[:300_000]
    return [tokenize(c.text) for c in split_document(text, chunk_size=400, chunk_overlap=80)]


def test_streaming_build_is_bit_identical_to_bm25s_index(sanguo_tokens: list[list[str]]) -> None:
    built = BM25Index.build(lambda: iter(sanguo_tokens), list(range(len(sanguo_tokens))))
    assert built.model is not None
    assert len(sanguo_tokens) > 100  # 140 chunks from the excerpt, 900+ from the whole novel
    assert_identical(built.model, reference_model(sanguo_tokens))


def test_plain_list_and_callable_sources_give_the_same_index(sanguo_tokens: list[list[str]]) -> None:
    chunks = sanguo_tokens[:200]
    from_list = BM25Index.build(chunks, range(len(chunks))).model
    from_callable = BM25Index.build(lambda: (list(t) for t in chunks), range(len(chunks))).model
    assert from_list is not None and from_callable is not None
    assert_identical(from_list, from_callable)


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([["曹操"]], id="single-chunk-single-token"),
        pytest.param([["曹操", "刘备", "曹操", "曹", "操", "曹操"]], id="single-chunk-repeats"),
        pytest.param([[], ["刘备", "关羽"], [], ["关羽", "关羽", "张飞"], []], id="empty-chunks-between"),
        pytest.param([["a"] * 50, ["a"], ["b", "a", "b"]], id="repeated-tokens-lengths"),
        pytest.param([["", "x"], ["x"]], id="empty-string-token"),
    ],
)
def test_edge_cases_are_bit_identical(chunks: list[list[str]]) -> None:
    built = BM25Index.build(chunks, range(100, 100 + len(chunks))).model
    assert built is not None
    assert_identical(built, reference_model(chunks))


def test_zero_chunks_build_an_empty_index(tmp_path: Path) -> None:
    index = BM25Index.build(lambda: iter([]), [])
    assert index.model is None and len(index.ids) == 0
    assert index.search(["曹操"], 5) == []
    index.save(tmp_path / "bm25")
    assert BM25Index.load(tmp_path / "bm25", np.array([], dtype=np.int64)).search(["曹操"], 5) == []


def test_all_empty_chunks_build_and_search_nothing(tmp_path: Path) -> None:
    """bm25s.index raises on a corpus with no tokens at all (max() of an empty vocabulary); ours
    builds an index that finds nothing, also after a save/load round trip."""
    index = BM25Index.build([[], []], [7, 8])
    assert index.model is not None and index.model.scores["num_docs"] == 2
    assert index.search(["曹操"], 5) == []
    assert index.search([""], 5) == []
    index.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25", np.array([7, 8]))
    assert loaded.search(["曹操"], 5) == [] and loaded.search([""], 5) == []


def test_search_results_equal_the_reference_and_survive_save_load(sanguo_tokens: list[list[str]], tmp_path: Path) -> None:
    ids = np.arange(1000, 1000 + len(sanguo_tokens), dtype=np.int64)
    built = BM25Index.build(lambda: iter(sanguo_tokens), ids)
    reference = BM25Index(reference_model(sanguo_tokens), ids)
    built.save(tmp_path / "bm25")
    loaded = BM25Index.load(tmp_path / "bm25", ids)
    queries = ["曹操在哪里煮酒论英雄", "刘备三顾茅庐", "关羽温酒斩华雄", "董卓", "不在书里的词 xyz"]
    hits = 0
    for query in queries:
        tokens = tokenize(query)
        expected = reference.search(tokens, 10)
        assert built.search(tokens, 10) == expected
        assert loaded.search(tokens, 10) == expected
        hits += len(expected)
    assert hits >= 30  # the queries really match chunks, so equality above compares real rankings
    assert built.search(["", "董卓"], 3) == reference.search(["董卓"], 3)


def test_mismatched_ids_and_changing_sources_are_clear_errors() -> None:
    chunks = [["a", "b"], ["b", "c"]]
    with pytest.raises(ValueError, match="2 token lists for 3 chunk ids"):
        BM25Index.build(chunks, [1, 2, 3])
    with pytest.raises(TypeError, match="one-shot iterator"):
        BM25Index.build(iter(chunks), [1, 2])

    def changing(second: list[list[str]]):
        calls = iter([chunks, second])
        return lambda: iter(next(calls))

    for second in ([["a", "b"]], [["a", "b"], ["b", "c"], ["c"]], [["a", "b"], ["b", "zzz"]], [["a", "b"], ["c", "c"]], [["a"], ["b", "c"]]):
        with pytest.raises(ValueError, match="second pass"):
            BM25Index.build(changing(second), [1, 2])


SYNTHETIC_CHUNKS = 100_000
SYNTHETIC_TOKENS_PER_CHUNK = 30


def synthetic_chunks() -> Iterator[list[str]]:
    """~100k chunks over a Zipf-like 20k-word vocabulary plus one new token per chunk (names, numbers)."""
    rng = random.Random(9)
    words = [f"w{i}" for i in range(20_000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    pool = rng.choices(words, weights=weights, k=SYNTHETIC_TOKENS_PER_CHUNK * 997)
    for i in range(SYNTHETIC_CHUNKS):
        start = (i * 131) % (len(pool) - SYNTHETIC_TOKENS_PER_CHUNK)
        chunk = pool[start : start + SYNTHETIC_TOKENS_PER_CHUNK]
        chunk.append(f"u{i}")
        yield chunk


def traced_peak(build) -> tuple[int, bm25s.BM25]:
    tracemalloc.start()
    try:
        model = build()
        return tracemalloc.get_traced_memory()[1], model
    finally:
        tracemalloc.stop()


@pytest.mark.slow  # ~20 s: tracemalloc slows both builds several-fold
def test_streaming_build_peak_memory_is_a_fraction_of_bm25s_index() -> None:
    """Regression for issue #9: over 100k chunks the streaming build's peak is the final index plus
    the vocabulary, well under half of what the pre-streaming build (int32 ids + bm25s.index) needs."""
    new_peak, built = traced_peak(lambda: BM25Index.build(synthetic_chunks, range(SYNTHETIC_CHUNKS)).model)
    nnz = len(built.scores["data"])
    assert nnz > 2_500_000

    def old_build() -> bm25s.BM25:
        vocab: dict[str, int] = {}
        arrays = [np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), dtype=np.int32) for tokens in synthetic_chunks()]
        model = bm25s.BM25()
        model.index(bm25s.tokenization.Tokenized(ids=_Lists(arrays), vocab=vocab), show_progress=False)
        return model

    old_peak, reference = traced_peak(old_build)
    assert_identical(built, reference)
    index_bytes = built.scores["data"].nbytes + built.scores["indices"].nbytes + built.scores["indptr"].nbytes
    assert new_peak < 0.4 * old_peak, (new_peak, old_peak)
    assert new_peak < index_bytes + 40 * 2**20, (new_peak, index_bytes)


class _Lists(Sequence[list[int]]):
    """The pre-streaming build's view of int32 arrays as short-lived lists, as bm25s reads them."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> list[int]:  # type: ignore[override]
        return self.arrays[index].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (a.tolist() for a in self.arrays)


def test_jiebas_dictionary_cache_lives_in_the_users_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: jieba kept one ``jieba.cache`` in the system temp folder for every user of a machine and
    loads it unchecked for its default dictionary, so on a shared server the first user's file decided
    everyone's segmentation and the others' writes failed with a logged traceback."""
    import jieba

    from kb.tokenizing import cache_dir, use_private_cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache" / "glmkb"
    tokenizer = jieba.Tokenizer()
    use_private_cache(tokenizer)
    tokenizer.initialize()
    assert (cache_dir() / "jieba.cache").is_file()
    assert tokenizer.lcut("刘备三顾茅庐") == jieba.lcut("刘备三顾茅庐")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a folder")
    other = jieba.Tokenizer()
    use_private_cache(other)  # cannot be made: jieba's default stays
    assert other.tmp_dir is None
