"""知识库问答 tab: its layout (``ChatTab.layout``), wiring (``ChatTab.wire``) and handlers, which
stream an answer into the chat, then its cited passages.

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
from app.web.errors import user_errors, warn
from app.web.widgets import banner_markdown, kb_picker
from chains.events import Answer, Source, Sources, Token

Turn = dict[str, Any]
STOPPED_MARK = "（已停止 / stopped）"
FAILED_MARK = "（出错 / failed）"
THINKING = "…"


def render_chat(turns: list[Turn]) -> list[dict[str, Any]]:
    """Chatbot messages for ``turns``: question, answer, then a collapsible sources box."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn["question"]})
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

    @user_errors
    def ask(
        self,
        question: str,
        turns: list[Turn] | None,
        kb_name: str | None,
        mode: str,
        top_k: float,
    ) -> Iterator[tuple[Any, ...]]:
        """Stream one answer. Yields (question box, chat, turns, banner, clear button) per piece.

        Clear is disabled while the answer streams (``settle`` enables it again): a conversation
        cleared mid-stream would be brought back by the stream's next update.
        """
        turns = [settled(t) for t in turns or []]
        question = (question or "").strip()
        if not question:
            warn("请输入问题", "type a question first")
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        kb_name = self.services.check_kb_name(kb_name)
        turn: Turn = {"question": question, "answer": "", "status": "streaming", "answered": False}
        turns.append(turn)
        yield "", render_chat(turns), turns, gr.skip(), gr.Button(interactive=False)
        try:
            yield from self._stream_answer(turn, turns, kb_name, mode, int(top_k))
        except Exception:
            turn["status"] = "failed"  # the same dict the session state holds
            raise
        turn["status"] = "done"
        banner = banner_markdown(self.services)
        yield gr.skip(), render_chat(turns), turns, gr.Markdown(value=banner, visible=bool(banner)), gr.skip()

    def _stream_answer(
        self, turn: Turn, turns: list[Turn], kb_name: str, mode: str, top_k: int
    ) -> Iterator[tuple[Any, ...]]:
        mode, note = self.services.usable_mode(kb_name, mode)
        if note:
            warn(note.zh, note.en)
        stream = self.services.ask(
            kb_name, turn["question"], history=history_pairs(turns[:-1]), mode=mode, top_k=top_k
        )
        try:
            for event in stream:
                if isinstance(event, Token):
                    turn["answer"] += event.text
                    turn["answered"] = True
                elif isinstance(event, Sources):
                    show_sources(turn, event.sources)
                elif isinstance(event, Answer):
                    finish_answer(turn, event)
                else:  # e.g. Progress while a follow-up is condensed: nothing new to show
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    continue
                yield gr.skip(), render_chat(turns), turns, gr.skip(), gr.skip()
        finally:
            stream.close()  # Stop pressed (generator closed): this ends the model's generation

    @staticmethod
    def settle(turns: list[Turn] | None) -> tuple[Any, ...]:
        """After an answer ends, fails or is stopped: mark a cut-off answer, enable Clear.

        Chained with ``.then`` on the ask event, which Gradio runs only once a cancelled
        stream is really closed, so no late update of the stream can overwrite this one.
        """
        turns = [settled(t) for t in turns or []]
        return render_chat(turns), turns, gr.Button(interactive=True)

    @staticmethod
    def clear() -> tuple[Any, ...]:
        """Forget this session's conversation."""
        return [], []


def show_sources(turn: Turn, sources: Sequence[Source]) -> None:
    """The collapsible box of cited passages under the answer."""
    turn["sources_message"] = render.sources_message(sources)


def finish_answer(turn: Turn, answer: Answer) -> None:
    """Settle the turn from the chain's final event; without an LLM the passages are the answer."""
    if not answer.llm_used:
        turn["answer"] = render.passages_answer(answer.sources)
        turn.pop("sources_message", None)
        turn["answered"] = False
        return
    turn["answer"] = answer.text
    turn["answered"] = not answer.refused
    show_sources(turn, answer.sources)


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
                self.clear_btn = gr.Button("清空对话 / clear", elem_id="clear-btn")
            with gr.Column(scale=4):
                self.chatbot = gr.Chatbot(
                    label="对话 / conversation",
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
                    self.send_btn = gr.Button("发送 / send", variant="primary", scale=1, elem_id="send-btn")
                    self.stop_btn = gr.Button("停止 / stop", variant="stop", scale=1, elem_id="stop-btn")

    def wire(self, *, banner: gr.Markdown) -> None:
        """Send/Enter streams an answer; Stop cancels it; ``settle`` runs after either."""
        handlers = self.handlers
        ask = gr.on(
            [self.question.submit, self.send_btn.click],
            handlers.ask,
            inputs=[self.question, self.turns, self.kb, self.mode, self.top_k],
            outputs=[self.question, self.chatbot, self.turns, banner, self.clear_btn],
            api_name="ask",
            show_progress="hidden",
        )
        # Runs after the answer ends, and after a Stop once the stream is really closed.
        ask.then(handlers.settle, inputs=[self.turns], outputs=[self.chatbot, self.turns, self.clear_btn],
                 api_name=False)
        self.stop_btn.click(None, cancels=[ask], api_name=False)
        self.clear_btn.click(handlers.clear, outputs=[self.chatbot, self.turns], api_name="clear")
