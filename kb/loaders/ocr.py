"""OCR of scanned pages and images with rapidocr-onnxruntime (Apache-2.0): its wheel ships the
PP-OCRv4 Chinese detection and recognition models, so it works offline on CPU.

The engine is loaded once per process, on the first page that needs it. Images are read with
Pillow (its decompression-bomb limit stays on); a multi-page TIFF is one page per frame.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
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
# Lines recognised with less confidence are dropped (rapidocr's own default threshold).
_TEXT_SCORE = 0.5
# A page whose text reads with less mean confidence per character is not upright: measured 0.99 on
# upright rendered pages, 0.26-0.38 upside down and 0.33-0.51 turned counter-clockwise.
_UPRIGHT_CONFIDENCE = 0.8
# A box this much taller than wide stands (rapidocr turns such a crop by 90° before reading it).
_TALL = 1.5
# The first reading is kept over the turned one only when its score is this many times higher.
_CLEARLY_BETTER = 1.2
# A page that reads with low confidence is upright, and read once, when rapidocr's line direction
# classifier (the model it ships for use_cls) reads at least this share of its lines' width at 0°.
# Measured on a rendered 10-line page degraded by noise, blur and downscaling (mean confidence
# 0.18-0.97): upright 0.89-1.00, upside down 0.00-0.22; ~10 ms, against a second pass of ~1.5 s.
_UPRIGHT_SHARE = 0.5


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
    # No per-line 180° classifier (use_cls) and every box returned (text_score=0, filtered in
    # ocr_lines): then an upside-down page reads with low confidence instead of being turned line
    # by line into lines in reverse order, which is how _upright_boxes sees that it is turned.
    # On upright pages the text was the same with and without the classifier.
    return RapidOCR(
        intra_op_num_threads=OCR_THREADS, inter_op_num_threads=1, print_verbose=False, use_cls=False, text_score=0.0
    )


def ocr_lines(image: Any) -> list[str]:
    """The text lines of a Pillow image, top to bottom, boxes on one row left to right; a page
    scanned turned by 90°, 180° or 270° is read upright (see ``_upright_boxes``)."""
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE))
    return _rows([box for box in _upright_boxes(image) if box.confidence >= _TEXT_SCORE])


@dataclass(frozen=True)
class _Box:
    """One detected text line: its place on the image, recognised text and confidence."""

    centre_y: float
    height: float
    left: float
    width: float
    text: str
    confidence: float


def _read(image: Any) -> list[_Box]:
    """One OCR pass over an RGB image: every detected box, however unsure its text."""
    import numpy as np

    result, _ = ocr_engine()(np.asarray(image))
    boxes = []
    for points, text, confidence in result or []:
        xs, ys = [point[0] for point in points], [point[1] for point in points]
        top, bottom, left, right = min(ys), max(ys), min(xs), max(xs)
        boxes.append(_Box((top + bottom) / 2, bottom - top, left, right - left, text.strip(), float(confidence)))
    return boxes


def _upright_boxes(image: Any) -> list[_Box]:
    """The boxes of the page read upright: the first pass as it is, a second one turned only
    where the first does not look upright, and of the two the one with the better score.

    Measured on a rendered A4 page (5 lines of 30 characters, 150 dpi) on the shared 2-core
    machine: upright, one pass, 1.66 s (1.64 s before, with the line classifier); turned, two
    passes, 3.0-3.4 s. Character error rate turned 90°/180°/270°: 14 %/85 %/86 % before (lines
    out of order, cut in pieces), 0 % after, as upright."""
    first = _read(image)
    turn = _turn_to_try(image, first) if first else None
    if turn is None:
        return first
    turned = _read(image.rotate(turn, expand=True))
    # By score, not by box shape alone: a page turned clockwise reads as well as it is (~126 vs
    # ~129 weighted characters), only in the wrong order, so the turned reading is kept unless the
    # first is clearly better (an upright page that only looked turned, or vertical writing).
    if _score(first) > _CLEARLY_BETTER * _score(turned):
        return first
    logger.info("OCR: the page was scanned turned; read it turned by %d°", turn)
    return turned


def _turn_to_try(image: Any, boxes: list[_Box]) -> int | None:
    """How far (degrees counter-clockwise, as ``Image.rotate``) the page may need turning to
    read upright; None when it already reads upright (most pages: no second pass)."""
    confident = _confidence(boxes) >= _UPRIGHT_CONFIDENCE
    if _is_vertical(boxes):
        # rapidocr turns a tall box 90° counter-clockwise before reading it: the text reads well
        # when it runs top to bottom (the page was turned clockwise), upside down when it runs
        # bottom to top (turned counter-clockwise): mean confidence 0.99 vs 0.51 measured.
        return 90 if confident else 270
    if confident:
        return None
    share = _upright_share(image, boxes)  # a poor scan reads with low confidence upright too
    return None if share is not None and share >= _UPRIGHT_SHARE else 180


def _upright_share(image: Any, boxes: list[_Box]) -> float | None:
    """The share of the lying boxes' width that rapidocr's direction classifier reads upright (0°, not
    180°); None where it cannot tell (no lying box, or an engine without the classifier)."""
    import numpy as np

    classify = getattr(ocr_engine(), "text_cls", None)
    pixels = np.asarray(image)
    crops = [crop for crop in (_crop(pixels, box) for box in boxes) if crop is not None]
    if classify is None or not crops:
        return None
    _, labels, _ = classify(crops)
    widths = [crop.shape[1] for crop in crops]
    return sum(width for width, (label, _) in zip(widths, labels) if label == "0") / sum(widths)


def _crop(pixels: Any, box: _Box) -> Any:
    """The box's upright rectangle of the page's pixels if the box lies (wider than tall), else None."""
    top, bottom = max(0, int(box.centre_y - box.height / 2)), int(box.centre_y + box.height / 2) + 1
    left, right = max(0, int(box.left)), int(box.left + box.width) + 1
    crop = pixels[top:bottom, left:right]
    return crop if crop.size and crop.shape[1] >= crop.shape[0] else None


def _is_vertical(boxes: list[_Box]) -> bool:
    """Whether more boxes stand tall than lie wide (lines of a page turned by 90° or 270°)."""
    tall = sum(box.height >= _TALL * box.width for box in boxes)
    wide = sum(box.width >= _TALL * box.height for box in boxes)
    return tall > wide


def _confidence(boxes: list[_Box]) -> float:
    """Mean recognition confidence per recognised character (0 when nothing was recognised)."""
    characters = sum(len(box.text) for box in boxes)
    return sum(box.confidence * len(box.text) for box in boxes) / characters if characters else 0.0


def _score(boxes: list[_Box]) -> float:
    """Confidence-weighted count of the characters that are kept (lines at or above the
    engine's threshold): what a reading is worth."""
    return sum(box.confidence * len(box.text) for box in boxes if box.confidence >= _TEXT_SCORE)


def _rows(boxes: list[_Box]) -> list[str]:
    """The boxes' texts joined into lines: top to bottom, boxes on one row left to right."""
    boxes = sorted(boxes, key=lambda box: (box.centre_y, box.left))
    rows: list[list[_Box]] = []
    for box in boxes:
        if rows and abs(box.centre_y - rows[-1][0].centre_y) < _SAME_ROW * max(box.height, rows[-1][0].height):
            rows[-1].append(box)
        else:
            rows.append([box])
    lines = (" ".join(box.text for box in sorted(row, key=lambda box: box.left) if box.text) for row in rows)
    return [line.strip() for line in lines if line.strip()]


def load_image(path: Path, *, ocr: str) -> LoadedDocument:
    """An image (PNG/JPEG/TIFF...) read by OCR, one page per frame, turned as its EXIF
    Orientation tag says (a phone photo is stored sideways with a tag that turns it upright)."""
    from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

    if check_ocr_mode(ocr) == "off":
        raise DocumentLoadError(f"{path} is an image and OCR is off; run with --ocr auto to read it")
    pages: list[list[str]] = []
    try:
        with Image.open(path) as image:
            # Each frame is read while the file is at it: the iterator yields the one image object,
            # so a list of its frames was the last frame n times (a 2-page TIFF read page 2 twice).
            count = getattr(image, "n_frames", 1)
            for number, frame in enumerate(ImageSequence.Iterator(image), 1):
                logger.info("OCR %s: page %d/%d", path.name, number, count)
                pages.append(ocr_lines(ImageOps.exif_transpose(frame)))
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
    kinds = {
        b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"BM": "BMP", b"GIF8": "GIF"
    }
    webp = "WebP" if head[8:12] == b"WEBP" else ""
    return next((kind for magic, kind in kinds.items() if head.startswith(magic)), webp)
