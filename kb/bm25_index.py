"""A persisted BM25 keyword index over jieba tokens (bm25s; saved as .npy + JSON, never pickle)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
from bm25s.scoring import _build_idf_array, _select_idf_scorer, _select_tfc_scorer
from tqdm.auto import tqdm

from kb.manifest import damaged

# bm25s sets its own logger to DEBUG on import, which leaks "Building index" lines to stderr.
logging.getLogger("bm25s").setLevel(logging.WARNING)

# What ``BM25Index.build`` reads twice: a zero-argument callable returning a fresh iterable of
# chunks' tokens (e.g. ``DocStore.chunk_tokens``), or a re-iterable collection such as a list.
TokenSource = Callable[[], Iterable[Sequence[str]]] | Iterable[Sequence[str]]
# bm25s.BM25.index adds this token to the vocabulary (id = last id + 1) for empty queries.
EMPTY_TOKEN = ""


@dataclass
class _CorpusCounts:
    """What the first pass learns: the vocabulary and, per chunk and per token, the counts."""

    vocab: dict[str, int]
    doc_lengths: np.ndarray  # int64, tokens per chunk
    doc_freqs: np.ndarray  # int64, chunks containing each token id


class BM25Index:
    """BM25 scores of chunks; row ``i`` of the index is chunk ``ids[i]``."""

    def __init__(self, model: bm25s.BM25 | None, ids: np.ndarray) -> None:
        self.model = model
        self.ids = ids

    @classmethod
    def build(cls, token_lists: TokenSource, ids: Sequence[int], *, show_progress: bool = False) -> BM25Index:
        """Index pre-tokenized chunks (see ``kb.tokenizing.tokenize``) in two streaming passes.

        ``token_lists`` is read twice, one chunk at a time, so no pass holds more than one chunk's
        tokens: pass 1 counts the vocabulary, chunk lengths and document frequencies; pass 2 writes
        each chunk's scores straight into the final sparse (CSC) arrays. Memory is the index itself
        (8 bytes per distinct token of a chunk) plus the vocabulary, instead of bm25s's several
        index-sized intermediates. Scores, vocabulary ids and arrays are bit-identical to
        ``bm25s.BM25().index`` on the same tokens, using bm25s's own scoring functions.
        """
        ids_array = np.asarray(ids, dtype=np.int64)
        if len(ids_array) == 0:
            return cls(None, ids_array)
        read = _rereadable(token_lists)
        model = bm25s.BM25()
        counts = _count_corpus(_progress(read(), "BM25 vocabulary", len(ids_array), show_progress))
        if len(counts.doc_lengths) != len(ids_array):
            raise ValueError(f"BM25 build got {len(counts.doc_lengths)} token lists for {len(ids_array)} chunk ids; pass one token list per chunk id")
        scores = _score_corpus(_progress(read(), "BM25 scores", len(ids_array), show_progress), counts, model)
        _attach_index(model, scores, counts.vocab)
        return cls(model, ids_array)

    def save(self, folder: Path) -> None:
        """Write the index into ``folder`` (sparse matrix as .npy with allow_pickle=False, vocab JSON)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.model is not None:
            self.model.save(str(folder), allow_pickle=False, show_progress=False)

    @classmethod
    def load(cls, folder: Path, ids: np.ndarray) -> BM25Index:
        """Read an index saved by :meth:`save`; ``ids`` are the chunk ids in index order."""
        if len(ids) == 0:
            return cls(None, ids)
        try:
            model = bm25s.BM25.load(str(folder), allow_pickle=False, mmap=False, show_progress=False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise damaged(folder.parent.parent.name, f"its BM25 index in {folder} is unreadable ({e})") from e
        if int(model.scores["num_docs"]) != len(ids):
            raise damaged(folder.parent.parent.name, f"its BM25 index in {folder} does not match the docstore")
        return cls(model, ids)

    def search(self, query_tokens: list[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(chunk_id, score)`` pairs with a positive score, best first."""
        if self.model is None or k <= 0:
            return []
        # The empty token's id lies past the matrix (as in bm25s.index); bm25s would raise on it.
        n_indexed = len(self.model.scores["indptr"]) - 1
        token_ids = [i for i in self.model.get_tokens_ids(query_tokens) if i < n_indexed]
        if not token_ids:
            return []
        scores = self.model.get_scores(token_ids)
        top = _best_rows(scores, k)
        return [(int(self.ids[i]), float(scores[i])) for i in top]


def _best_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best positive scores, best first, ties to the earlier row.

    Every row tied with the k-th score is a candidate before the cut: ``argpartition`` alone keeps
    an arbitrary subset of a tie at the boundary, so ``k=1`` could return a chunk that ``k=5`` ranks
    second (two copies of a text tie exactly), and bm25 and hybrid modes disagreed on the top hit.
    """
    rows = np.flatnonzero(scores > 0)
    if len(rows) > k:
        kth = np.partition(scores[rows], len(rows) - k)[len(rows) - k]
        rows = rows[scores[rows] >= kth]
    return rows[np.lexsort((rows, -scores[rows]))][:k]


def _rereadable(token_lists: TokenSource) -> Callable[[], Iterable[Sequence[str]]]:
    """A callable giving a fresh pass over the chunks' tokens each time it is called."""
    if callable(token_lists):
        return token_lists
    if isinstance(token_lists, Iterator):
        raise TypeError(
            "BM25Index.build reads the chunks' tokens twice and got a one-shot iterator; "
            "pass a list or a zero-argument callable returning a fresh iterator (e.g. store.chunk_tokens)"
        )
    return lambda: token_lists


def _progress(chunks: Iterable[Sequence[str]], desc: str, total: int, show: bool) -> Iterable[Sequence[str]]:
    """One pass over the chunks, with a progress bar when asked (a 100 MB file is ~112k chunks)."""
    return tqdm(chunks, desc=desc, total=total, unit="chunk", disable=not show, leave=False)


def _count_corpus(chunks: Iterable[Sequence[str]]) -> _CorpusCounts:
    """Pass 1: chunk lengths, and per token the number of chunks holding it.

    Token ids follow first appearance across the chunks (what the pre-streaming build handed to
    bm25s): the counter's keys keep insertion order and each chunk adds its new tokens in order.
    """
    doc_counts: Counter[str] = Counter()
    lengths: list[int] = []
    for tokens in chunks:
        lengths.append(len(tokens))
        doc_counts.update(dict.fromkeys(tokens).keys())  # distinct tokens, first-seen order
    vocab = {token: i for i, token in enumerate(doc_counts)}
    doc_freqs = np.fromiter(doc_counts.values(), dtype=np.int64, count=len(doc_counts))
    return _CorpusCounts(vocab=vocab, doc_lengths=np.array(lengths, dtype=np.int64), doc_freqs=doc_freqs)


def _score_corpus(chunks: Iterable[Sequence[str]], counts: _CorpusCounts, model: bm25s.BM25) -> dict:
    """Pass 2: each chunk's BM25 scores written into the CSC arrays bm25s would build (column = token id,
    rows = chunks in order), with bm25s's idf and term-frequency functions and dtypes."""
    vocab, lengths, doc_freqs = counts.vocab, counts.doc_lengths, counts.doc_freqs
    n_docs = len(lengths)
    avg_doc_len = lengths.mean()  # np.float64, exactly as bm25s computes it (it sets the tfc dtype)
    idf = _build_idf_array(
        doc_frequencies=dict(enumerate(doc_freqs.tolist())),
        n_docs=n_docs,
        compute_idf_fn=_select_idf_scorer(model.idf_method),
        dtype=model.dtype,
    )
    tfc_fn = _select_tfc_scorer(model.method)
    indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
    np.cumsum(doc_freqs, out=indptr[1:])
    data = np.empty(int(indptr[-1]), dtype=model.dtype)
    indices = np.empty(int(indptr[-1]), dtype=model.int_dtype)
    heads = indptr[:-1].copy()  # next free slot of each token's column
    doc = -1
    try:
        for doc, tokens in enumerate(chunks):
            if doc >= n_docs or len(tokens) != lengths[doc]:
                raise _changed_between_passes()
            if not tokens:
                continue
            voc_ind, tf = _term_counts(tokens, vocab, model)
            tfc = tfc_fn(tf_array=tf, l_d=len(tokens), l_avg=avg_doc_len, k1=model.k1, b=model.b, delta=model.delta)
            slots = heads[voc_ind]  # token ids are distinct within voc_ind
            data[slots] = idf[voc_ind] * tfc
            indices[slots] = doc
            heads[voc_ind] += 1
    except (KeyError, IndexError) as e:
        raise _changed_between_passes() from e
    # Per-token chunk counts must match pass 1, or columns would hold other tokens' scores.
    if doc + 1 != n_docs or not np.array_equal(heads, indptr[1:]):
        raise _changed_between_passes()
    return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}


def _term_counts(tokens: Sequence[str], vocab: dict[str, int], model: bm25s.BM25) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's distinct token ids and their counts, in first-seen order: what bm25s's
    ``_get_counts_from_token_ids`` returns for the chunk's ids, counted on the strings so that only
    distinct tokens are looked up in the vocabulary."""
    counts = Counter(tokens)
    voc_ind = np.fromiter(map(vocab.__getitem__, counts), dtype=model.int_dtype, count=len(counts))
    tf = np.fromiter(counts.values(), dtype=model.dtype, count=len(counts))
    return voc_ind, tf


def _changed_between_passes() -> ValueError:
    return ValueError("BM25 build read different tokens on its second pass over the chunks; the token source must give the same chunks each time")


def _attach_index(model: bm25s.BM25, scores: dict, vocab: dict[str, int]) -> None:
    """Set on ``model`` what ``bm25s.BM25.index`` sets, so save/load/get_scores work unchanged."""
    if EMPTY_TOKEN not in vocab:
        vocab[EMPTY_TOKEN] = len(vocab)  # bm25s: max(vocab ids) + 1, and our ids are 0..n-1
    model.scores = scores
    model.vocab_dict = vocab
    model.unique_token_ids_set = set(vocab.values())
    model.nonoccurrence_array = None  # only bm25l/bm25+ use one; the default method is lucene
