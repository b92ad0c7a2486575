"""长文总结 tab: layout, wiring and handlers that summarize a KB document or an uploaded file,
with the map stage's progress."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import gradio as gr

from app.errors import UserError, one_line
from app.services import Services, doc_label
from app.uploads import check_content
from app.web.errors import QUIET, named_load_errors, user_errors, warn
from app.web.session_stops import SessionStops
from app.web.widgets import kb_picker, upload_label
from chains.events import Progress, Reasoning, Summary, Token
from chains.summarize import ChapterRangeError, parse_chapter_range
from llm.cancellation import cancel_scope

FROM_KB = "知识库中的文档 / document in a knowledge base"
FROM_UPLOAD = "上传文件 / uploaded file"
STAGES = {"map": "分段概括 / map", "collapse": "合并概要 / collapse"}
BAR_CELLS = 20
# A chapter range is a few characters ("第1-10回"); the box refuses more before any parsing.
CHAPTERS_MAX_CHARS = 64
# How often the status line is redrawn while a batched map step runs (it emits no event until
# the whole batch is done: minutes on a CPU).
TICK_SECONDS = 1.0


class StepCountingStop(threading.Event):
    """The summary's Stop event, which also counts the model's decoding steps.

    Local generation inside ``llm.cancel_scope(event)`` asks ``event.is_set()`` once per
    generated token (``llm.streaming.CancelCriteria``), so the count is the tokens generated so
    far by the running batch: the status line moves during a map step that would otherwise
    show nothing for minutes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def is_set(self) -> bool:
        self.steps += 1
        return super().is_set()

    @property
    def stopped(self) -> bool:
        """Whether Stop was pressed (without counting a step)."""
        return super().is_set()


def progress_line(event: Progress, *, tokens: int = 0, seconds: float = 0.0) -> str:
    """``分段概括 / map ▰▰▰▱▱▱ 3/12 · 已生成 120 个词元 · 8 秒`` for the status line."""
    stage = STAGES.get(event.stage, event.stage)
    filled = round(BAR_CELLS * event.done / event.total) if event.total else 0
    bar = "▰" * filled + "▱" * (BAR_CELLS - filled)
    line = f"{stage} {bar} {event.done}/{event.total}"
    if tokens:
        line += f" · 已生成 {tokens} 个词元 / {tokens} tokens"
    if seconds >= 1:
        line += f" · {seconds:.0f} 秒"
    return line


class SummaryHandlers:
    """The summary tab's event handlers, bound to the shared ``Services``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._stops = SessionStops()  # browser session -> its running summary's Stop

    @user_errors(status=0, outputs=2)
    def summarize(
        self,
        origin: str,
        kb_name: str | None,
        doc_id: str | None,
        upload: str | None,
        chapters: str | None,
        request: gr.Request = None,  # type: ignore[assignment] - injected by Gradio
    ) -> Iterator[tuple[Any, Any]]:
        """Yield (status line, summary so far): progress while mapping (redrawn every second
        with the tokens generated so far), then streamed text. The status line is the only
        progress display; it is reset at the start of every run."""
        chapters = check_chapter_range(chapters)
        if origin == FROM_UPLOAD:
            if not upload:
                raise UserError("请先上传一个文件", "upload a file first")
            path = check_content(self.services.check_upload(upload))
            with named_load_errors([path]), missing_chapters(chapters):
                stream = self.services.summarize_file(path, chapters=chapters)
        else:
            kb_name = self.services.check_kb_name(kb_name)
            if not doc_id:
                raise UserError("请先选择一个文档", "choose a document first")
            with missing_chapters(chapters):
                stream = self.services.summarize_document(kb_name, doc_id, chapters=chapters)
        yield "准备中 / preparing…", ""
        stop = self._stops.new(request, StepCountingStop)
        summary = ""
        last: Progress | None = None
        started = time.monotonic()
        worker = ThreadPoolExecutor(1, thread_name_prefix="glmkb-summary")
        pending: Future[Any] | None = None
        try:
            while True:
                # The next event is computed on a worker so the status line can tick during a
                # map batch; Stop reaches the model through the scope (see ``stop``).
                pending = worker.submit(_next_in_scope, stream, stop)
                counted = stop.steps
                while True:
                    try:
                        event = pending.result(timeout=TICK_SECONDS)
                        break
                    except FutureTimeout:
                        if stop.stopped or last is None:
                            continue
                        tokens = stop.steps - counted
                        yield progress_line(last, tokens=tokens, seconds=time.monotonic() - started), gr.skip()
                pending = None
                if stop.stopped:
                    yield "已停止 / stopped", summary
                    return
                if event is None:
                    break
                if isinstance(event, Progress):
                    last = event
                    yield progress_line(event, seconds=time.monotonic() - started), gr.skip()
                elif isinstance(event, Reasoning):
                    yield "思考中 / thinking…", summary
                elif isinstance(event, Token):
                    summary += event.text
                    yield "生成总结 / writing the summary…", summary
                elif isinstance(event, Summary):
                    summary = event.text
        finally:
            if pending is not None:  # closed (Stop, page gone) mid-step: end the step, then the stream
                stop.set()
                pending.exception()
            worker.shutdown(wait=True)
            stream.close()
            self._stops.forget(request, stop)
        yield "完成 / done", summary

    def stop(self, request: gr.Request) -> None:
        """The Stop button: end this session's summary within a token, even in a map batch."""
        self._stops.set(request)

    def documents(self, kb_name: str | None) -> Any:
        """The document picker's choices for ``kb_name`` (empty when none is chosen)."""
        return document_dropdown(self.services, kb_name)


def check_chapter_range(chapters: str | None) -> str | None:
    """The chapter range typed in a box (None when empty), refused in Chinese when it is too long,
    unreadable or empty (第50-10回, 第0回): the chain's own reasons are English only."""
    if chapters and len(chapters) > CHAPTERS_MAX_CHARS:  # refused before any parsing
        raise UserError(
            f"章节范围太长（最多 {CHAPTERS_MAX_CHARS} 个字符），例如 第1-10回",
            f"the chapter range is too long (at most {CHAPTERS_MAX_CHARS} characters), e.g. 1-10",
        )
    chapters = (chapters or "").strip() or None
    if chapters is None:
        return None
    try:
        parse_chapter_range(chapters)
    except ChapterRangeError as e:
        zh = f"章节范围无效：{chapters}。请写成 第1-10回、1-10 或 第五回（从 1 起，结束不小于开始）"
        raise UserError(zh, one_line(e)) from e
    return chapters


@contextlib.contextmanager
def missing_chapters(chapters: str | None) -> Iterator[None]:
    """A readable range that meets no chapter of the document (第999回 of 9, or a text without
    chapter headings) said "操作失败 / no chapters 999-999 ...": say it in Chinese."""
    try:
        yield
    except ChapterRangeError as e:
        raise UserError(
            f"本文档中找不到 {chapters}：超出了文档的章节，或文档没有“第N回/第N章”这样的章节标题", one_line(e)
        ) from e


def _next_in_scope(stream: Iterator[Any], stop: threading.Event) -> Any:
    """The stream's next event (None at its end), computed with Stop in scope."""
    with cancel_scope(stop):
        return next(stream, None)


def document_dropdown(services: Services, kb_name: str | None) -> Any:
    """A Dropdown update listing ``kb_name``'s documents as (file name, doc_id) choices."""
    if not kb_name:
        return gr.Dropdown(choices=[], value=None)
    try:
        docs = services.list_documents(kb_name)
    except Exception as e:  # a broken KB must not break the page; say why
        warn("无法读取知识库", f"cannot read knowledge base: {one_line(e)}")
        return gr.Dropdown(choices=[], value=None)
    choices = [(doc_label(d), d.doc_id) for d in docs]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)


class SummaryTab:
    """The 长文总结 tab: ``layout`` inside a ``gr.Tab``, then ``wire``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.handlers = SummaryHandlers(services)

    def layout(self) -> None:
        """Source (KB document or upload) and chapter range on the left; status and summary right."""
        ui = self.services.settings.ui
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                self.origin = gr.Radio([FROM_KB, FROM_UPLOAD], value=FROM_KB, label="文本来源 / text from")
                self.kb = kb_picker(self.services, elem_id="summary-kb")
                self.doc = gr.Dropdown(
                    label="文档 / document", choices=[], allow_custom_value=True, elem_id="summary-tab-doc"
                )
                self.file = gr.File(
                    label="上传文件 / upload "
                    + upload_label(self.services.upload_types(), ui.max_upload_mb, each=False),
                    visible=False,
                )
                self.chapters = gr.Textbox(
                    label="章节范围（可选）/ chapters (optional)",
                    placeholder="例如 第1-10回 / e.g. 1-10",
                    max_length=CHAPTERS_MAX_CHARS,
                    elem_id="summary-chapters",
                )
                with gr.Row():
                    self.start_btn = gr.Button("开始总结 / summarize", variant="primary", elem_id="summarize-btn")
                    self.stop_btn = gr.Button("停止 / stop", variant="stop", elem_id="summary-stop-btn")
            with gr.Column(scale=3):
                self.status = gr.Markdown(elem_id="summary-status")
                self.out = gr.Markdown(
                    label="总结 / summary", elem_id="summary-output", min_height=300, container=True
                )

    def wire(self) -> None:
        """Origin toggles the inputs; the KB picker lists its documents; start and stop."""
        handlers = self.handlers
        self.origin.change(
            lambda o: (gr.update(visible=o == FROM_KB),) * 2 + (gr.update(visible=o == FROM_UPLOAD),),
            inputs=[self.origin],
            outputs=[self.kb, self.doc, self.file],
            api_name=False,
            **QUIET,
        )
        self.kb.change(handlers.documents, inputs=[self.kb], outputs=[self.doc], api_name=False, **QUIET)
        # One progress display: the status line (Gradio's own bar would be a second one).
        self.start_btn.click(
            handlers.summarize,
            inputs=[self.origin, self.kb, self.doc, self.file, self.chapters],
            outputs=[self.status, self.out],
            api_name="summarize",
            **QUIET,
        )
        # No ``cancels=[...]`` here: a Gradio cancel lands only when the handler yields (never
        # inside a map batch) and would race its own "stopped" line; ``stop`` reaches the model
        # at once (llm.cancel_scope) and the handler ends by itself.
        self.stop_btn.click(handlers.stop, api_name="stop_summary", queue=False)
