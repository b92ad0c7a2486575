"""长文总结 tab: layout, wiring and handlers that summarize a KB document or an uploaded file,
with the map stage's progress."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.errors import UserError, one_line
from app.services import Services, doc_label
from app.web.errors import user_errors, warn
from app.web.widgets import kb_picker
from chains.events import Progress, Summary, Token
from llm.cancellation import cancel_scope

FROM_KB = "知识库中的文档 / document in a knowledge base"
FROM_UPLOAD = "上传文件 / uploaded file"
STAGES = {"map": "分段概括 / map", "collapse": "合并概要 / collapse"}
BAR_CELLS = 20
# A chapter range is a few characters ("第1-10回"); the box refuses more before any parsing.
CHAPTERS_MAX_CHARS = 64


def progress_line(event: Progress) -> str:
    """``分段概括 / map ▰▰▰▱▱▱ 3/12`` for the status line."""
    stage = STAGES.get(event.stage, event.stage)
    filled = round(BAR_CELLS * event.done / event.total) if event.total else 0
    bar = "▰" * filled + "▱" * (BAR_CELLS - filled)
    return f"{stage} {bar} {event.done}/{event.total}"


class SummaryHandlers:
    """The summary tab's event handlers, bound to the shared ``Services``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._stops: dict[str, threading.Event] = {}  # browser session -> its running summary's Stop
        self._lock = threading.Lock()

    @user_errors
    def summarize(
        self,
        origin: str,
        kb_name: str | None,
        doc_id: str | None,
        upload: str | None,
        chapters: str | None,
        request: gr.Request = None,  # type: ignore[assignment] - injected by Gradio
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio's injection idiom
    ) -> Iterator[tuple[Any, Any]]:
        """Yield (status line, summary so far): progress while mapping, then streamed text."""
        if chapters and len(chapters) > CHAPTERS_MAX_CHARS:  # refused before any parsing
            raise UserError(
                f"章节范围太长（最多 {CHAPTERS_MAX_CHARS} 个字符），例如 第1-10回",
                f"the chapter range is too long (at most {CHAPTERS_MAX_CHARS} characters), e.g. 1-10",
            )
        chapters = (chapters or "").strip() or None
        if origin == FROM_UPLOAD:
            if not upload:
                raise UserError("请先上传一个文本文件", "upload a text file first")
            stream = self.services.summarize_file(self.services.check_upload(upload), chapters=chapters)
        else:
            kb_name = self.services.check_kb_name(kb_name)
            if not doc_id:
                raise UserError("请先选择一个文档", "choose a document first")
            stream = self.services.summarize_document(kb_name, doc_id, chapters=chapters)
        yield "准备中 / preparing…", ""
        stop = self._new_stop(request)
        summary = ""
        try:
            while True:
                # Gradio closes this generator only when it yields; inside a map batch the
                # model is reached through the scope instead (see ``stop``).
                with cancel_scope(stop):
                    event = next(stream, None)
                if stop.is_set():
                    yield "已停止 / stopped", summary
                    return
                if event is None:
                    break
                if isinstance(event, Progress):
                    progress((event.done, event.total), desc=STAGES.get(event.stage, event.stage))
                    yield progress_line(event), gr.skip()
                elif isinstance(event, Token):
                    summary += event.text
                    yield "生成总结 / writing the summary…", summary
                elif isinstance(event, Summary):
                    summary = event.text
        finally:
            stream.close()
            self._forget_stop(request, stop)
        yield "完成 / done", summary

    def stop(self, request: gr.Request) -> None:
        """The Stop button: end this session's summary within a token, even in a map batch."""
        with self._lock:
            event = self._stops.get(_session(request))
        if event is not None:
            event.set()

    def _new_stop(self, request: gr.Request | None) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._stops[_session(request)] = event
        return event

    def _forget_stop(self, request: gr.Request | None, event: threading.Event) -> None:
        with self._lock:
            if self._stops.get(_session(request)) is event:
                del self._stops[_session(request)]

    def documents(self, kb_name: str | None) -> Any:
        """The document picker's choices for ``kb_name`` (empty when none is chosen)."""
        return document_dropdown(self.services, kb_name)


def _session(request: gr.Request | None) -> str:
    """The browser session a request belongs to (one key for direct calls without a request)."""
    return str(getattr(request, "session_hash", None) or "")


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
                    label=f"上传文本 / upload ({', '.join(ui.allowed_types)}, ≤ {ui.max_upload_mb} MB)",
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
        )
        self.kb.change(handlers.documents, inputs=[self.kb], outputs=[self.doc], api_name=False)
        self.start_btn.click(
            handlers.summarize,
            inputs=[self.origin, self.kb, self.doc, self.file, self.chapters],
            outputs=[self.status, self.out],
            api_name="summarize",
            show_progress_on=[self.out],  # keep the status line readable above the bar
        )
        # No ``cancels=[...]`` here: a Gradio cancel lands only when the handler yields (never
        # inside a map batch) and would race its own "stopped" line; ``stop`` reaches the model
        # at once (llm.cancel_scope) and the handler ends by itself.
        self.stop_btn.click(handlers.stop, api_name="stop_summary", queue=False)
