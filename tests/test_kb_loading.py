"""kb.loading: every encoding Chinese novels come in is decoded; binary/empty/missing refused."""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kb import DocumentLoadError, decode_bytes, load_text, loading
from kb.loading import BLOCK_BYTES, TextFile, load_text_with_encoding, open_text_file

# Traditional-character paragraphs (三国演义 / 西游记 openings) for Big5, which cannot encode simplified text.
TRADITIONAL = [
    (
        "話說天下大勢，分久必合，合久必分。周末七國分爭，并入於秦。及秦滅之後，楚、漢分爭，又并入於漢。"
        "漢朝自高祖斬白蛇而起義，一統天下，後來光武中興，傳至獻帝，遂分為三國。"
    ),
    (
        "玄德幼孤，事母至孝；家貧，販屨織蓆為業。家住本縣樓桑村。其家之東南，有一大桑樹，高五丈餘，"
        "遙望之，童童如車蓋。相者云：「此家必出貴人。」"
    ),
    "蓋聞天地之數，有十二萬九千六百歲為一元。將一元分為十二會，乃子、丑、寅、卯、辰、巳、午、未、申、酉、戌、亥之十二支也。",
    "相者云：「此家必出貴人。」",
]


def corpus_paragraphs(path: Path) -> list[str]:
    """Realistic paragraphs of several lengths (a short line, a sentence, a paragraph, a chapter head)."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if len(line) > 30]
    return [lines[10][:24], lines[50][:80], lines[min(200, len(lines) - 1)], text[:3000]]  # the excerpt has ~140 such lines


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk", "utf-16", "utf-16-le-bom", "utf-16-be-bom"])
def test_simplified_corpus_text_round_trips(encoding: str, sanguo_path: Path, xiyouji_path: Path) -> None:
    for text in corpus_paragraphs(sanguo_path) + corpus_paragraphs(xiyouji_path):
        data = encode(text, encoding)
        decoded, detected = decode_bytes(data)
        assert decoded == text, f"{encoding} -> {detected}"


@pytest.mark.parametrize("encoding", ["big5", "utf-8", "utf-16", "gb18030"])
def test_traditional_text_round_trips(encoding: str) -> None:
    """Big5 vs GBK on short texts is the hard case: both decoders accept most byte pairs."""
    for text in TRADITIONAL:
        decoded, detected = decode_bytes(text.encode(encoding))
        assert decoded == text, f"{encoding} detected as {detected}"


def test_gbk_novel_file_is_decoded(tmp_path: Path, xiyouji_path: Path) -> None:
    """西游记 circulates as GBK: the whole novel must come back identical."""
    text = xiyouji_path.read_text(encoding="utf-8")
    path = tmp_path / "xiyouji_gbk.txt"
    path.write_bytes(text.encode("gb18030"))
    assert load_text(path) == text


def test_bom_is_removed_and_newlines_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_bytes(codecs.BOM_UTF8 + "# 标题\r\n正文。\r\n".encode())
    assert load_text(path) == "# 标题\r\n正文。\r\n"


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-le-bom":
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return codecs.BOM_UTF16_BE + text.encode("utf-16-be")
    return text.encode(encoding)


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
        (zip_bytes(), "ZIP"),
        (bytes(range(256)) * 4, "binary"),
        (b"\x7fELF\x02\x01\x01\x00", "executable"),
    ],
)
def test_binary_input_is_refused(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    with pytest.raises(DocumentLoadError, match=expected) as info:
        load_text(path)
    assert "UTF-8" in str(info.value)  # says how to fix it


def test_undecodable_text_is_refused() -> None:
    with pytest.raises(DocumentLoadError, match="cannot decode"):
        decode_bytes("Ça coûte très cher, répétez-le à Noël".encode("latin-1"), name="x.txt")


def test_broken_bom_file_is_refused() -> None:
    with pytest.raises(DocumentLoadError, match="byte-order mark"):
        decode_bytes(codecs.BOM_UTF8 + b"\xff\xfe\xfa", name="x.txt")


@pytest.mark.parametrize("data", [b"", b"   \n\t\n", codecs.BOM_UTF8, codecs.BOM_UTF16_LE + " \n".encode("utf-16-le")])
def test_empty_input_is_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(data)
    with pytest.raises(DocumentLoadError, match="empty"):
        load_text(path)


def test_missing_file_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentLoadError, match="not found"):
        load_text(tmp_path / "nope.txt")
    with pytest.raises(DocumentLoadError, match="folder"):
        load_text(tmp_path)


def test_many_short_gbk_windows_of_the_novel(sanguo_path: Path) -> None:
    """Short GBK snippets (20-200 chars) must not be mistaken for Big5."""
    import random

    text = sanguo_path.read_text(encoding="utf-8")
    rng = random.Random(7)
    for _ in range(60):
        start = rng.randrange(len(text) - 300)
        snippet = text[start : start + rng.randrange(20, 200)]
        if not snippet.strip():
            continue
        assert decode_bytes(snippet.encode("gbk"))[0] == snippet


# ------------------------------------------------------------------ streaming: same results as whole bytes

FIX = "save it as UTF-8 text (.txt or .md) and try again"
BOMS = [  # UTF-32 LE before UTF-16 LE: its BOM starts with UTF-16 LE's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
]


def reference_decode(data: bytes, *, name: str) -> tuple[str, str]:
    """The loader as it was before it streamed (``bytes.decode`` over all of ``data`` at once):
    the oracle the block-wise loader must match on inputs up to 1 MiB. One deliberate change: a
    broken UTF-8-with-BOM file's error offset now counts the BOM, like UTF-16/32's always did."""
    empty = DocumentLoadError(f"{name} is empty; there is no text to add")
    if not data.strip():
        raise empty
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as e:
                start = e.start + (len(bom) if encoding == "utf-8-sig" else 0)  # utf-8-sig counts after its BOM
                raise DocumentLoadError(
                    f"{name} starts with a {encoding} byte-order mark but is not valid {encoding} (byte {start}); {FIX}"
                ) from e
            text = text.removeprefix("\ufeff")
            break
    else:
        loading._refuse_binary(data, name=name)
        text, encoding = reference_decode_without_bom(data, name=name)
    if not text.strip():
        raise empty
    return text, encoding


def reference_decode_without_bom(data: bytes, *, name: str) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    decodings = {}
    for encoding in ("gb18030", "big5"):
        try:
            decodings[encoding] = data.decode(encoding)
        except UnicodeDecodeError:
            pass
    if not decodings:
        raise DocumentLoadError(
            f"cannot decode {name}: it is not UTF-8, UTF-16 (with BOM), GB18030/GBK or Big5 text; {FIX}"
        )
    if len(decodings) == 1:
        [(encoding, text)] = decodings.items()
        return text, encoding
    if loading._is_common_simplified(decodings["gb18030"]):
        return decodings["gb18030"], "gb18030"
    encoding = loading._charset_normalizer_choice(data) or "gb18030"
    return decodings[encoding], encoding


def outcome(decode: Callable[[], tuple[str, str]]) -> tuple[str, str]:
    """``(text, encoding)``, or ``("error", message)`` for a DocumentLoadError."""
    try:
        return decode()
    except DocumentLoadError as e:
        return "error", str(e)


def read_in_blocks(path: Path, *, detect_block: int, text_block: int) -> tuple[str, str]:
    text_file = open_text_file(path, block_bytes=detect_block)
    pieces = list(text_file.blocks(block_bytes=text_block))
    assert "" not in pieces
    return "".join(pieces), text_file.encoding


def assert_same_as_whole_bytes(data: bytes, path: Path, *, detect_block: int, text_block: int) -> None:
    """The file read in tiny blocks, the bytes decoded in memory, and the oracle all agree."""
    expected = outcome(lambda: reference_decode(data, name="upload.txt"))
    assert outcome(lambda: decode_bytes(data, name="upload.txt")) == expected
    path.write_bytes(data)
    from_file = outcome(lambda: read_in_blocks(path, detect_block=detect_block, text_block=text_block))
    assert from_file == outcome(lambda: reference_decode(data, name=str(path)))


# Characters that make the encodings disagree: simplified-only, traditional-only, both, ASCII,
# whitespace (ASCII and U+3000), astral (4 bytes in UTF-8/UTF-16/GB18030), BOM and NUL characters.
ALPHABET = list("abc Z\n\r\t，。！「」话說天下大势勢國国讀书書　") + ["\U0001f600", "\U00020000", "\ufeff", "\x00", "é"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be", "gb18030", "gbk", "big5"]
BOM_OF = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-32-be": codecs.BOM_UTF32_BE}


@st.composite
def encoded_texts(draw: st.DrawFn) -> bytes:
    """Text in one supported encoding (with or without a BOM), sometimes damaged."""
    text = draw(st.text(alphabet=st.sampled_from(ALPHABET), max_size=60))
    encoding = draw(st.sampled_from(ENCODINGS))
    data = text.encode(encoding, errors="ignore")
    if encoding in BOM_OF and draw(st.booleans()):
        data = BOM_OF[encoding] + data
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


@st.composite
def mixed_encodings(draw: st.DrawFn) -> bytes:
    """Pieces of text each in its own encoding (what copy-pasted files look like)."""
    pieces = draw(st.lists(st.tuples(st.text(alphabet=st.sampled_from(ALPHABET[:-3]), max_size=30),
                                     st.sampled_from(ENCODINGS)), min_size=1, max_size=5))
    return b"".join(text.encode(encoding, errors="ignore") for text, encoding in pieces)


@pytest.fixture(scope="module")
def scratch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loading") / "input.txt"


block_sizes = st.integers(min_value=1, max_value=9)
EXAMPLES = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@EXAMPLES
@given(data=encoded_texts(), detect_block=block_sizes, text_block=block_sizes)
def test_streamed_decoding_matches_whole_bytes_for_encoded_text(
    data: bytes, detect_block: int, text_block: int, scratch_file: Path
) -> None:
    assert_same_as_whole_bytes(data, scratch_file, detect_block=detect_block, text_block=text_block)


@EXAMPLES
@given(data=mixed_encodings(), detect_block=block_sizes, text_block=block_sizes)
def test_streamed_decoding_matches_whole_bytes_for_mixed_encodings(
    data: bytes, detect_block: int, text_block: int, scratch_file: Path
) -> None:
    assert_same_as_whole_bytes(data, scratch_file, detect_block=detect_block, text_block=text_block)


@EXAMPLES
@given(data=st.binary(max_size=200), detect_block=block_sizes, text_block=block_sizes)
def test_streamed_decoding_matches_whole_bytes_for_random_bytes(
    data: bytes, detect_block: int, text_block: int, scratch_file: Path
) -> None:
    assert_same_as_whole_bytes(data, scratch_file, detect_block=detect_block, text_block=text_block)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "big5", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "utf-32"])
def test_characters_split_across_blocks_decode_whole(encoding: str, tmp_path: Path, sanguo_path: Path) -> None:
    """Every block size from 1 to 8 bytes cuts 2-, 3- and 4-byte characters (and BOMs) somewhere;
    the text must still come back exactly (the oracle is the str that was encoded)."""
    text = TRADITIONAL[0] if encoding == "big5" else corpus_paragraphs(sanguo_path)[2] + "\U00020000\U0001f600"
    path = tmp_path / "split.txt"
    path.write_bytes(encode(text, encoding))
    for block_bytes in range(1, 9):
        assert read_in_blocks(path, detect_block=block_bytes, text_block=block_bytes)[0] == text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (codecs.BOM_UTF8 + b"ab\xff", "utf-8-sig byte-order mark but is not valid utf-8-sig (byte 5)"),
        (codecs.BOM_UTF16_LE + "话说".encode("utf-16-le") + b"\x00", "not valid utf-16 (byte 6)"),
        (codecs.BOM_UTF16_BE + b"\x00a\xdc\x00", "not valid utf-16 (byte 4)"),
        (codecs.BOM_UTF32_LE + "话".encode("utf-32-le") + b"\x00\x00\x11\x00", "not valid utf-32 (byte 8)"),
    ],
)
def test_bom_errors_give_the_file_offset_whatever_the_block_size(tmp_path: Path, data: bytes, message: str) -> None:
    """Regression: UTF-8-with-BOM errors used to count bytes from after the BOM ("byte 2" for byte 5)."""
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    for block_bytes in (1, 2, 3, 5, BLOCK_BYTES):
        with pytest.raises(DocumentLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
            open_text_file(path, block_bytes=block_bytes)
    with pytest.raises(DocumentLoadError, match=r"\(byte"):
        decode_bytes(data)


def test_nul_after_the_first_64_kib_is_text_and_before_it_is_binary(tmp_path: Path) -> None:
    path = tmp_path / "nul.txt"
    path.write_bytes(b"a" * 65536 + b"\x00tail")
    assert load_text(path) == "a" * 65536 + "\x00tail"
    path.write_bytes(b"a" * 65535 + b"\x00tail")
    with pytest.raises(DocumentLoadError, match="NUL bytes"):
        open_text_file(path, block_bytes=7)


def test_load_text_with_encoding_names_each_encoding(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    cases = [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("utf-16", "utf-16"), ("utf-16-be-bom", "utf-16"),
             ("utf-32", "utf-32"), ("gb18030", "gb18030")]
    for encoding, name in cases:
        path.write_bytes(encode("第一回 宴桃园豪杰三结义\n", encoding))
        assert load_text_with_encoding(path) == ("第一回 宴桃园豪杰三结义\n", name)
    path.write_bytes(TRADITIONAL[1].encode("big5"))
    assert load_text_with_encoding(path) == (TRADITIONAL[1], "big5")


def test_only_one_leading_feff_is_removed_after_a_bom(tmp_path: Path) -> None:
    """Like ``str.removeprefix`` on the whole text, even when the BOM-like character arrives in a later block."""
    path = tmp_path / "feff.txt"
    path.write_bytes(codecs.BOM_UTF8 + "\ufeff\ufeff甲".encode())
    assert read_in_blocks(path, detect_block=1, text_block=1) == ("\ufeff甲", "utf-8-sig")
    path.write_bytes(codecs.BOM_UTF16_LE + "\ufeff".encode("utf-16-le"))
    with pytest.raises(DocumentLoadError, match="empty"):
        open_text_file(path, block_bytes=1)


def test_block_size_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("正文", encoding="utf-8")
    with pytest.raises(ValueError, match="block_bytes"):
        open_text_file(path, block_bytes=0)
    with pytest.raises(ValueError, match="block_bytes"):
        list(open_text_file(path).blocks(block_bytes=0))


def test_blocks_are_about_block_bytes_each(tmp_path: Path, sanguo_path: Path) -> None:
    text = sanguo_path.read_text(encoding="utf-8")[:50_000]
    path = tmp_path / "a.txt"
    path.write_text(text, encoding="utf-8")
    pieces = list(open_text_file(path).blocks(block_bytes=4096))
    assert "".join(pieces) == text
    assert all(len(piece.encode()) <= 4096 + 3 for piece in pieces)
    assert len(pieces) >= len(text.encode()) // 4096


# ------------------------------------------------------------------ large files: legacy sample, memory, time


def traditional_bytes(size: int, *, newlines: bool, prefix: bytes = b"") -> bytes:
    paragraph = "".join(TRADITIONAL) + ("\n" if newlines else "")
    return prefix + paragraph.encode("big5") * (size // len(paragraph.encode("big5")) + 1)


@pytest.mark.parametrize(
    ("newlines", "prefix"), [(True, b""), (False, b""), (False, b"a")], ids=["lines", "one-line", "one-line-odd"]
)
def test_big5_file_over_the_sample_size_is_big5(tmp_path: Path, newlines: bool, prefix: bytes) -> None:
    """Beyond 1 MiB charset-normalizer sees a prefix; cut inside a character it would give up and
    GB18030 would be chosen, turning a Big5 novel into nonsense (one-line files have no newline to
    cut at; an odd leading ASCII byte puts the 1 MiB mark inside a character)."""
    data = traditional_bytes(3 * 2**19, newlines=newlines, prefix=prefix)
    assert len(data) > 1 << 20
    path = tmp_path / "big5.txt"
    path.write_bytes(data)
    text_file = open_text_file(path)
    assert text_file.encoding == "big5"
    assert "".join(text_file.blocks()) == data.decode("big5")


def repeat_to_file(path: Path, data: bytes, *, size: int) -> int:
    """Write ``data`` repeated until ``size`` bytes; returns the number of copies."""
    copies = size // len(data) + 1
    with path.open("wb") as f:
        for _ in range(copies):
            f.write(data)
    return copies


def stream_and_measure(path: Path) -> tuple[TextFile, str, int, float]:
    """Open + one full pass over the blocks: ``(text file, sha256 of the UTF-8 text, tracemalloc peak, seconds)``."""
    digest = hashlib.sha256()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        text_file = open_text_file(path)
        for piece in text_file.blocks():
            digest.update(piece.encode("utf-8"))
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return text_file, digest.hexdigest(), peak, elapsed


def repeated_digest(data: bytes, copies: int) -> str:
    digest = hashlib.sha256()
    for _ in range(copies):
        digest.update(data)
    return digest.hexdigest()


PEAK_LIMIT = 8 << 20  # a few 1 MiB blocks (raw bytes, decoded str, its UTF-8 for the digest), not the file


@pytest.mark.slow
def test_100_mb_utf8_file_streams_in_bounded_memory(tmp_path: Path, sanguo_path: Path) -> None:
    """glmkb #9: a 100 MB text file is read in blocks, never whole."""
    novel = sanguo_path.read_bytes()
    path = tmp_path / "big_utf8.txt"
    copies = repeat_to_file(path, novel, size=100 * 10**6)
    text_file, digest, peak, elapsed = stream_and_measure(path)
    assert text_file.encoding == "utf-8"
    assert digest == repeated_digest(novel, copies)
    print(f"\n100 MB UTF-8 ({path.stat().st_size} bytes): peak {peak / 2**20:.2f} MiB, {elapsed:.2f} s")
    assert peak < PEAK_LIMIT


@pytest.mark.slow
def test_30_mb_gb18030_file_streams_in_bounded_memory(tmp_path: Path, sanguo_path: Path) -> None:
    novel = sanguo_path.read_text(encoding="utf-8")
    path = tmp_path / "big_gb18030.txt"
    copies = repeat_to_file(path, novel.encode("gb18030"), size=30 * 10**6)
    text_file, digest, peak, elapsed = stream_and_measure(path)
    assert text_file.encoding == "gb18030"
    assert digest == repeated_digest(novel.encode("utf-8"), copies)
    print(f"\n30 MB GB18030 ({path.stat().st_size} bytes): peak {peak / 2**20:.2f} MiB, {elapsed:.2f} s")
    assert peak < PEAK_LIMIT


@pytest.mark.slow
def test_big5_file_goes_through_charset_normalizer_in_bounded_memory(tmp_path: Path) -> None:
    """A Big5 file decodes in both legacy encodings: the costliest path (two full passes and a
    charset-normalizer sample) must stay bounded too."""
    path = tmp_path / "big5.txt"
    paragraph = ("".join(TRADITIONAL) + "\n").encode("big5")
    copies = repeat_to_file(path, paragraph, size=20 * 10**6)
    text_file, digest, peak, elapsed = stream_and_measure(path)
    assert text_file.encoding == "big5"
    assert digest == repeated_digest(paragraph.decode("big5").encode("utf-8"), copies)
    print(f"\n20 MB Big5 ({path.stat().st_size} bytes): peak {peak / 2**20:.2f} MiB, {elapsed:.2f} s")
    assert peak < PEAK_LIMIT


# ------------------------------------------------------------------ the file changes after it was checked


@pytest.fixture
def checked_file(tmp_path: Path) -> tuple[Path, TextFile]:
    path = tmp_path / "novel.txt"
    path.write_text("第一回 宴桃园豪杰三结义\n" * 100, encoding="utf-8")
    return path, open_text_file(path)


def rewrite_keeping_stamp(path: Path, data: bytes) -> None:
    """Replace the content with ``data`` of the same size and put the old modification time back."""
    stat = path.stat()
    assert len(data) == stat.st_size
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_file_grown_after_open_is_refused(checked_file: tuple[Path, TextFile]) -> None:
    path, text_file = checked_file
    with path.open("ab") as f:
        f.write("追加".encode())
    with pytest.raises(DocumentLoadError, match=r"changed while it was being read \(its size .*\); try again"):
        list(text_file.blocks())


def test_file_no_longer_valid_after_open_is_refused(checked_file: tuple[Path, TextFile]) -> None:
    """Even when size and modification time look untouched, bytes that no longer decode are caught."""
    path, text_file = checked_file
    data = bytearray(path.read_bytes())
    data[7] = 0xFF
    rewrite_keeping_stamp(path, bytes(data))
    with pytest.raises(DocumentLoadError, match=r"changed while it was being read \(it is no longer valid utf-8 at byte 6\); try again"):
        list(text_file.blocks(block_bytes=5))


def test_file_deleted_after_open_is_refused(checked_file: tuple[Path, TextFile]) -> None:
    path, text_file = checked_file
    path.unlink()
    with pytest.raises(DocumentLoadError, match=r"changed while it was being read \(cannot read it: No such file"):
        list(text_file.blocks())


def test_bom_file_that_lost_its_bom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(codecs.BOM_UTF8 + "正文。".encode())
    text_file = open_text_file(path)
    assert text_file.encoding == "utf-8-sig"
    rewrite_keeping_stamp(path, "正文。。".encode()[:12])
    with pytest.raises(DocumentLoadError, match="no longer starts with a utf-8-sig byte-order mark"):
        list(text_file.blocks())


def test_file_changed_while_blocks_are_read_is_refused(checked_file: tuple[Path, TextFile]) -> None:
    path, text_file = checked_file
    blocks: Iterator[str] = text_file.blocks(block_bytes=64)
    next(blocks)
    with path.open("ab") as f:
        f.write(b"more")
    with pytest.raises(DocumentLoadError, match="changed while it was being read"):
        list(blocks)


def test_blocks_can_be_read_again_and_without_a_stamp(checked_file: tuple[Path, TextFile]) -> None:
    path, text_file = checked_file
    text = path.read_text(encoding="utf-8")
    assert "".join(text_file.blocks()) == "".join(text_file.blocks()) == text
    assert "".join(TextFile(path, "utf-8").blocks(block_bytes=3)) == text
