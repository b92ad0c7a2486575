"""Bad and hostile documents: loaders and the splitter either refuse them cleanly or cut them exactly.

For any input the contract is one of two outcomes, never a crash or a hang:

- a ``ValueError`` (``kb.DocumentLoadError``/``KnowledgeBaseError``) whose message is one
  non-empty line, or
- chunks with exact offsets (``text[start:end] == chunk``), in order, each at most
  ``chunk_size`` characters, never straddling a chapter, that together cover every
  non-whitespace character of the text.

Hypothesis drives random bytes, random Unicode, mixed encodings and text without punctuation
(bounded ``max_examples``, no deadline); single cases cover empty files, a 5 MB line and NUL
bytes late in a file. ``tests/test_kb_splitting.py`` already fuzzes a small Chinese alphabet;
this file widens the input to anything.
"""

from __future__ import annotations

import codecs
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb import DocumentLoadError, KnowledgeBase, KnowledgeBaseError, load_text, split_chapters, split_document
from kb.loading import decode_bytes

CJK = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
ENCODINGS = ["utf-8", "gb18030", "gbk", "big5", "utf-16", "utf-16-le", "utf-32", "latin-1", "shift_jis", "utf-8-sig"]
MB = 1024 * 1024


def check_clean_error(error: Exception) -> None:
    message = str(error)
    assert isinstance(error, ValueError)
    assert message.strip() and "\n" not in message and "Traceback" not in message


def check_chunks(text: str, *, chunk_size: int = 120, chunk_overlap: int = 24) -> list:
    """``split_document`` of ``text`` keeps every promise in the module docstring."""
    chunks = split_document(text, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    covered = bytearray(len(text))
    chapters = split_chapters(text)
    previous = -1
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text.strip() and len(chunk.text) <= chunk_size
        assert chunk.start >= previous  # reading order
        previous = chunk.start
        covered[chunk.start : chunk.end] = b"\x01" * (chunk.end - chunk.start)
        if chapters:
            (home,) = [c for c in chapters if c.start <= chunk.start < c.end]
            assert chunk.end <= home.end and chunk.chapter == home.number
    for chapter in chapters:  # a heading's "#" marker (or 正文 label) is markup, not content
        line_start = text.rfind("\n", 0, chapter.start) + 1
        if chapter.heading and text[line_start : chapter.start].strip(" \t\u3000").lstrip("#") in ("", "正文", "正文卷"):
            covered[line_start : chapter.start] = b"\x01" * (chapter.start - line_start)
    missed = [i for i, ch in enumerate(text) if not covered[i] and not ch.isspace()]
    assert not missed, f"characters left out of every chunk at {missed[:10]}"
    return chunks


# ------------------------------------------------------------------------------ loaders


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000))
def test_random_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        text, encoding = decode_bytes(data, name="random.bin")
    except DocumentLoadError as e:
        check_clean_error(e)
        return
    assert text.strip() and encoding
    check_chunks(text)


@st.composite
def mixed_encodings(draw: st.DrawFn) -> bytes:
    """Pieces of Chinese/ASCII text, each in its own encoding (what copy-pasted files look like)."""
    pieces = draw(st.lists(st.tuples(st.text(alphabet=st.sampled_from(CJK + list("abc，。！\n 第一回")), max_size=80),
                                     st.sampled_from(ENCODINGS)), min_size=1, max_size=6))
    return b"".join(text.encode(enc, errors="replace") for text, enc in pieces)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mixed_encodings())
def test_mixed_encodings_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        text, _ = decode_bytes(data, name="mixed.txt")
    except DocumentLoadError as e:
        check_clean_error(e)
        return
    check_chunks(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(min_size=1, max_size=600), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]))
def test_any_unicode_text_round_trips_through_the_loader(text: str, encoding: str) -> None:
    """Valid UTF text (any code points, control characters and line separators included)
    decodes to itself (BOM removed) unless it is refused as empty or binary."""
    data = text.encode(encoding)
    try:
        decoded, _ = decode_bytes(data)
    except DocumentLoadError as e:
        check_clean_error(e)
        # '\ufeff' alone (as UTF-8: just a byte-order mark) is an empty file too.
        assert not text.removeprefix("\ufeff").strip() or "\x00" in text
        return
    once = text.removeprefix("\ufeff")  # a leading U+FEFF is a byte-order mark, and removed
    assert decoded in (text, once, once.removeprefix("\ufeff"))
    check_chunks(decoded)


@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"\n\n\t  \r\n", codecs.BOM_UTF8, codecs.BOM_UTF8 + b"  \n", codecs.BOM_UTF16_LE,
     codecs.BOM_UTF16_LE + " \n".encode("utf-16-le"), "\u3000\u3000\n".encode("utf-8")],
    ids=["empty", "space", "whitespace", "bom", "bom-space", "utf16-bom", "utf16-space", "ideographic-space"],
)
def test_empty_files_are_refused_with_a_message(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(data)
    with pytest.raises(DocumentLoadError, match="empty") as info:
        load_text(path)
    check_clean_error(info.value)
    kb = KnowledgeBase(tmp_path, "k", create=True, embedding_model="none")
    with pytest.raises(KnowledgeBaseError, match="empty"):
        kb.add_files([path])
    assert not kb.exists and not (tmp_path / "k").exists()


def test_nul_bytes_after_the_first_64_kib_are_stored_not_a_crash(tmp_path: Path) -> None:
    """The binary check looks at the start of a file only; a text file with stray NULs later
    still builds, and every chunk's offsets index the stored text exactly."""
    text = ("刘备、关羽、张飞在桃园结义。" * 3000) + "\x00\x00坏字节\x00" + "曹操献刀。" * 200
    path = tmp_path / "nul.txt"
    path.write_text(text, encoding="utf-8")
    kb = KnowledgeBase(tmp_path, "k", create=True, embedding_model="none", chunk_size=200, chunk_overlap=40)
    kb.add_files([path])
    stored = kb.get_document_text("nul.txt")
    assert stored == text
    for chunk in kb.get_chunks("nul.txt"):
        assert stored[chunk.metadata["start"] : chunk.metadata["end"]] == chunk.page_content
    assert kb.search("坏字节", mode="bm25", k=1)[0].page_content.count("\x00") == 3


def test_lone_surrogates_are_a_clean_value_error(tmp_path: Path) -> None:
    """Text handed over by API callers can hold lone surrogates (no file can): refused, not stored."""
    kb = KnowledgeBase(tmp_path, "k", create=True, embedding_model="none")
    with pytest.raises(ValueError, match="surrogates not allowed"):
        kb.add_texts({"bad.txt": "刘备\ud800关羽"})
    assert not kb.exists


# ------------------------------------------------------------------------------ the splitter


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(min_size=1, max_size=1500),
    size=st.integers(min_value=1, max_value=120),
    overlap_ratio=st.floats(min_value=0, max_value=0.95),
)
def test_any_text_is_cut_exactly(text: str, size: int, overlap_ratio: float) -> None:
    """Any Unicode (emoji, combining marks, \\r, \\u2028, control characters) and any sizes.
    Whitespace-only text never reaches the splitter: loaders and ``add_texts`` refuse it."""
    if text.strip():
        check_chunks(text, chunk_size=size, chunk_overlap=int(size * overlap_ratio))


@pytest.mark.parametrize(
    ("text", "size", "overlap"),
    [
        ("第回\n”」』第一回 桃园结义\n第回\n\n\n第回\n", 20, 5),
        ("000000000000000000\n0\n0", 20, 10),
        ("同一句话。" * 3 + "\n" + "同一句话。", 20, 10),
    ],
)
def test_a_repeat_inside_the_overlap_is_not_mistaken_for_the_next_piece(text: str, size: int, overlap: int) -> None:
    """Regression (found by the fuzzers above): documents without chapters are cut by
    RecursiveCharacterTextSplitter and each piece is then located with ``str.find`` from the
    previous piece's overlap. When the next piece's text also occurs inside that overlap (a
    short repeated line such as a second '第回'), the earlier copy was taken: the chunk pointed
    at the wrong place and the real text at the end of the document was in no chunk at all."""
    chunks = check_chunks(text, chunk_size=size, chunk_overlap=overlap)
    assert chunks[-1].end == len(text.rstrip())


def test_whitespace_pieces_are_not_chunks() -> None:
    """Regression: below 20 characters per chunk the recursive splitter can return a piece of
    only whitespace (``"0 "`` at size 1 gave ``" "``), an empty passage."""
    assert [c.text for c in split_document("0 \r \r1", chunk_size=1, chunk_overlap=0)] == ["0", "1"]


@st.composite
def novel_like(draw: st.DrawFn) -> str:
    """Chapter headings (well-formed and almost), sentences, odd whitespace and quotes."""
    parts = st.sampled_from(["第一回 桃园结义\n", "第２章：标题\n", "# 第十二节\n", "第一百回\r\n", "第回\n", "　第三卷　\n",
                             "正文 第四章 起\n", "番外一 重逢\n", "后记\n",
                             "刘备曰：“吾乃汉室宗亲。”", "关羽！", "张飞？", "……", "\n\n", "\u3000", "\t", "”」』",
                             "abc def.", "，", "；", "第一回 " + "长" * 70 + "\n"])
    return "".join(draw(st.lists(parts, max_size=60)))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=novel_like(), size=st.integers(min_value=20, max_value=120))
def test_novel_like_text_is_cut_exactly(text: str, size: int) -> None:
    if text.strip():
        check_chunks(text, chunk_size=size, chunk_overlap=size // 4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(min_value=1, max_value=40_000), seed=st.integers(0, 2**16), heading=st.booleans())
def test_text_without_punctuation_or_line_breaks(length: int, seed: int, heading: bool) -> None:
    rng = random.Random(seed)
    text = ("第一回 无标点\n" if heading else "") + "".join(rng.choice(CJK) for _ in range(length))
    chunks = check_chunks(text, chunk_size=400, chunk_overlap=80)
    assert len(chunks) >= length // 400


@pytest.mark.parametrize("heading", [False, True], ids=["plain", "chapter"])
@pytest.mark.parametrize("alphabet", ["cjk", "ascii"])
def test_one_five_megabyte_line(tmp_path: Path, heading: bool, alphabet: str) -> None:
    """A single 5 MB line (no newline, no punctuation) loads and splits in seconds, exactly."""
    rng = random.Random(5)
    body = "".join(rng.choice(CJK) for _ in range(5 * MB // 3 + 1)) if alphabet == "cjk" else "a" * (5 * MB)
    path = tmp_path / "line.txt"
    path.write_text(("第一回 长行\n" if heading else "") + body, encoding="utf-8")
    assert path.stat().st_size >= 5 * MB
    started = time.monotonic()
    text = load_text(path)
    chunks = split_document(text, chunk_size=400, chunk_overlap=80)
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"{elapsed:.1f} s for one 5 MB line"
    previous_end = 0
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text and len(chunk.text) <= 400
        assert not text[previous_end : chunk.start].strip()  # no text between chunks
        previous_end = chunk.end
    assert previous_end == len(text)
