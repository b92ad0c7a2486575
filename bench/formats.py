"""Document formats on this CPU: text-layer PDF extraction, a 500-page PDF ingest, OCR.

    python -m bench.formats                  # 500-page PDF + 3 OCR pages (needs ../shared/corpus)
    python -m bench.formats --pages 100 --ocr-pages 1

Builds a text PDF of 三国演义 (then 西游记) chapters with reportlab's STSong-Light, ~1,500
characters a page, an outline, running headers and page-number footers (tests/fixtures/
documents.py), and image-only pages rendered with Pillow in a Debian CJK font. Each step runs
in a child process so its peak RSS (VmHWM) is its own:

- ``extract``: ``open_document`` + every text block (pages/s of the text layer);
- ``ingest``: ``KnowledgeBase.add_files`` keyword-only (jieba + BM25), as ``ingest build
  --embedding none`` does it;
- ``ocr``: ``open_document(ocr="auto")`` on the scanned pages (pages/s, RSS with the models).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, parser, print_table, write_result
from bench.rss import peak_rss_mib
from tests.fixtures.corpus import CORPUS_DIR as CORPUS  # GLMKB_TEST_CORPUS, else ../shared/corpus


def make_text_pdf(path: Path, pages: int) -> int:
    from tests.fixtures.documents import novel_chapters, write_pdf

    chapters = []
    for name in ("sanguo.txt", "xiyouji.txt"):
        chapters += novel_chapters((CORPUS / name).read_text(encoding="utf-8"), 1, 200)
    count = max(1, pages // 4)  # ~4 pages a chapter; grown until the PDF has ``pages`` pages
    while True:
        written = write_pdf(path, chapters[:count])
        if len(written) >= pages or count >= len(chapters):
            return len(written)
        count = min(len(chapters), int(count * pages / len(written)) + 2)


def make_scanned_pdf(path: Path, pages: int) -> str:
    from tests.fixtures.documents import novel_chapters, wrap, write_scanned_pdf

    [chapter] = novel_chapters((CORPUS / "sanguo.txt").read_text(encoding="utf-8"), 1, 1)
    lines = [line for p in chapter.paragraphs for line in wrap(p, len, 34)]
    per_page = 30
    page_lines = [lines[i * per_page : (i + 1) * per_page] for i in range(pages)]
    write_scanned_pdf(path, page_lines)
    return "".join("".join(p) for p in page_lines)


def child(step: str, pdf: Path, workdir: Path) -> dict:
    """Run one step in this process and return its numbers."""
    from kb import KnowledgeBase
    from kb.loaders import open_document

    import kb.loaders.pdf  # noqa: F401  (imports are not what is timed)

    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    if step == "extract":
        document = open_document(pdf, ocr="off")
        chars = sum(len(block) for block in document.blocks())
        result = {"pages": len(document.page_starts), "chars": chars, "headings": len(document.headings)}
    elif step == "ingest":
        base = KnowledgeBase(workdir, "bench", create=True, embedding_model="none")
        report = base.add_files([pdf], ocr="off")
        result = {"chunks": report.chunks_added}
    elif step == "ocr":
        document = open_document(pdf, ocr="auto")
        text = "".join(document.blocks())
        result = {"pages": len(document.page_starts), "chars": len(text), "text": text}
    else:
        raise SystemExit(f"unknown step {step}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.update(
        seconds=time.perf_counter() - started,
        cpu_seconds=usage.ru_utime + usage.ru_stime - cpu_before,
        peak_rss_mib=peak_rss_mib(),
    )
    return result


def run_child(step: str, pdf: Path, workdir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.formats", "--step", step, "--pdf", str(pdf), "--workdir", str(workdir)],
        cwd=REPO, capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--pages", type=int, default=500, help="pages of the text PDF")
    p.add_argument("--ocr-pages", type=int, default=3, help="scanned pages to OCR")
    p.add_argument("--step", help=argparse_hidden())
    p.add_argument("--pdf", type=Path, help=argparse_hidden())
    p.add_argument("--workdir", type=Path, help=argparse_hidden())
    args = p.parse_args()
    if args.step:
        print(json.dumps(child(args.step, args.pdf, args.workdir), ensure_ascii=False))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text_pdf = folder / "novel.pdf"
        pages = make_text_pdf(text_pdf, args.pages)
        extract = run_child("extract", text_pdf, folder)
        ingest = run_child("ingest", text_pdf, folder)
        ocr = None
        if args.ocr_pages > 0:  # --ocr-pages 0: the text PDF steps alone
            scanned = folder / "scanned.pdf"
            source = make_scanned_pdf(scanned, args.ocr_pages)
            ocr = run_child("ocr", scanned, folder)
    steps = [("text PDF extract", pages, extract), ("text PDF ingest (keyword-only)", pages, ingest)]
    if ocr is not None:
        from tests.test_loaders_ocr import character_error_rate

        ocr["cer"] = character_error_rate(ocr.pop("text"), source)
        steps.append(("OCR (scanned pages)", ocr["pages"], ocr))
    rows = [
        (name, n, f"{r['seconds']:.2f}", f"{r['cpu_seconds']:.2f}", f"{n / r['seconds']:.3g}", f"{n / r['cpu_seconds']:.3g}",
         f"{r['peak_rss_mib']:.0f}")
        for name, n, r in steps
    ]
    print_table("formats", rows, ("step", "pages", "wall s", "CPU s", "pages/s", "pages/CPU-s", "peak RSS MiB"))
    cer = f"; OCR CER {ocr['cer']:.2%}" if ocr is not None else ""
    print(f"text PDF: {extract['chars']} characters, {extract['headings']} outline headings{cer}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    write_result(args.out, "formats", {"pages": pages, "extract": extract, "ingest": ingest, "ocr": ocr,
                                       "loadavg": os.getloadavg()})


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
