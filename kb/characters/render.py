"""``render_png``: a static picture of the character graph (``ingest characters --png``).

Drawn with Pillow. Chinese labels need a CJK font: ``font`` or ``$GLMKB_CJK_FONT``, else the
usual system fonts are tried (Noto CJK, WenQuanYi, Source Han, PingFang, Microsoft YaHei,
SimHei). Without one the picture is still written, nodes numbered instead of named, and the
returned ``PngResult.legend`` maps the numbers to names (the CLI prints it with a warning).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.characters.layout import layout

__all__ = ["PngResult", "find_cjk_font", "render_png"]

FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/adobe-source-han-sans/SourceHanSansCN-Regular.otf",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)


@dataclass
class PngResult:
    path: Path
    font: str | None
    legend: dict[int, str] = field(default_factory=dict)
    """Node number -> name, when no CJK font was found and nodes are numbered."""


def _draws_chinese(path: str) -> bool:
    from PIL import ImageFont

    try:
        font = ImageFont.truetype(path, 16)
    except OSError:
        return False
    return font.getmask("刘").getbbox() is not None and font.getbbox("刘") != font.getbbox("\uffff")


def find_cjk_font(font: str | None = None) -> str | None:
    """A font file that can draw Chinese: ``font``, ``$GLMKB_CJK_FONT``, known paths, fc-list."""
    candidates = [font, os.environ.get("GLMKB_CJK_FONT"), *FONT_CANDIDATES]
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10).stdout
            candidates += [line.split(":")[0].strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    for path in candidates:
        if path and Path(path).is_file() and _draws_chinese(path):
            return path
    return None


def render_png(graph: Any, path: str | Path, *, font: str | None = None, size: int = 1400) -> PngResult:
    """Draw ``graph`` (persons as circles sized by mentions, relations as lines by weight)."""
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path)
    font_path = find_cjk_font(font)
    label_font = ImageFont.truetype(font_path, 18) if font_path else ImageFont.load_default()
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    pos = layout(graph)
    margin = 80

    def xy(name: str) -> tuple[float, float]:
        x, y = pos[name]
        return margin + x * (size - 2 * margin), margin + y * (size - 2 * margin)

    top_weight = max((r.weight for r in graph.relations), default=1)
    for r in sorted(graph.relations, key=lambda r: r.weight):
        shade = int(200 - 150 * r.weight / top_weight)
        draw.line([xy(r.a), xy(r.b)], fill=(shade, shade, 230), width=max(1, round(6 * r.weight / top_weight)))
    top_mentions = max((p.mentions for p in graph.persons), default=1)
    legend: dict[int, str] = {}
    for i, person in enumerate(graph.persons, 1):
        x, y = xy(person.name)
        radius = 8 + 22 * math.sqrt(person.mentions / top_mentions)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 190, 90), outline=(120, 60, 0))
        label = person.name if font_path else str(i)
        if not font_path:
            legend[i] = person.name
        draw.text((x, y + radius + 2), label, fill="black", font=label_font, anchor="mt")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return PngResult(path, font_path, legend)
