"""Which loader reads a file, decided by its bytes, never by its name (a ``.pdf`` that is a ZIP
is refused), and the limits that keep hostile archives from filling memory.

One exception: CSV/TSV are plain text, which bytes cannot tell from prose, so a file whose
bytes are text is read as a table when its name ends in ``.csv``/``.tsv`` (DELIMITED_SUFFIXES).
"""

from __future__ import annotations

import lzma
import re
import tarfile
import zipfile
import zlib
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.archive_ends import ZIP_STARTS, split_zip_piece

# Each supported suffix and the formats (``detect_format``) its bytes may be: uploads whose
# content contradicts their name (a PNG renamed .txt) are refused by the web UI.
TEXT_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".markdown")
"""Plain text and Markdown: what ``kb.load_text`` reads (the summary of an uploaded file)."""
SUFFIX_FORMATS: dict[str, frozenset[str]] = {
    **dict.fromkeys(TEXT_SUFFIXES, frozenset({"text", "html"})),
    ".pdf": frozenset({"pdf"}),
    # Macro-enabled files, templates and shows hold the same body as .docx/.pptx/.xlsx: read the
    # same way, their macros never run.
    **dict.fromkeys((".docx", ".docm", ".dotx", ".dotm"), frozenset({"docx"})),
    **dict.fromkeys((".pptx", ".pptm", ".ppsx", ".ppsm", ".potx", ".potm"), frozenset({"pptx"})),
    **dict.fromkeys((".xlsx", ".xlsm", ".xltx", ".xltm"), frozenset({"xlsx"})),
    ".xls": frozenset({"xls"}),
    ".doc": frozenset({"doc"}),
    ".ppt": frozenset({"ppt"}),
    # WPS Office's own names: its .wps/.et/.dps are Word/Excel/PowerPoint files inside (the binary
    # 97-2003 formats, or the XML ones from newer versions); the content decides which.
    ".wps": frozenset({"doc", "docx"}),
    ".et": frozenset({"xls", "xlsx"}),
    ".dps": frozenset({"ppt", "pptx"}),
    **dict.fromkeys((".csv", ".tsv"), frozenset({"text"})),
    ".epub": frozenset({"epub"}),
    **dict.fromkeys((".mobi", ".azw3", ".azw", ".prc", ".pdb"), frozenset({"mobi"})),  # Kindle, PalmDOC
    **dict.fromkeys((".odt", ".ott"), frozenset({"odt"})),  # OpenDocument (LibreOffice), templates as documents
    **dict.fromkeys((".ods", ".ots"), frozenset({"ods"})),
    **dict.fromkeys((".odp", ".otp"), frozenset({"odp"})),
    ".rtf": frozenset({"rtf"}),
    **dict.fromkeys((".html", ".htm", ".xhtml"), frozenset({"html", "text"})),
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"), frozenset({"image"})),
}
# What every loader accepts, for upload pickers and CLI help (the content decides, not the suffix).
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(SUFFIX_FORMATS)
FORMATS: tuple[str, ...] = (
    "text", "markdown", "csv", "pdf", "image", "docx", "doc", "pptx", "ppt", "xlsx", "xls", "epub", "html", "rtf",
    "odt", "ods", "odp", "mobi",
)
# Archives of documents a build unpacks (kb.loaders.archives); not a format open_document reads.
# Tar archives, plain or compressed: 资料.tar.gz and the like end in .gz/.bz2/.xz (their content decides).
TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tgz", ".gz", ".tbz2", ".bz2", ".txz", ".xz")
# 7z and RAR (v4 and v5): read through libarchive (the system library, by libarchive-c) where it is installed.
LIBARCHIVE_MAGIC: dict[str, tuple[bytes, ...]] = {".7z": (b"7z\xbc\xaf\x27\x1c",), ".rar": (b"Rar!\x1a\x07",)}
ARCHIVE_SUFFIXES: tuple[str, ...] = (".zip", *TAR_SUFFIXES, *LIBARCHIVE_MAGIC)
# Text files with these names are tables (read by kb.loaders.delimited), not prose.
DELIMITED_SUFFIXES: tuple[str, ...] = (".csv", ".tsv")

# DOCX/PPTX/XLSX/EPUB: refuse archives that would unpack past these (zip bombs): total bytes, members,
# and the compression ratio of any member over 1 MiB (text compresses ~5-10x, not 100x).
MAX_UNPACKED_BYTES = 512 << 20
MAX_MEMBERS = 20_000
MAX_RATIO = 100
_RATIO_FLOOR = 1 << 20
# What zipfile raises for a damaged archive besides BadZipFile: a cut member (EOFError), corrupt
# deflate data (zlib.error: zipfile does not wrap it), a name flagged UTF-8 that is not
# (UnicodeDecodeError, when the archive is opened), an unknown compression method.
ENCRYPTED_FLAG = 0x1  # a ZIP member's general purpose bit 0: encrypted (a password-protected archive)
DAMAGED_ZIP = (zipfile.BadZipFile, EOFError, zlib.error, UnicodeDecodeError, NotImplementedError)
# What tarfile raises for a damaged or cut archive: its own errors, and those of the decompressors
# under it (a cut gzip stream: EOFError; bad data: zlib.error, lzma.LZMAError, OSError for bzip2/gzip).
DAMAGED_TAR = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
# XLSX: refuse workbooks past this many cells in all sheets (empty cells inside a row count).
MAX_CELLS = 1_000_000

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")
_HTML_START = re.compile(rb"^\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b", re.I | re.S)
# What to do with an archive of documents (ZIP, tar, 7z, RAR) where one document is read (a summary).
_BUILD_IT = "build it into a knowledge base (`ingest build` and the upload read every document in it), or unpack it"
_TAR_COMPRESSION_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz
_REFUSED_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip-compressed file, not a document: unpack it (gunzip) and give what it holds"),
    (b"BZh", "a bzip2-compressed file, not a document: unpack it and give what it holds"),
    (b"\xfd7zXZ\x00", "an xz-compressed file, not a document: unpack it and give what it holds"),
    (b"Rar!", f"a RAR archive of files, not a document: {_BUILD_IT}"),
    (b"7z\xbc\xaf", f"a 7z archive of files, not a document: {_BUILD_IT}"),
    (b"\x7fELF", "an executable, not a document"),
    (b"SQLite format 3", "an SQLite database, not a document"),
)
FIX = ("supported: text (.txt/.md), CSV/TSV, PDF, DOCX, DOC, PPTX, PPT, XLSX, XLS, ODT, ODS, ODP, EPUB, MOBI/AZW3, HTML, RTF "
       "and images "
       "(.png/.jpg/.tif)")
_OLE_MAGIC = b"\xd0\xcf\x11\xe0"  # an OLE2 compound file: the Office 97-2003 formats, WPS documents


def detect_format(path: Path) -> str:
    """One of FORMATS for the file at ``path`` (``"text"`` covers Markdown and CSV/TSV: the text
    loader and the file's suffix tell them apart); DocumentLoadError for anything else."""
    with path.open("rb") as stream:
        head = stream.read(4096)
    if (piece := split_zip_piece(path)) is not None:  # its bytes would pass for text or a damaged ZIP
        raise DocumentLoadError(f"{path} is {piece}")
    if b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(ZIP_STARTS):
        return _zip_format(path)
    if head.startswith(_OLE_MAGIC):
        return _ole_format(path)
    if head[60:68] in (b"BOOKMOBI", b"TEXtREAd"):  # a Palm database: a Kindle or PalmDOC book
        return "mobi"
    if any(head.startswith(magic) for magic in _IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if (head[257:262] == b"ustar" or head.startswith(_TAR_COMPRESSION_MAGIC)) and is_tar(path):
        raise DocumentLoadError(f"{path} is a tar archive of files, not a document: {_BUILD_IT}")
    for magic, kind in _REFUSED_MAGIC:
        if head.startswith(magic):
            raise DocumentLoadError(f"{path} is {kind}")
    if _HTML_START.match(head.removeprefix(b"\xef\xbb\xbf")):
        return "html"
    if head.lstrip(b"\xef\xbb\xbf\r\n\t ").startswith(b"{\\rtf"):
        return "rtf"
    return "text"


def _zip_format(path: Path) -> str:
    """``docx``, ``pptx``, ``xlsx``, ``epub`` or ``odt``/``ods``/``odp`` (an OpenDocument package's
    ``mimetype`` member says which) for a ZIP archive that is one (checked against zip bombs)."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=str(path))
            kind = _document_kind(archive)
    except DAMAGED_ZIP as e:
        raise DocumentLoadError(f"{path} is a damaged ZIP archive ({e}); save the document again") from e
    if kind is not None:
        return kind
    raise DocumentLoadError(
        f"{path} is a ZIP archive of files, not a DOCX, PPTX, XLSX, OpenDocument or EPUB document: {_BUILD_IT}"
    )


def _ole_format(path: Path) -> str:
    """``xls`` for an Excel 97-2003 workbook (a "Workbook" or "Book" stream in the compound
    file's directory, read by olefile), ``doc`` for a Word 97-2003 document ("WordDocument"),
    ``ppt`` for a PowerPoint 97-2003 deck ("PowerPoint Document"); any other OLE2 file (Visio,
    MSG, or one whose directory cannot be read) is refused."""
    import olefile

    legacy = (f"{path} is an Office 97-2003 file that is not a Word, Excel or PowerPoint document, or a "
              "damaged one; save it as .docx/.pptx/.xlsx")
    try:
        with olefile.OleFileIO(str(path)) as ole:
            if ole.exists("Workbook") or ole.exists("Book"):
                return "xls"
            if ole.exists("WordDocument"):
                return "doc"
            if ole.exists("PowerPoint Document"):
                return "ppt"
    except Exception as e:  # olefile's errors for a broken compound file
        raise DocumentLoadError(legacy) from e
    raise DocumentLoadError(legacy)


def _document_kind(archive: zipfile.ZipFile) -> str | None:
    """The document format a ZIP package is (DOCX, PPTX, XLSX, EPUB, ODT/ODS/ODP), None for an
    archive of other files."""
    from kb.loaders.opendocument import MIMETYPES

    names = set(archive.namelist())
    if "mimetype" in names and "content.xml" in names:
        mimetype = archive.read("mimetype")[:100].decode("ascii", errors="replace").strip()
        if mimetype in MIMETYPES:
            return MIMETYPES[mimetype]
    for member, kind in (("word/document.xml", "docx"), ("ppt/presentation.xml", "pptx"),
                         ("xl/workbook.xml", "xlsx"), ("META-INF/container.xml", "epub")):
        if member in names:
            return kind
    return None


def check_regular_file(path: Path) -> None:
    """DocumentLoadError where ``path`` exists but is not a regular file: the first read of a
    named pipe (FIFO) would block forever, a device may never end."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise DocumentLoadError(f"{path} is not a regular file (a pipe, socket or device): save it to a file first")


def is_archive(path: Path) -> bool:
    """Whether ``path`` is an archive of files (``archive_kind``), whatever its name says."""
    return archive_kind(path) is not None


def archive_kind(path: Path) -> str | None:
    """Which archive of files ``path`` is by its bytes: "zip" (a ZIP that is not a document package
    such as DOCX or EPUB), "tar" (plain or compressed, ``is_tar``), "7z" or "rar"; None for anything
    else, damaged ZIPs and one compressed file (novel.txt.gz) included. By content, not by name: a
    ZIP saved as 资料.rar (common where archives are passed around renamed) is read as the ZIP it is."""
    kind = magic_archive_kind(path)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                return "zip" if _document_kind(archive) is None else None
        except (OSError, KeyError, *DAMAGED_ZIP):
            return None
    return kind or ("tar" if is_tar(path) else None)


def magic_archive_kind(path: Path) -> str | None:
    """"zip", "7z" or "rar" by the first bytes alone (the first volume of a split archive is no
    whole ZIP, and a ZIP here may still be a document package: ``archive_kind`` says)."""
    if _starts_with(path, ZIP_STARTS):
        return "zip"
    return next((suffix.lstrip(".") for suffix, magics in LIBARCHIVE_MAGIC.items() if _starts_with(path, magics)), None)


def _starts_with(path: Path, magics: tuple[bytes, ...]) -> bool:
    """Whether the file at ``path`` begins with one of ``magics`` (False where it cannot be read)."""
    try:
        with path.open("rb") as stream:
            head = stream.read(16)
    except OSError:
        return False
    return head.startswith(magics)


def is_tar(path: Path) -> bool:
    """Whether ``path`` is a tar archive (``.tar``, or compressed with gzip, bzip2 or xz); a
    gzipped single file (novel.txt.gz) is not."""
    try:
        return tarfile.is_tarfile(path)
    except DAMAGED_TAR:
        return False


class ArchiveRefused(DocumentLoadError):
    """An archive refused as a possible zip bomb (too many members, bytes or too high a ratio):
    refused whole, even where it is one archive inside another."""


def check_archive(archive: zipfile.ZipFile, *, name: str) -> None:
    """Refuse a zip bomb before anything is unpacked: too many members, too many bytes in all,
    or a member compressed far better than text is (zipfile never reads a member past its
    declared size, so declared sizes bound what is unpacked); and a password-protected archive."""
    infos = archive.infolist()
    check_unpack_limits(name, members=len(infos), total=sum(info.file_size for info in infos))
    locked = next((info.filename for info in infos if info.flag_bits & ENCRYPTED_FLAG), None)
    if locked is not None:  # zipfile would raise RuntimeError at the member, after the others were unpacked
        raise DocumentLoadError(password_protected(f"{name} is password-protected ({locked})"))
    for info in infos:
        if info.file_size > _RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveRefused(
                f"{name}: {info.filename} is compressed {info.file_size // max(info.compress_size, 1)}:1 "
                f"(limit {MAX_RATIO}:1); refused as a possible zip bomb"
            )


def password_protected(what: str) -> str:
    """The one-line refusal of a password-protected archive or package (ZIP, DOCX, EPUB, 7z, RAR):
    ``what`` says which, the advice is the same."""
    return f"{what}; save or unpack it without the password first"


def check_unpack_limits(name: str, *, members: int, total: int, so_far: bool = False) -> None:
    """Refuse an archive of more than ``MAX_MEMBERS`` members or ``MAX_UNPACKED_BYTES`` in all.
    ``so_far``: the counts of a stream read up to here (a compressed tar lists its members only
    as it is read), checked before the next member is unpacked."""
    over = "over " if so_far else ""
    if members > MAX_MEMBERS:
        count = MAX_MEMBERS if so_far else members
        raise ArchiveRefused(f"{name} holds {over}{count} files (limit {MAX_MEMBERS}); refused as a possible zip bomb")
    if total > MAX_UNPACKED_BYTES:
        size = (MAX_UNPACKED_BYTES if so_far else total) >> 20
        raise ArchiveRefused(f"{name} would unpack to {over}{size} MiB (limit {MAX_UNPACKED_BYTES >> 20} MiB); "
                             "refused as a possible zip bomb")


def read_member(archive: zipfile.ZipFile, member: str, *, name: str) -> bytes:
    """The bytes of one archive member (after :func:`check_archive`); one line when missing."""
    try:
        return archive.read(member)
    except KeyError as e:
        raise DocumentLoadError(f"{name} is damaged: it names {member}, which is not in it") from e
    except (OSError, *DAMAGED_ZIP) as e:
        raise DocumentLoadError(f"{name} is damaged ({member}: {e}); save the document again") from e
