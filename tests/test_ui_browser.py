"""The web UI in a real browser (Debian's chromium driven by Playwright; no browser download).

The end-to-end test streams from the real ChatGLM path (tiny random-weight GLM, 3000 new
tokens so the answer grows for many seconds) and presses Stop mid-answer. The README
screenshot uses a scripted LLM only for a readable answer; retrieval and the page are real.
Set UPDATE_README_SCREENSHOT=1 to write it to docs/screenshot.png.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.services import Services
from tests.test_app import KB, generating, long_answers, make_settings, serve, wait_until

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]

# JS: the status line shows the map stage with at least one piece done ("map ▰▱▱ 4/16").
MAP_STARTED_JS = r"""() => {
    const m = document.querySelector('#summary-status').innerText.match(/map .* (\d+)\/(\d+)/);
    return m !== null && Number(m[1]) >= 1;
}"""
# JS: texts of the answer bubbles (bot messages that are not the titled sources box).
ANSWERS_JS = """() => Array.from(document.querySelectorAll('#chatbot [data-testid="bot"]'))
    .map(e => e.innerText).filter(t => !t.includes('引用来源'))"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def open_page(browser: Any, url: str) -> Any:
    """A new tab on ``url``; ``page.outside`` collects every request to another host."""
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.outside = []
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else page.outside.append(r.url))
    page.goto(url)
    page.wait_for_selector("#question textarea", timeout=60_000)
    return page


def answer_length(page: Any) -> int:
    texts = page.evaluate(ANSWERS_JS)
    return len(texts[-1]) if texts else 0


def ask(page: Any, question: str) -> None:
    page.fill("#question textarea", question)
    page.press("#question textarea", "Enter")


def test_answer_streams_shows_sources_and_stops(browser: Any, kb_root: Path, slow_llm: Any) -> None:
    state = Services(make_settings(kb_root), llm=slow_llm)
    with serve(state) as url:
        page = open_page(browser, url)
        assert page.input_value("#chat-kb input") == KB
        ask(page, "刘备和谁结义？")
        assert wait_until(lambda: answer_length(page) > 0, timeout=60)
        # the answer grows while we watch
        lengths = [answer_length(page)]
        deadline = time.monotonic() + 20
        while len(set(lengths)) < 4 and time.monotonic() < deadline:
            page.wait_for_timeout(200)
            lengths.append(answer_length(page))
        assert lengths == sorted(lengths) and len(set(lengths)) >= 4, lengths
        # the cited passages are there, collapsed under a titled box; open it
        page.get_by_text("引用来源 / Sources (3)").click()
        page.wait_for_selector("#chatbot .glmkb-src", timeout=10_000)
        sources = page.inner_text("#chatbot")
        assert "sanguo.txt" in sources and "score" in sources
        assert generating(slow_llm)

        page.click("#stop-btn")
        assert wait_until(lambda: not generating(slow_llm), timeout=10), "the model kept generating after Stop"
        assert wait_until(lambda: "已停止" in page.inner_text("#chatbot"), timeout=10)
        stopped_at = answer_length(page)
        page.wait_for_timeout(1500)
        assert answer_length(page) == stopped_at, "the answer kept growing after Stop"
        assert 0 < stopped_at < 3000
        assert page.outside == [], "the page tried to reach other hosts (fonts, CDNs, telemetry)"
        page.close()


def test_upload_and_build_from_the_browser(browser: Any, kb_root: Path, qa_llm: Any, tmp_path: Path, sanguo_text: str) -> None:
    state = Services(make_settings(kb_root, max_upload_mb=1), llm=qa_llm)
    good = tmp_path / "第二部分.txt"
    good.write_text(sanguo_text[20_000:30_000], encoding="utf-8")
    bad = tmp_path / "scan.pdf"
    bad.write_bytes(b"%PDF-1.4")
    with serve(state) as url:
        page = open_page(browser, url)
        page.get_by_role("tab", name="知识库管理 / Manage").click()
        page.fill("#new-kb textarea, #new-kb input", "浏览器库")
        page.click("#create-btn")
        page.wait_for_selector("text=已创建知识库 浏览器库", timeout=20_000)
        page.set_input_files("#upload-files input[type=file]", [str(good), str(bad)])
        page.wait_for_selector("text=不支持的文件类型：scan.pdf", timeout=20_000)
        page.click("#build-btn")
        page.wait_for_selector("text=新增 1", timeout=60_000)
        table = page.inner_text("#docs-table")
        assert "第二部分.txt" in table and "scan.pdf" not in table
        page.close()


def test_summary_shows_map_progress_then_streams(browser: Any, kb_root: Path, tiny_chatglm: Any) -> None:
    llm = tiny_chatglm.model_copy(update={"max_new_tokens": 200})
    with serve(Services(make_settings(kb_root), llm=llm)) as url:
        page = open_page(browser, url)
        page.get_by_role("tab", name="长文总结 / Summary").click()
        assert wait_until(lambda: page.input_value("#summary-kb input") == KB, timeout=20)
        page.wait_for_function(
            "() => document.querySelector('#summary-tab-doc input')?.value === 'sanguo.txt'", timeout=20_000
        )
        page.fill("#summary-chapters textarea", "第1-3回")
        page.click("#summarize-btn")
        # the map stage: Gradio's progress bar over the output, and our status line
        page.wait_for_selector("#summary-output .progress-level", timeout=60_000)
        page.wait_for_function(MAP_STARTED_JS, timeout=60_000)
        # then the summary itself grows, piece by piece
        page.wait_for_function("() => document.querySelector('#summary-output').innerText.length > 0", timeout=120_000)
        lengths = []
        deadline = time.monotonic() + 240
        while "完成" not in page.inner_text("#summary-status") and time.monotonic() < deadline:
            lengths.append(len(page.inner_text("#summary-output")))
            page.wait_for_timeout(50)
        assert "完成 / done" in page.inner_text("#summary-status")
        assert len(set(lengths)) >= 3, lengths
        page.close()


def test_summary_stop_ends_the_map_batch(browser: Any, kb_root: Path, tiny_chatglm: Any) -> None:
    """The summary tab's Stop frees the model within a token even inside a batched map step."""
    llm = long_answers(tiny_chatglm)
    with serve(Services(make_settings(kb_root), llm=llm)) as url:
        page = open_page(browser, url)
        page.get_by_role("tab", name="长文总结 / Summary").click()
        page.wait_for_function(
            "() => document.querySelector('#summary-tab-doc input')?.value === 'sanguo.txt'", timeout=20_000
        )
        page.fill("#summary-chapters textarea", "第1-2回")
        page.click("#summarize-btn")
        assert wait_until(lambda: llm.forced.steps > 20, timeout=60), "the map batch did not start"
        page.click("#summary-stop-btn")
        assert wait_until(lambda: not generating(llm), timeout=10), "the model kept generating after Stop"
        assert llm.forced.steps < 1500
        page.wait_for_function("() => document.querySelector('#summary-status').innerText.includes('已停止')", timeout=10_000)
        page.close()


def test_screenshot_for_the_readme(browser: Any, kb_root: Path, tmp_path: Path) -> None:
    """The page as a user sees it: streamed answer, sources opened, Chinese text rendered."""
    from langchain_core.language_models.fake import FakeStreamingListLLM

    answer = "刘备与关羽、张飞在桃园结义，三人誓同生死，共图大事。[1][3]"
    llm = FakeStreamingListLLM(
        responses=[answer] * 10, sleep=0.02, custom_get_token_ids=lambda text: list(range(len(text)))
    )
    with serve(Services(make_settings(kb_root), llm=llm)) as url:
        page = open_page(browser, url)
        ask(page, "刘备和谁结义？")
        page.wait_for_function(
            "(a) => document.querySelector('#chatbot').innerText.includes(a)", arg=answer, timeout=30_000
        )
        page.get_by_text("引用来源 / Sources (3)").click()
        page.wait_for_selector("#chatbot .glmkb-src", timeout=10_000)
        time.sleep(0.5)
        shot = tmp_path / "screenshot.png"
        page.screenshot(path=str(shot))
        page.close()
    assert 20_000 < shot.stat().st_size < 500_000
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "screenshot.png")


# fixtures shared with the gradio_client tests
from tests.test_app import kb_root, qa_llm, sanguo_text, slow_llm  # noqa: E402,F401
