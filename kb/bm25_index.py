"""A persisted BM25 keyword index over jieba tokens (bm25s; saved as .npy + JSON, never pickle)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import bm25s
import numpy as np

from kb.errors import KnowledgeBaseError

# bm25s sets its own logger to DEBUG on import, which leaks "Building index" lines to stderr.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class _TokenIdLists(Sequence[list[int]]):
    """Chunks' token ids kept as int32 arrays; bm25s gets each chunk as a short-lived list."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> list[int]:  # type: ignore[override]
        return self.arrays[index].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (a.tolist() for a in self.arrays)


class BM25Index:
    """BM25 scores of chunks; row ``i`` of the index is chunk ``ids[i]``."""

    def __init__(self, model: bm25s.BM25 | None, ids: np.ndarray) -> None:
        self.model = model
        self.ids = ids

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], ids: Sequence[int]) -> BM25Index:
        """Index pre-tokenized chunks (see ``kb.tokenizing.tokenize``), read one chunk at a time.

        Tokens become int32 ids through one vocabulary as they arrive, so a build holds about
        4 bytes per token instead of a Python string (~80 bytes) per token.
        """
        ids_array = np.asarray(ids, dtype=np.int64)
        if len(ids_array) == 0:
            return cls(None, ids_array)
        vocab: dict[str, int] = {}
        arrays = [np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), dtype=np.int32) for tokens in token_lists]
        model = bm25s.BM25()
        model.index(bm25s.tokenization.Tokenized(ids=_TokenIdLists(arrays), vocab=vocab), show_progress=False)
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
            raise KnowledgeBaseError(f"BM25 index in {folder} is unreadable ({e}); rebuild the knowledge base") from e
        if int(model.scores["num_docs"]) != len(ids):
            raise KnowledgeBaseError(f"BM25 index in {folder} does not match the docstore; rebuild the knowledge base")
        return cls(model, ids)

    def search(self, query_tokens: list[str], k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(chunk_id, score)`` pairs with a positive score, best first."""
        if self.model is None or k <= 0:
            return []
        token_ids = self.model.get_tokens_ids(query_tokens)
        if not token_ids:
            return []
        scores = self.model.get_scores(token_ids)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [(int(self.ids[i]), float(scores[i])) for i in top if scores[i] > 0]
