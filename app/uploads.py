"""Which uploads the page accepts: the file types ``kb.loaders`` reads, narrowed by
``ui.allowed_types``, up to ``ui.max_upload_mb``; anything else is a UserError naming the limit."""

from __future__ import annotations

from pathlib import Path

from app.errors import UserError
from configs import Settings

__all__ = ["check_upload", "upload_types"]


def upload_types(settings: Settings) -> list[str]:
    """The upload suffixes the page accepts (for a knowledge base and for a summary): every
    type ``kb.loaders`` reads, narrowed by ``ui.allowed_types`` when set."""
    from kb.loaders import SUPPORTED_SUFFIXES

    supported = list(SUPPORTED_SUFFIXES)
    wanted = settings.ui.allowed_types
    if wanted is None:
        return supported
    chosen = {t.lower() if t.startswith(".") else f".{t.lower()}" for t in wanted}
    return [s for s in supported if s in chosen]


def check_upload(settings: Settings, path: str | Path) -> Path:
    """An uploaded file of an allowed type and size, or a UserError naming the limit."""
    path = Path(path)
    ui = settings.ui
    allowed = upload_types(settings)
    if path.suffix.lower() not in allowed:
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
