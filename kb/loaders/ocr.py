"""OCR of scanned pages and images with rapidocr-onnxruntime (Apache-2.0): its wheel ships the
PP-OCRv4 Chinese detection and recognition models, so it works offline on CPU.

The engine is loaded once per process, on the first page that needs it. Images are read with
Pillow (its decompression-bomb limit stays on); a multi-page TIFF is one page per frame.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from kb.errors import DocumentLoadError
from kb.loaders.document import LoadedDocument, text_blocks
from kb.loaders.layout import join_pages, remove_headers_and_footers

logger = logging.getLogger(__name__)

OCR_MODES = ("off", "auto", "force")
# Text lines whose vertical centres are closer than this share of their height are one row.
_SAME_ROW = 0.5
# An image larger than this many pixels on a side is scaled down first (OCR time grows with
# pixels; the models read text lines of ~32-48 px height).
MAX_SIDE = 4000
OCR_THREADS = 1


def check_ocr_mode(ocr: str) -> str:
    if ocr not in OCR_MODES:
        raise ValueError(f"ocr must be one of {', '.join(OCR_MODES)}, not {ocr!r}")
    return ocr


@functools.cache
def ocr_engine() -> Any:
    """The RapidOCR engine (loaded once); DocumentLoadError when it is not installed."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        raise DocumentLoadError(
            "reading scanned pages needs the OCR engine: pip install rapidocr-onnxruntime (or glmkb[ocr])"
        ) from e
    # One onnxruntime thread: on the shared 2-core machine a page took 8.6 s (8.3 CPU-s) with one
    # and 52 s (16.8 CPU-s) with two, whose spinning threads fight the other processes.
    return RapidOCR(intra_op_num_threads=OCR_THREADS, inter_op_num_threads=1, print_verbose=False)


def ocr_lines(image: Any) -> list[str]:
    """The text lines of a Pillow image, top to bottom, boxes on one row left to right."""
    import numpy as np

    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    result, _ = ocr_engine()(np.asarray(image))
    boxes = []
    for box, text, _score in result or []:
        ys = [point[1] for point in box]
        xs = [point[0] for point in box]
        boxes.append(((min(ys) + max(ys)) / 2, max(ys) - min(ys), min(xs), text.strip()))
    boxes.sort()
    rows: list[list[tuple[float, float, float, str]]] = []
    for box in boxes:
        if rows and abs(box[0] - rows[-1][0][0]) < _SAME_ROW * max(box[1], rows[-1][0][1]):
            rows[-1].append(box)
        else:
            rows.append([box])
    return [line for row in rows if (line := " ".join(b[3] for b in sorted(row, key=lambda b: b[2]) if b[3]).strip())]


def load_image(path: Path, *, ocr: str) -> LoadedDocument:
    """An image (PNG/JPEG/TIFF...) read by OCR, one page per frame."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    if check_ocr_mode(ocr) == "off":
        raise DocumentLoadError(f"{path} is an image and OCR is off; run with --ocr auto to read it")
    pages: list[list[str]] = []
    try:
        with Image.open(path) as image:
            frames = list(ImageSequence.Iterator(image))
            for number, frame in enumerate(frames, 1):
                logger.info("OCR %s: page %d/%d", path.name, number, len(frames))
                pages.append(ocr_lines(frame))
    except Image.DecompressionBombError as e:
        raise DocumentLoadError(f"{path} has too many pixels to be a page ({e}); scale it down") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DocumentLoadError(f"{path} is a damaged {_image_kind(path)} image; save it again") from e
    pieces, starts = join_pages(remove_headers_and_footers(pages))
    if not "".join(pieces).strip():
        raise DocumentLoadError(f"{path}: OCR found no text in the image; there is nothing to add")
    return LoadedDocument(path, "image", "ocr", text_blocks(pieces), page_starts=tuple(starts))


def _image_kind(path: Path) -> str:
    """PNG, JPEG, TIFF... by the file's first bytes (for messages)."""
    with path.open("rb") as stream:
        head = stream.read(12)
    kinds = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP", b"GIF8": "GIF"}
    return next((kind for magic, kind in kinds.items() if head.startswith(magic)), "WebP" if head[8:12] == b"WEBP" else "")
