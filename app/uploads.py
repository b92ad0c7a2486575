"""Which uploads the page accepts: the file types ``kb.loaders`` reads, narrowed by
``ui.allowed_types``, up to ``ui.max_upload_mb``, whose bytes are what their names say; anything
else is a UserError naming the limit or the problem. Both tabs that take files (a knowledge
base's build, a summary) check them here."""

from __future__ import annotations

from pathlib import Path

from app.errors import UserError, one_line
from configs import Settings
from kb import DocumentLoadError, open_text_file

__all__ = ["check_content", "check_upload", "upload_types"]


def upload_types(settings: Settings, *, archives: bool = False) -> list[str]:
    """The upload suffixes the page accepts (for a knowledge base and for a summary): every
    type ``kb.loaders`` reads, plus ZIP, tar, 7z and RAR archives of them where ``archives`` (a build),
    narrowed by ``ui.allowed_types`` when set."""
    from kb.loaders import ARCHIVE_SUFFIXES, SUPPORTED_SUFFIXES

    supported = list(SUPPORTED_SUFFIXES) + (list(ARCHIVE_SUFFIXES) if archives else [])
    wanted = settings.ui.allowed_types
    if wanted is None:
        return supported
    chosen = {t.lower() if t.startswith(".") else f".{t.lower()}" for t in wanted}
    return [s for s in supported if s in chosen]


def check_upload(settings: Settings, path: str | Path, *, archives: bool = False) -> Path:
    """An uploaded file of an allowed type and size, or a UserError naming the limit."""
    path = Path(path)
    ui = settings.ui
    allowed = upload_types(settings, archives=archives)
    if path.suffix.lower() not in allowed and not (archives and _volume_of_allowed_archive(path, allowed)):
        raise UserError(
            f"不支持的文件类型：{path.name}（允许 {', '.join(allowed)}）",
            f"file type not allowed: {path.name} (allowed: {', '.join(allowed)}; "
            "set ui.allowed_types to change)",
        )
    size = path.stat().st_size
    limit = ui.max_upload_mb * 1024 * 1024
    if size > limit:
        raise UserError(
            f"文件过大：{path.name}（{size / 2**20:.1f} MB，上限 {ui.max_upload_mb} MB）",
            f"file too large: {path.name} is {size / 2**20:.1f} MB, the limit is "
            f"{ui.max_upload_mb} MB (ui.max_upload_mb)",
        )
    return path


def _volume_of_allowed_archive(path: Path, allowed: list[str]) -> bool:
    """Whether ``path`` is named as a volume of an archive of an allowed type (资料.7z.002 of a .7z,
    资料.r00 of a .rar; ``kb.loaders.volumes``): its bytes are read with the rest of its set."""
    from kb.loaders.volumes import volume_of

    volume = volume_of(path)
    if volume is None:
        return False
    return (Path(volume.stem).suffix.lower() if volume.style == "split" else ".rar") in allowed


def check_content(path: Path) -> Path:
    """Refuse an upload whose bytes contradict its name (a PNG renamed .txt) or, for a text
    name, are not decodable text, right at upload. PDF, DOCX/DOC, PPTX/PPT, XLSX/XLS, ODT/ODS/ODP,
    EPUB, MOBI/AZW3, HTML, RTF and images are told by their bytes (``kb.loaders.detect_format``, which also
    refuses zip bombs); a ``.zip`` that is an archive of files passes (its documents are read at
    build, and so does a volume of a split archive, 资料.7z.002); the full read happens at build."""
    from kb.loaders import ARCHIVE_SUFFIXES, SUFFIX_FORMATS, TEXT_SUFFIXES, detect_format, is_archive
    from kb.loaders.volumes import volume_of

    text_name = path.suffix.lower() in TEXT_SUFFIXES
    if (path.suffix.lower() in ARCHIVE_SUFFIXES and is_archive(path)) or volume_of(path) is not None:
        return path  # a volume after the first is a piece of bytes: read with its set at build
    try:
        kind = detect_format(path)
        if kind not in SUFFIX_FORMATS.get(path.suffix.lower(), frozenset()):
            raise DocumentLoadError(f"{path.name} is {kind}, not what its name says ({path.suffix})")
        if kind == "text":
            open_text_file(path)
    except DocumentLoadError as e:
        reason = one_line(e).replace(str(path), path.name)  # never the server's temp path
        if text_name:
            raise UserError(
                f"不是可读的文本文件：{path.name}。请上传 UTF-8 或 GBK 编码的文本，或使用与内容相符的扩展名",
                reason,
            ) from e
        raise UserError(f"文件内容与类型不符或已损坏：{path.name}", reason) from e
    return path
