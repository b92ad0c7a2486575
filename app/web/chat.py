"""知识库问答 tab: its layout (``ChatTab.layout``), wiring (``ChatTab.wire``) and handlers, which
stream an answer into the chat, then its cited passages.

With the 全书问答 switch on, a question goes to ``app.web.book_scope.ask_book`` (whole-book
map-reduce) instead: the status line shows its progress (chapters chosen, map i/n), the answer
and its sources are drawn like chunk QA's, and Stop also sets the chain's cancel event so a
batched map step ends within a token.

A session's conversation is a list of turn dicts kept in ``gr.State`` (per browser session);
the Chatbot is only a view rendered from it, so what the chain sees as history (plain
question/answer pairs) and what the page shows (answers plus source boxes) never mix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from app.services import Services
from app.web import render
from app.web.book_scope import ask_book
from app.web.errors import QUIET, user_errors, warn
from app.web.session_stops import SessionStops
from app.web.widgets import banner_markdown, kb_picker
from app.web.summary import CHAPTERS_MAX_CHARS, check_chapter_range, progress_line
from chains.book_qa_chain import SELECT_STAGE
from chains.events import Answer, Progress, Reasoning, Source, Sources, Token
from llm.reasoning import with_thinking

Turn = dict[str, Any]
STOPPED_MARK = "（已停止 / stopped）"
SEND = "发送 / send"
# While an answer streams the send button says so; Enter is ignored by Gradio meanwhile and
# whatever is typed stays in the box (nothing is dropped) until the answer ends.
BUSY = "回答中… / answering"
BUSY_HINT = "正在回答。可以先输入下一个问题，回答结束后按回车或点“发送”；点“停止”可中断。"
ASK_OUTPUTS = 7  # question, chat, turns, banner, clear, send, status
FAILED_MARK = "（出错 / failed）"
THINKING = "…"
REASONING_TITLE = "思考过程 / thinking"
BOOK = "全书问答 / whole book"
BOOK_INFO = "按章节通读后回答（较慢），例如：诸葛亮一生做了哪些事？"
THINK = "深度思考 / thinking"
THINK_INFO = "推理模型（GLM-Z1 等）先思考再回答；关掉更快。其他模型不受影响。"


def render_chat(turns: list[Turn]) -> list[dict[str, Any]]:
    """Chatbot messages for ``turns``: question, a reasoning model's thinking (a collapsible box), answer,
    then a collapsible sources box."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn["question"]})
        if turn.get("reasoning"):
            thinking = turn["status"] == "streaming" and not turn["answer"]
            metadata = {"title": REASONING_TITLE, "status": "pending" if thinking else "done"}
            messages.append({"role": "assistant", "content": turn["reasoning"], "metadata": metadata})
        answer = turn["answer"] or (THINKING if turn["status"] == "streaming" else "")
        if turn["status"] == "stopped":
            answer = f"{answer} {STOPPED_MARK}".strip()
        elif turn["status"] == "failed":
            answer = f"{answer} {FAILED_MARK}".strip()
        if answer:
            messages.append({"role": "assistant", "content": answer})
        if turn.get("sources_message") is not None:
            messages.append(turn["sources_message"])
    return messages


def settled(turn: Turn) -> Turn:
    """A turn whose stream has ended: one still marked streaming was stopped."""
    return {**turn, "status": "stopped"} if turn["status"] == "streaming" else turn


def history_pairs(turns: list[Turn]) -> list[tuple[str, str]]:
    """(question, answer) pairs of earlier turns the model answered, for multi-turn QA."""
    return [
        (t["question"], t["answer"])
        for t in turns
        if t.get("answered") and t["answer"] and t["status"] in ("done", "stopped")
    ]


class ChatHandlers:
    """The chat tab's event handlers, bound to the shared ``Services``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._stops = SessionStops()  # browser session -> its whole-book answer's Stop

    @user_errors(status=6, outputs=ASK_OUTPUTS)
    def ask(
        self,
        question: str,
        turns: list[Turn] | None,
        kb_name: str | None,
        mode: str,
        top_k: float,
        book: bool = False,
        chapters: str | None = None,
        think: bool = True,
        request: gr.Request = None,  # type: ignore[assignment] - injected by Gradio
    ) -> Iterator[tuple[Any, ...]]:
        """Stream one answer (whole-book when ``book``, optionally within ``chapters``; a reasoning model
        thinks first unless ``think`` is off). Yields (question box, chat, turns, banner, clear button,
        send button, status line) per piece.

        Clear and send are disabled while the answer streams (``settle`` enables them again): a
        conversation cleared mid-stream would be brought back by the stream's next update, and
        a second question would be dropped; the status line says to type it and send it after.
        """
        turns = [settled(t) for t in turns or []]
        question = (question or "").strip()
        if not question:
            warn("请输入问题", "type a question first")
            yield (*skips(ASK_OUTPUTS - 1), "请先输入问题 / type a question first")
            return
        kb_name = self.services.check_kb_name(kb_name)
        chapters = check_chapter_range(chapters) if book else None
        turn: Turn = {"question": question, "answer": "", "status": "streaming", "answered": False}
        turns.append(turn)
        busy = gr.Button(value=BUSY, interactive=False)
        yield "", render_chat(turns), turns, gr.skip(), gr.Button(interactive=False), busy, BUSY_HINT
        try:
            thinking = None if think else False  # on: the model's own setting (llm.enable_thinking)
            if book:
                yield from self._stream_book(turn, turns, kb_name, chapters, request, thinking)
            else:
                yield from self._stream_answer(turn, turns, kb_name, mode, int(top_k), thinking)
        except Exception:
            turn["status"] = "failed"  # the same dict the session state holds
            raise
        status = "已停止 / stopped" if turn["status"] == "stopped" else ""
        if turn["status"] == "streaming":
            turn["status"] = "done"
        banner = banner_markdown(self.services)
        yield gr.skip(), render_chat(turns), turns, gr.Markdown(value=banner, visible=bool(banner)), *skips(2), status

    def _stream_answer(
        self, turn: Turn, turns: list[Turn], kb_name: str, mode: str, top_k: int, thinking: bool | None = None
    ) -> Iterator[tuple[Any, ...]]:
        mode, note = self.services.usable_mode(kb_name, mode)
        if note:
            warn(note.zh, note.en)
            yield (*skips(ASK_OUTPUTS - 1), f"{note.zh} / {note.en}")
        stream = self.services.ask(
            kb_name, turn["question"], history=history_pairs(turns[:-1]), mode=mode, top_k=top_k,
            enable_thinking=thinking,
        )
        try:
            for event in stream:
                if isinstance(event, Token):
                    turn["answer"] += event.text
                    turn["answered"] = True
                elif isinstance(event, Reasoning):
                    turn["reasoning"] = turn.get("reasoning", "") + event.text
                elif isinstance(event, Sources):
                    headings = self.headings(kb_name, event.sources)
                    show_sources(turn, event.sources, headings)
                elif isinstance(event, Answer):
                    finish_answer(turn, event, self.headings(kb_name, event.sources))
                else:  # e.g. Progress while a follow-up is condensed: nothing new to show
                    yield skips(ASK_OUTPUTS)
                    continue
                yield gr.skip(), render_chat(turns), turns, *skips(ASK_OUTPUTS - 3)
        finally:
            stream.close()  # Stop pressed (generator closed): this ends the model's generation

    def _stream_book(
        self, turn: Turn, turns: list[Turn], kb_name: str, chapters: str | None, request: gr.Request | None,
        thinking: bool | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """The whole-book answer: progress in the status line, then tokens, sources, answer.

        Stop sets ``stop`` (``self.stop``), which ends even a batched map step within a token;
        the chain then returns without an ``Answer`` and the turn is marked stopped.
        """
        stop = self._stops.new(request)
        llm = with_thinking(self.services.require_llm(), thinking)
        stream = ask_book(self.services, kb_name, turn["question"], chapters=chapters, cancel=stop, llm=llm)
        try:
            for event in stream:
                if isinstance(event, Progress):
                    yield (*skips(ASK_OUTPUTS - 1), book_progress_line(event))
                    continue
                if isinstance(event, Token):
                    turn["answer"] += event.text
                    turn["answered"] = True
                elif isinstance(event, Reasoning):
                    turn["reasoning"] = turn.get("reasoning", "") + event.text
                elif isinstance(event, Sources):
                    show_sources(turn, event.sources, self.headings(kb_name, event.sources))
                elif isinstance(event, Answer):
                    finish_answer(turn, event, self.headings(kb_name, event.sources))
                yield gr.skip(), render_chat(turns), turns, *skips(ASK_OUTPUTS - 4), "生成回答 / writing the answer…"
        finally:
            stream.close()
            self._stops.forget(request, stop)
        if stop.is_set() and turn["status"] == "streaming":
            turn["status"] = "stopped"

    def stop(self, request: gr.Request = None) -> None:  # type: ignore[assignment] - injected by Gradio
        """The Stop button: end this session's whole-book answer within a token, even mid-batch."""
        self._stops.set(request)

    def headings(self, kb_name: str, sources: Sequence[Source]) -> render.Headings:
        """Each cited chapter's own heading (第二章, 第三节, 第一回), so labels keep its unit."""
        found: dict[tuple[str | None, int | None], str] = {}
        for doc_id in {s.doc_id for s in sources if s.doc_id and s.chapter is not None}:
            try:
                chapters = self.services.kb(kb_name).get_chapters(doc_id)
            except Exception:  # noqa: BLE001 - a label is not worth failing the answer for
                continue
            found.update({(doc_id, c.number): c.heading for c in chapters if c.number is not None and c.heading})
        return found

    @staticmethod
    def settle(turns: list[Turn] | None) -> tuple[Any, ...]:
        """After an answer ends, fails or is stopped: mark a cut-off answer, enable Clear and
        send (returns chat, turns, clear, send, status).

        Chained with ``.then`` on the ask event, which Gradio runs only once a cancelled
        stream is really closed, so no late update of the stream can overwrite this one.
        """
        stopped = any(t["status"] == "streaming" for t in turns or [])
        turns = [settled(t) for t in turns or []]
        status = "已停止 / stopped" if stopped else gr.skip()
        return render_chat(turns), turns, gr.Button(interactive=True), gr.Button(value=SEND, interactive=True), status

    @staticmethod
    def clear() -> tuple[Any, ...]:
        """Forget this session's conversation."""
        return [], []


def skips(n: int) -> tuple[Any, ...]:
    """``n`` "leave this output as it is" updates."""
    return tuple(gr.skip() for _ in range(n))


def book_progress_line(event: Progress) -> str:
    """The status line of a whole-book answer: chapters chosen, then map/collapse i/n."""
    if event.stage == SELECT_STAGE:
        return f"已选出 {event.total} 个章节 / {event.total} chapters selected"
    return progress_line(event)


def show_sources(turn: Turn, sources: Sequence[Source], headings: render.Headings | None = None) -> None:
    """The collapsible box of cited passages under the answer."""
    turn["sources_message"] = render.sources_message(sources, headings)


def finish_answer(turn: Turn, answer: Answer, headings: render.Headings | None = None) -> None:
    """Settle the turn from the chain's final event; without an LLM the passages are the answer."""
    if not answer.llm_used:
        turn["answer"] = render.passages_answer(answer.sources, headings)
        turn.pop("sources_message", None)
        turn["answered"] = False
        return
    turn["answer"] = answer.text
    turn["answered"] = not answer.refused
    show_sources(turn, answer.sources, headings)


MODES = [("混合 hybrid", "hybrid"), ("向量 dense", "dense"), ("关键词 bm25", "bm25")]


class ChatTab:
    """The 知识库问答 tab: ``layout`` inside a ``gr.Tab``, then ``wire`` once the page exists."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.handlers = ChatHandlers(services)

    def layout(self) -> None:
        """KB picker, retrieval options and Clear on the left; the conversation on the right."""
        settings = self.services.settings
        self.turns = gr.State([])
        with gr.Row():
            with gr.Column(scale=1, min_width=220):
                self.kb = kb_picker(self.services, elem_id="chat-kb")
                self.mode = gr.Radio(MODES, value=settings.retrieval.mode, label="检索方式 / retrieval")
                self.top_k = gr.Slider(1, 20, value=settings.retrieval.top_k, step=1, label="段落数 / top_k")
                self.book = gr.Checkbox(value=False, label=BOOK, info=BOOK_INFO, elem_id="chat-book")
                self.think = gr.Checkbox(value=settings.llm.enable_thinking is not False, label=THINK, info=THINK_INFO,
                                         elem_id="chat-think")
                self.chapters = gr.Textbox(
                    label="章节范围（可选）/ chapters (optional)",
                    placeholder="例如 第40-60回 / e.g. 40-60",
                    max_length=CHAPTERS_MAX_CHARS,
                    visible=False,
                    elem_id="chat-chapters",
                )
                self.clear_btn = gr.Button("清空对话 / clear", elem_id="clear-btn")
            with gr.Column(scale=4):
                # No label: Gradio's floating label overlapped the messages when scrolled,
                # and the tab's name already says what this is.
                self.chatbot = gr.Chatbot(
                    label="对话 / conversation",
                    show_label=False,
                    height=520,
                    elem_id="chatbot",
                    buttons=["copy"],
                    feedback_options=None,
                    placeholder="选择知识库，然后提问。/ Pick a knowledge base and ask.",
                )
                with gr.Row():
                    self.question = gr.Textbox(
                        show_label=False,
                        placeholder="输入问题，回车发送 / ask a question, Enter to send",
                        scale=6,
                        elem_id="question",
                    )
                    self.send_btn = gr.Button(SEND, variant="primary", scale=1, elem_id="send-btn")
                    self.stop_btn = gr.Button("停止 / stop", variant="stop", scale=1, elem_id="stop-btn")
                self.status = gr.Markdown(elem_id="chat-status")

    def wire(self, *, banner: gr.Markdown) -> None:
        """Send/Enter streams an answer; Stop cancels it; ``settle`` runs after either."""
        handlers = self.handlers
        ask = gr.on(
            [self.question.submit, self.send_btn.click],
            handlers.ask,
            inputs=[self.question, self.turns, self.kb, self.mode, self.top_k, self.book, self.chapters, self.think],
            outputs=[self.question, self.chatbot, self.turns, banner, self.clear_btn, self.send_btn, self.status],
            api_name="ask",
            **QUIET,
        )
        # Runs after the answer ends, and after a Stop once the stream is really closed.
        ask.then(
            handlers.settle,
            inputs=[self.turns],
            outputs=[self.chatbot, self.turns, self.clear_btn, self.send_btn, self.status],
            api_name=False,
            **QUIET,
        )
        self.stop_btn.click(None, cancels=[ask], api_name=False)
        # A Gradio cancel lands only when the handler yields, never inside a whole-book map
        # batch; this reaches the model at once (llm.cancel_scope) and the handler ends itself.
        self.stop_btn.click(handlers.stop, api_name="stop_answer", queue=False)
        self.book.change(
            lambda on: gr.update(visible=bool(on)), inputs=[self.book], outputs=[self.chapters], api_name=False, **QUIET
        )
        self.clear_btn.click(handlers.clear, outputs=[self.chatbot, self.turns], api_name="clear", **QUIET)
