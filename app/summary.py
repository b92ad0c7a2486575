"""长文总结 tab handlers: summarize a KB document or an uploaded file, map stage with progress."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr

from app.errors import UserError, one_line, user_errors, warn
from app.state import AppState, doc_label
from chains.events import Progress, Summary, Token
from llm.cancellation import cancel_scope

FROM_KB = "知识库中的文档 / document in a knowledge base"
FROM_UPLOAD = "上传文件 / uploaded file"
STAGES = {"map": "分段概括 / map", "collapse": "合并概要 / collapse"}
BAR_CELLS = 20


def progress_line(event: Progress) -> str:
    """``分段概括 / map ▰▰▰▱▱▱ 3/12`` for the status line."""
    stage = STAGES.get(event.stage, event.stage)
    filled = round(BAR_CELLS * event.done / event.total) if event.total else 0
    bar = "▰" * filled + "▱" * (BAR_CELLS - filled)
    return f"{stage} {bar} {event.done}/{event.total}"


class SummaryHandlers:
    """The summary tab's event handlers, bound to the shared ``AppState``."""

    def __init__(self, state: AppState) -> None:
        self.state = state
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
        chapters = (chapters or "").strip() or None
        if origin == FROM_UPLOAD:
            if not upload:
                raise UserError("请先上传一个文本文件", "upload a text file first")
            stream = self.state.summarize_file(self.state.check_upload(upload), chapters=chapters)
        else:
            kb_name = self.state.check_kb_name(kb_name)
            if not doc_id:
                raise UserError("请先选择一个文档", "choose a document first")
            stream = self.state.summarize_document(kb_name, doc_id, chapters=chapters)
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
        return document_dropdown(self.state, kb_name)


def _session(request: gr.Request | None) -> str:
    """The browser session a request belongs to (one key for direct calls without a request)."""
    return str(getattr(request, "session_hash", None) or "")


def document_dropdown(state: AppState, kb_name: str | None) -> Any:
    """A Dropdown update listing ``kb_name``'s documents as (file name, doc_id) choices."""
    if not kb_name:
        return gr.Dropdown(choices=[], value=None)
    try:
        docs = state.list_documents(kb_name)
    except Exception as e:  # a broken KB must not break the page; say why
        warn("无法读取知识库", f"cannot read knowledge base: {one_line(e)}")
        return gr.Dropdown(choices=[], value=None)
    choices = [(doc_label(d), d.doc_id) for d in docs]
    return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)
