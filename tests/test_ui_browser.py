"""The web UI in a real browser (Debian's chromium driven by Playwright; no browser download).

The end-to-end test streams from the real ChatGLM path (tiny random-weight GLM, 3000 new
tokens so the answer grows for many seconds) and presses Stop mid-answer. The README
screenshot uses a scripted LLM only for a readable answer; retrieval and the page are real.
Set UPDATE_README_SCREENSHOT=1 to write it to docs/screenshot.png, and UPDATE_SCREENSHOTS=1 to
write the three tabs to docs/screenshot-{chat,summary,manage}.png.

What a newcomer met (issue 18) is checked in the page itself: errors are a Chinese-titled toast
plus a status line and never an overlay over a control; a question sent while an answer streams
is kept; KB create/delete is what ``ingest list`` sees; a PNG renamed .txt is refused at upload;
chapter labels keep the document's unit; the summary's one progress display moves inside a map
batch; and no page text names a CLI flag or a server path.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.services import Services
from tests.test_app import KB, generating, long_answers, make_settings, serve, throttled, wait_until

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
# JS: red "Error" boxes Gradio draws over a failed event's outputs that are still visible.
OVERLAYS_JS = """() => Array.from(document.querySelectorAll('.wrap'))
    .filter(w => w.querySelector(':scope > .error') && getComputedStyle(w).display !== 'none').length"""
# JS: what each toast's title shows (Gradio writes "Error"; ui.CSS shows 错误 in its place).
TOAST_TITLES_JS = """() => Array.from(document.querySelectorAll('.toast-title')).map(t =>
    getComputedStyle(t).fontSize === '0px' ? getComputedStyle(t, '::before').content : t.innerText)"""
# JS: the page's visible text, toasts included.
PAGE_TEXT_JS = "() => document.body.innerText"
# A command-line flag or an absolute server path in the page is a bug (issue 18 #8).
CLI_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
SERVER_PATH = re.compile(r"(?<![\w.~])/(?:tmp|home|root|srv|work|var|usr|opt)/")
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
    # A Chinese-speaking user's browser: Gradio's own words (the upload box) follow its locale.
    page = browser.new_page(viewport={"width": 1280, "height": 860}, locale="zh-CN")
    page.outside = []
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else page.outside.append(r.url))
    page.goto(url)
    page.wait_for_selector("#question textarea", timeout=60_000)
    return page


def choose_kb(page: Any, picker: str, name: str) -> None:
    """Type ``name`` into a KB picker once the page's load events have refreshed the pickers: a
    name typed before that is replaced by the refreshed value (a flake: the chat then asked the
    default KB and never showed the missing-KB error)."""
    page.wait_for_timeout(1500)  # the load events (no DOM signal of their end on the chat tab)
    for _ in range(3):
        page.fill(f"{picker} input", name)
        page.press(f"{picker} input", "Enter")
        page.wait_for_timeout(1000)
        if page.input_value(f"{picker} input") == name:
            return
    raise AssertionError(f"the KB picker {picker} kept resetting: {page.input_value(f'{picker} input')!r}")


def assert_chinese_page(page: Any) -> None:
    """No English-only toast titles, CLI flags or server paths anywhere in the page."""
    text = page.evaluate(PAGE_TEXT_JS)
    assert not CLI_FLAG.search(text), CLI_FLAG.search(text)
    assert not SERVER_PATH.search(text), SERVER_PATH.search(text)
    titles = page.evaluate(TOAST_TITLES_JS)
    assert all(t in ('"错误"', '"注意"', '"提示"') for t in titles), titles


def save_screenshot(page: Any, name: str, tmp_path: Path, *, full_page: bool = False) -> Path:
    """A screenshot of the page (toasts closed); copied to docs/ when UPDATE_SCREENSHOTS=1."""
    for close in page.locator(".toast-close").all():
        close.click()
    page.wait_for_timeout(300)
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=full_page)
    assert 20_000 < shot.stat().st_size < 1_000_000
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, REPO / "docs" / name)
    return shot


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
        # Bug: Enter/发送 while an answer streamed did nothing and a question was lost. Send is
        # disabled with a hint, and the next question waits in the box until the answer ends.
        assert page.locator("#send-btn").is_disabled() and "回答中" in page.inner_text("#send-btn")
        assert "正在回答" in page.inner_text("#chat-status")
        ask(page, "关羽用什么兵器？")
        page.wait_for_timeout(1000)
        assert page.input_value("#question textarea") == "关羽用什么兵器？"
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
        # After the answer: send works again and the kept question goes out.
        page.wait_for_function("() => !document.querySelector('#send-btn').disabled", timeout=10_000)
        assert page.input_value("#question textarea") == "关羽用什么兵器？"
        page.click("#send-btn")
        page.wait_for_function(
            "() => document.querySelector('#chatbot').innerText.includes('关羽用什么兵器？')", timeout=20_000
        )
        assert page.input_value("#question textarea") == ""
        assert wait_until(lambda: generating(slow_llm), timeout=30)
        page.click("#stop-btn")
        assert wait_until(lambda: not generating(slow_llm), timeout=10)
        assert_chinese_page(page)
        assert page.outside == [], "the page tried to reach other hosts (fonts, CDNs, telemetry)"
        page.close()


def test_errors_are_a_toast_and_a_status_line_never_an_overlay(browser: Any, kb_root: Path, qa_llm: Any) -> None:
    """Bug: red "错误" overlays covered the KB picker, the chat and the delete-confirm checkbox
    after any error, until each overlay's × was clicked."""
    with serve(Services(make_settings(kb_root), llm=qa_llm)) as url:
        page = open_page(browser, url)
        # chat: a knowledge base that does not exist
        choose_kb(page, "#chat-kb", "没有这个库")
        ask(page, "刘备是谁？")
        # The toast first: it leaves after 10 s, and on a loaded machine the status line came later
        # than that (CI, session 23: an empty toast list once the status line showed).
        page.wait_for_function("() => [...document.querySelectorAll('.toast-body')]"
                               ".some(t => t.innerText.includes('没有名为 没有这个库 的知识库'))", timeout=20_000)
        assert page.evaluate(TOAST_TITLES_JS) == ['"错误"']
        page.wait_for_function("() => document.querySelector('#chat-status').innerText.includes('没有名为')",
                               timeout=20_000)
        assert page.evaluate(OVERLAYS_JS) == 0
        page.fill("#question textarea", "还能输入")  # the chat is not covered
        # manage: delete without ticking the box, then tick it (it must not be covered)
        page.get_by_role("tab", name="知识库管理 / Manage").click()
        page.click("#drop-box button:has-text('删除整个知识库')")
        page.click("#drop-btn")
        page.wait_for_function("() => document.querySelector('#manage-status').innerText.includes('请先勾选')",
                               timeout=20_000)
        assert page.evaluate(OVERLAYS_JS) == 0
        page.locator("#drop-confirm input").check(timeout=5_000)  # fails if anything covers it
        assert page.locator("#drop-confirm input").is_checked()
        page.locator("#drop-confirm input").uncheck()
        assert page.evaluate(OVERLAYS_JS) == 0
        assert_chinese_page(page)
        page.close()


def test_create_upload_refuse_build_ask_and_delete_from_the_browser(
    browser: Any, kb_root: Path, qa_llm: Any, tmp_path: Path, sanguo_text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A KB made in the page is the one ``ingest list`` sees; a PNG renamed .txt is refused at
    upload and leaves the box; a Markdown ``## 第二章`` heading is cited as 第二章, not 第2回."""
    from ingest.cli import main as ingest

    state = Services(make_settings(kb_root, max_upload_mb=1), llm=qa_llm)
    good = tmp_path / "第二部分.md"
    good.write_text("# 笔记\n\n## 第二章 休假\n\n" + sanguo_text[20_000:26_000], encoding="utf-8")
    fake = tmp_path / "fake.txt"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    bad = tmp_path / "scan.pages"  # an Apple Pages document: no loader reads it
    bad.write_text("回\n", encoding="utf-8")
    with serve(state) as url:
        page = open_page(browser, url)
        page.get_by_role("tab", name="知识库管理 / Manage").click()
        page.fill("#new-kb textarea, #new-kb input", "浏览器库")
        page.get_by_text("关键词（无需模型）/ keywords").click()
        page.click("#create-btn")
        page.wait_for_selector("text=已创建知识库 浏览器库", timeout=20_000)
        page.set_input_files("#upload-files input[type=file]", [str(good), str(fake), str(bad)])
        page.wait_for_selector("text=不支持的文件类型：scan.pages", timeout=20_000)
        page.wait_for_selector("text=不是可读的文本文件：fake.txt", timeout=20_000)
        page.wait_for_function(
            "() => !document.querySelector('#upload-files').innerText.includes('fake.txt')", timeout=10_000
        )
        assert "第二部分" in page.inner_text("#upload-files")  # the box shows name and extension apart
        page.click("#build-btn")
        page.wait_for_selector("text=新增 1", timeout=60_000)
        table = page.inner_text("#docs-table")
        assert "第二部分.md" in table and "fake.txt" not in table and "scan.pages" not in table
        assert page.evaluate(OVERLAYS_JS) == 0
        capsys.readouterr()
        assert ingest(["list", "--kb-root", str(kb_root)]) == 0
        assert "浏览器库" in capsys.readouterr().out
        # the chapter unit in the chat's sources
        page.get_by_role("tab", name="知识库问答 / Chat").click()
        page.fill("#chat-kb input", "浏览器库")
        page.press("#chat-kb input", "Enter")
        ask(page, "休假的时候发生了什么？")
        page.get_by_text(re.compile(r"引用来源 / Sources \(\d\)")).click()
        page.wait_for_selector("#chatbot .glmkb-src", timeout=30_000)
        sources = page.inner_text("#chatbot")
        assert "第二章 休假" in sources and "第2回" not in sources
        # delete it: gone from the page and from ingest list
        page.get_by_role("tab", name="知识库管理 / Manage").click()
        page.fill("#manage-kb input", "浏览器库")
        page.press("#manage-kb input", "Enter")
        page.wait_for_function("() => document.querySelector('#docs-table').innerText.includes('第二部分.md')",
                               timeout=20_000)
        save_screenshot(page, "screenshot-manage.png", tmp_path, full_page=True)
        page.click("#drop-box button:has-text('删除整个知识库')")
        page.locator("#drop-confirm input").check()
        page.click("#drop-btn")
        page.wait_for_selector("text=已删除知识库 浏览器库", timeout=20_000)
        assert_chinese_page(page)
        page.close()
    capsys.readouterr()
    ingest(["list", "--kb-root", str(kb_root)])
    assert "浏览器库" not in capsys.readouterr().out
    assert not (kb_root / "浏览器库").exists(), "deleting leaves no folder behind"


def test_summary_shows_map_progress_then_streams(browser: Any, kb_root: Path, tiny_chatglm: Any, tmp_path: Path) -> None:
    """The summary grows piece by piece. Bug: under load the unthrottled reduce stage (200 tokens)
    ended before the page was first polled, and no growth was seen: >= 20 ms a step now."""
    llm = tiny_chatglm.model_copy(update={"max_new_tokens": 200})
    with throttled(tiny_chatglm.model, seconds_per_step=0.02), \
            serve(Services(make_settings(kb_root), llm=llm)) as url:
        page = open_page(browser, url)
        page.get_by_role("tab", name="长文总结 / Summary").click()
        assert wait_until(lambda: page.input_value("#summary-kb input") == KB, timeout=20)
        page.wait_for_function(
            "() => document.querySelector('#summary-tab-doc input')?.value === 'sanguo.txt'", timeout=20_000
        )
        # a bad range: the reason in the status line; the next run resets it
        page.fill("#summary-chapters textarea", "第几回")
        page.click("#summarize-btn")
        page.wait_for_function("() => document.querySelector('#summary-status').innerText.includes('⚠️')",
                               timeout=30_000)
        assert page.evaluate(OVERLAYS_JS) == 0
        page.fill("#summary-chapters textarea", "第1-3回")
        page.click("#summarize-btn")
        page.wait_for_function("() => !document.querySelector('#summary-status').innerText.includes('⚠️')",
                               timeout=30_000)
        # the map stage: our status line is the one progress display (no Gradio bar as well)
        page.wait_for_function(MAP_STARTED_JS, timeout=60_000)
        assert page.locator(".progress-level").count() == 0, "two progress displays"
        # then the summary itself grows, piece by piece
        page.wait_for_function("() => document.querySelector('#summary-output').innerText.length > 0", timeout=120_000)
        lengths = []
        deadline = time.monotonic() + 240
        while "完成" not in page.inner_text("#summary-status") and time.monotonic() < deadline:
            lengths.append(len(page.inner_text("#summary-output")))
            page.wait_for_timeout(50)
        assert "完成 / done" in page.inner_text("#summary-status")
        assert len(set(lengths)) >= 3, lengths
        assert_chinese_page(page)
        page.close()


def test_summary_stop_ends_the_map_batch(browser: Any, kb_root: Path, tiny_chatglm: Any, tmp_path: Path) -> None:
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
        # Bug: the bar sat at 0/3 for minutes and then jumped; now the tokens generated so far
        # move the status line while the first batch is still running.
        counts = []
        deadline = time.monotonic() + 30
        while len(set(counts)) < 3 and time.monotonic() < deadline:
            found = re.search(r" 0/\d+ · 已生成 (\d+) 个词元", page.inner_text("#summary-status"))
            if found:
                counts.append(int(found.group(1)))
            page.wait_for_timeout(300)
        assert len(set(counts)) >= 3 and counts == sorted(counts), counts
        at_stop = llm.forced.steps
        page.click("#summary-stop-btn")
        assert wait_until(lambda: not generating(llm), timeout=10), "the model kept generating after Stop"
        # Stopped long before the batch's 3000 tokens, within the click's round trip (a fixed
        # bound of 1500 steps flaked at 1501 when the status line took longer to show 3 counts).
        assert llm.forced.steps < min(at_stop + 500, 2500), (at_stop, llm.forced.steps)
        page.wait_for_function("() => document.querySelector('#summary-status').innerText.includes('已停止')", timeout=10_000)
        page.close()


def test_screenshot_for_the_readme(browser: Any, kb_root: Path, tmp_path: Path) -> None:
    """The page as a user sees it: streamed answer, sources opened, Chinese text rendered."""
    from langchain_core.language_models.fake import FakeStreamingListLLM

    answer = "刘备与关羽、张飞在桃园结义，三人誓同生死，共图大事。[1][3]"
    summary = (
        "第一回写天下大乱、黄巾起事，刘备、关羽、张飞在桃园结义，起兵破贼；第二回写张飞怒鞭督邮，"
        "何进谋诛宦官不成，反被十常侍所害，董卓趁乱入京。"
    )
    llm = FakeStreamingListLLM(
        responses=[answer] + [summary] * 30, sleep=0.02, custom_get_token_ids=lambda text: list(range(len(text)))
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
        save_screenshot(page, "screenshot-chat.png", tmp_path)
        # the summary tab, with the same scripted text for every piece
        page.get_by_role("tab", name="长文总结 / Summary").click()
        page.wait_for_function(
            "() => document.querySelector('#summary-tab-doc input')?.value === 'sanguo.txt'", timeout=20_000
        )
        page.fill("#summary-chapters textarea", "第1-2回")
        page.click("#summarize-btn")
        page.wait_for_function("() => document.querySelector('#summary-status').innerText.includes('完成')",
                               timeout=60_000)
        save_screenshot(page, "screenshot-summary.png", tmp_path)
        page.close()
    assert 20_000 < shot.stat().st_size < 500_000
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "screenshot.png")


# fixtures shared with the gradio_client tests
from tests.test_app import kb_root, qa_llm, sanguo_text, slow_llm  # noqa: E402,F401
