"""知识库问答 tab handlers: stream an answer into the chat, then its cited passages.

A session's conversation is a list of turn dicts kept in ``gr.State`` (per browser session);
the Chatbot is only a view rendered from it, so what the chain sees as history (plain
question/answer pairs) and what the page shows (answers plus source boxes) never mix.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from app import render
from app.errors import user_errors, warn
from chains.events import Answer, Source, Sources, Token
from app.state import AppState

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
    """The chat tab's event handlers, bound to the shared ``AppState``."""

    def __init__(self, state: AppState) -> None:
        self.state = state

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
        kb_name = self.state.check_kb_name(kb_name)
        turn: Turn = {"question": question, "answer": "", "status": "streaming", "answered": False}
        turns.append(turn)
        yield "", render_chat(turns), turns, gr.skip(), gr.Button(interactive=False)
        try:
            yield from self._stream_answer(turn, turns, kb_name, mode, int(top_k))
        except Exception:
            turn["status"] = "failed"  # the same dict the session state holds
            raise
        turn["status"] = "done"
        banner = self.state.banner_markdown()
        yield gr.skip(), render_chat(turns), turns, gr.Markdown(value=banner, visible=bool(banner)), gr.skip()

    def _stream_answer(
        self, turn: Turn, turns: list[Turn], kb_name: str, mode: str, top_k: int
    ) -> Iterator[tuple[Any, ...]]:
        mode, warning = self.state.usable_mode(kb_name, mode)
        if warning:
            warn(*warning)
        stream = self.state.ask(
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
