"""Chinese word tokenization for BM25 (jieba's dictionary and algorithm), shared by indexing and querying.

Words are cut by ``rjieba`` (jieba-rs, jieba's algorithm and dictionary in Rust): 3.3 s -> 0.15 s for
the 1,326 chunks of 三国演义 here, the same words in 1,326 of 1,326 chunks (西游记: 1,596 of 1,598; the
rest differ by one word, e.g. 常在 against 常 / 在). jieba was half of a whole-novel ``ingest build``
on a GPU machine (docs/PERFORMANCE.md). Knowledge bases built before record ``jieba.cut_for_search``
as their ``tokenizer``: their queries are cut by jieba until a build re-tokenizes them.

Text is folded to simplified characters first (``kb.script``; the stored text stays as it is), so that
keyword search does not depend on the script: a question in simplified finds a traditional-script
novel (a Big5 天龍八部) and the reverse, and traditional text gets jieba's (simplified) dictionary and
stopwords. Measured on the sanguo QA set (docs/KB.md, "Retrieval across scripts"): recall@5 of
simplified questions against the traditional text 0.500 -> 0.729, the same as simplified against
simplified. Full-width letters and digits (ＧＤＰ, 第１回, common in Chinese documents typed with a
full-width IME) are folded to their plain forms too (Unicode NFKC), so ``GDP`` finds ＧＤＰ and the reverse.
Knowledge bases built before record no ``script`` (or no ``width``) in their manifest's ``bm25`` section
(``kb.build.BM25_SETTINGS``); their queries stay unfolded that way until a build re-tokenizes them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import unicodedata
from pathlib import Path
from typing import Any

from kb.script import SCRIPT, fold_script

WIDTH = "nfkc"  # the width folding a knowledge base's manifest records (kb.build.BM25_SETTINGS)
WORDS = "rjieba.cut_for_search"  # the word cutter a knowledge base's manifest records as its "tokenizer"
JIEBA_WORDS = "jieba.cut_for_search"  # the one of knowledge bases built before session 37
_INIT_LOCK = threading.Lock()
_WORDLIKE = re.compile(r"\w", re.UNICODE)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Question words and particles: frequent in questions, useless for matching narrative text.
STOPWORDS: frozenset[str] = frozenset(
    "的 了 是 在 和 与 及 也 都 而 之 于 把 被 让 给 对 向 从 为 就 又 还 吗 呢 吧 啊 呀 么 "
    "谁 什么 哪 哪里 哪儿 哪个 哪些 怎么 怎样 怎么样 如何 为何 为什么 几 多少 是否 有没有 "
    "请问 一下 是不是 这个 那个 这 那 其 他 她 它 他们 我 你 我们 你们 说 问 书中 书里 小说 中".split()
)
# Single characters left out of the character layer: particles and question words.
CHAR_STOPWORDS: frozenset[str] = frozenset("的了是在和与及也都而之于把被让给对向从为就又还吗呢吧啊呀么谁什哪怎几其他她它我你这那个些样时")


def tokenize(text: str, *, fold: bool = True, width: bool = True, words: str = WORDS) -> list[str]:
    """BM25 tokens of ``text`` (``fold``: in simplified characters, ``kb.script.fold_script``; ``width``:
    full-width forms as plain ones, NFKC; ``words``: the cutter, ``WORDS`` or ``JIEBA_WORDS``): jieba
    search-mode words (words plus their sub-words), then every single character, lowercased, without
    punctuation, whitespace or stopwords.

    The character layer matters for classical and literary Chinese, where jieba's modern
    dictionary often segments differently in the question and in the text (measured in
    docs/KB.md: recall@5 0.50 -> 0.73 on the sanguo QA set).
    """
    text = well_formed(text)
    if width:
        text = unicodedata.normalize("NFKC", text)
    lowered = (fold_script(text) if fold else text).lower()
    kept = [
        token
        for token in (t.strip() for t in cut_for_search(lowered, words=words))
        if token and token not in STOPWORDS and _WORDLIKE.search(token)
    ]
    chars = [c for c in lowered if c not in CHAR_STOPWORDS and _WORDLIKE.match(c) and not c.isascii()]
    return kept + chars


def cut_for_search(text: str, *, words: str = WORDS) -> list[str]:
    """jieba's search-mode words of ``text`` (words, then their dictionary sub-words), by the cutter named."""
    if words == WORDS:
        import rjieba

        return rjieba.cut_for_search(text)
    import jieba

    initialize_jieba()
    return list(jieba.cut_for_search(text))


def well_formed(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes of a command-line argument, ``"\\ud800"`` in
    JSON) as U+FFFD: OpenCC and jieba encode to UTF-8 and raised UnicodeEncodeError on them.
    Valid text comes back unchanged (the same object)."""
    if not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def folding(bm25_settings: dict[str, Any] | None) -> dict[str, Any]:
    """``tokenize``'s options that a knowledge base's BM25 tokens were cut with (its manifest's ``bm25``
    section): a query must be cut the same way to match them."""
    settings = bm25_settings or {}
    return {"fold": settings.get("script") == SCRIPT, "width": settings.get("width") == WIDTH,
            "words": WORDS if settings.get("tokenizer") == WORDS else JIEBA_WORDS}


def tokens_folded(bm25_settings: dict[str, Any] | None) -> bool:
    """Whether a knowledge base's BM25 tokens are cut as today's ``tokenize`` cuts them (every fold, ``WORDS``)."""
    options = folding(bm25_settings)
    return options["fold"] and options["width"] and options["words"] == WORDS


def cache_dir() -> Path:
    """glmkb's own cache folder: ``$XDG_CACHE_HOME/glmkb``, else ``~/.cache/glmkb``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "glmkb"


def use_private_cache(tokenizer: Any) -> None:
    """Keep ``tokenizer``'s dictionary cache in the user's own cache folder. jieba's default is one
    ``jieba.cache`` in the system temp folder for every user of a machine: on a shared server the first
    user's file could not be replaced by the others (a logged traceback at each start), and whoever wrote
    it decided everyone's dictionary. Where that folder cannot be made, jieba's default stays."""
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    tokenizer.tmp_dir = str(folder)


def initialize_jieba() -> None:
    """jieba's dictionary loaded once, its cache in the user's own folder (every glmkb use of jieba calls this).
    jieba is imported here, not with this module: BM25 words are rjieba's, jieba only cuts the questions
    of knowledge bases built before and tags the speakers of ``kb.characters``."""
    import jieba

    # jieba's lazy initialisation is not thread-safe; the web UI queries from several threads.
    if not jieba.dt.initialized:
        with _INIT_LOCK:
            if not jieba.dt.initialized:
                jieba.setLogLevel(logging.WARNING)
                use_private_cache(jieba.dt)
                jieba.initialize()
