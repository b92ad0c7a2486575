"""UI handlers and rendering without a server: history, Stop, error toasts, escaping, uploads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from app.web import render
from app.web.chat import ChatHandlers, history_pairs
from app.web.errors import UserError, user_errors
from app.services import Services
from chains.events import Answer, Source, Sources, Token
from configs import Settings

SRC = Source(
    text="玄德曰：“此关羽、张飞，备结义兄弟也。”",
    source="/data/三国/sanguo.txt",
    doc_id="d1",
    chapter=5,
    chapter_title="发矫诏诸镇应曹公 破关兵三英战吕布",
    start=10,
    end=30,
    score=1.4251,
)


class ScriptedState(Services):
    """An Services whose QA stream is scripted, recording what the chat handler passes in."""

    def __init__(self, tmp_path: Path, pieces: list[str]) -> None:
        super().__init__(Settings(kb_root=tmp_path, embedding={"model": "none"}))
        self.pieces = pieces
        self.calls: list[dict[str, Any]] = []
        self.closed = 0

    def usable_mode(self, kb_name: str, mode: str) -> tuple[str, None]:
        return mode, None

    def ask(self, kb_name: str, question: str, **kwargs: Any) -> Iterator[Any]:
        self.calls.append({"kb": kb_name, "question": question, **kwargs})
        return self._events(question)

    def _events(self, question: str) -> Iterator[Any]:
        try:
            yield Sources((SRC,), question)
            for piece in self.pieces:
                yield Token(piece)
            yield Answer("".join(self.pieces), (SRC,), question)
        finally:
            self.closed += 1


def run(gen: Iterator[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return list(gen)


def test_follow_up_questions_pass_the_earlier_turns_as_history(tmp_path: Path) -> None:
    state = ScriptedState(tmp_path, ["刘备、", "关羽、", "张飞。"])
    chat = ChatHandlers(state)
    first = run(chat.ask("谁结义？", [], "sanguo", "bm25", 3))
    turns = first[-1][2]
    second = run(chat.ask("后来呢？", turns, "sanguo", "hybrid", 5))
    assert state.calls[0]["history"] == []
    assert state.calls[1]["history"] == [("谁结义？", "刘备、关羽、张飞。")]
    assert (state.calls[1]["mode"], state.calls[1]["top_k"]) == ("hybrid", 5)
    messages = second[-1][1]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["谁结义？", "后来呢？"]


def test_each_token_is_one_update_and_the_question_box_is_emptied(tmp_path: Path) -> None:
    state = ScriptedState(tmp_path, ["甲", "乙", "丙"])
    updates = run(ChatHandlers(state).ask("  问题  ", [], "sanguo", "bm25", 3))
    assert updates[0][0] == ""  # the question box is cleared at once
    shown = [u[1][1]["content"] for u in updates]  # the answer bubble as each update drew it
    assert shown == ["…", "…", "甲", "甲乙", "甲乙丙", "甲乙丙", "甲乙丙"]
    assert "引用来源" in updates[1][1][2]["metadata"]["title"]  # sources box from the first event
    assert state.calls[0]["question"] == "问题"


def test_closing_the_handler_closes_the_chain_stream(tmp_path: Path) -> None:
    """Regression: Stop (Gradio closes the handler's generator) must close the model stream too."""
    state = ScriptedState(tmp_path, ["一"] * 100)
    gen = ChatHandlers(state).ask("问题", [], "sanguo", "bm25", 3)
    for _ in range(5):
        next(gen)
    gen.close()
    assert state.closed == 1


def test_settling_marks_a_stopped_answer_and_keeps_it_in_history() -> None:
    turns = [{"question": "q", "answer": "半个回", "status": "streaming", "answered": True}]
    messages, new_turns, clear_btn = ChatHandlers.settle(turns)
    assert new_turns[0]["status"] == "stopped" and turns[0]["status"] == "streaming"
    assert messages[1]["content"].endswith("（已停止 / stopped）")
    assert history_pairs(new_turns) == [("q", "半个回")]
    assert clear_btn.interactive is True


def test_a_stream_cancelled_through_the_api_counts_as_stopped_next_time(tmp_path: Path) -> None:
    """API clients get no ``settle`` call after a cancel; the next question settles the old turn."""
    state = ScriptedState(tmp_path, ["一"] * 10)
    gen = ChatHandlers(state).ask("第一问", [], "sanguo", "bm25", 3)
    for _ in range(4):
        turns = next(gen)[2]
    gen.close()
    run(ChatHandlers(state).ask("第二问", turns, "sanguo", "bm25", 3))
    assert state.calls[1]["history"] == [("第一问", "一一")]


def test_a_failed_answer_is_marked_and_left_out_of_history(tmp_path: Path) -> None:
    state = ScriptedState(tmp_path, ["一"])
    state.usable_mode = lambda kb, mode: (_ for _ in ()).throw(ValueError("索引坏了"))  # type: ignore[method-assign]
    gen = ChatHandlers(state).ask("问题", [], "sanguo", "bm25", 3)
    turns = next(gen)[2]
    with pytest.raises(gr.Error, match="索引坏了"):
        next(gen)
    messages, settled_turns, _ = ChatHandlers.settle(turns)
    assert settled_turns[0]["status"] == "failed" and messages[-1]["content"] == "（出错 / failed）"
    assert history_pairs(settled_turns) == []


def test_an_empty_question_is_a_warning_not_an_error(tmp_path: Path) -> None:
    state = ScriptedState(tmp_path, ["x"])
    with pytest.warns(UserWarning, match="请输入问题"):
        updates = run(ChatHandlers(state).ask("   ", [], "sanguo", "bm25", 3))
    assert len(updates) == 1 and not state.calls


def test_handler_errors_become_one_line_bilingual_toasts() -> None:
    @user_errors
    def broken(kind: str) -> Iterator[int]:
        yield 1
        if kind == "value":
            raise ValueError("bad file <x.txt>\n  on two lines")
        if kind == "user":
            raise UserError("中文说明", "English explanation")
        raise KeyError("internal")

    with pytest.raises(gr.Error) as e:
        list(broken("value"))
    assert e.value.message == "操作失败 / bad file &lt;x.txt&gt; on two lines"
    with pytest.raises(gr.Error) as e:
        list(broken("user"))
    assert e.value.message == "中文说明 / English explanation"
    with pytest.raises(gr.Error) as e:
        list(broken("other"))
    assert e.value.message.startswith("内部错误，详情见服务器日志 / KeyError:")
    assert "Traceback" not in e.value.message


def test_source_cards_escape_the_passage_text() -> None:
    evil = Source(text="<script>alert(1)</script> *粗体* # 标题", source="a<b>.txt", chapter=None)
    html = render.source_card(1, evil)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "a&lt;b&gt;.txt" in html
    card = render.source_card(2, SRC)
    assert "[2] sanguo.txt" in card and "第5回 发矫诏诸镇应曹公" in card and "score 1.425" in card


@pytest.mark.parametrize(
    ("chapter", "title", "label"),
    [(5, "发矫诏", "第5回 发矫诏"), (3, "第三回", "第三回"), (None, None, ""), (7, None, "第7回")],
)
def test_chapter_labels(chapter: int | None, title: str | None, label: str) -> None:
    assert render.chapter_label(Source(text="x", chapter=chapter, chapter_title=title)) == label


def test_long_passages_are_cut_to_a_snippet() -> None:
    text = "话说天下大势，\n分久必合。" * 100
    cut = render.snippet(text)
    assert len(cut) == render.SNIPPET_CHARS and cut.endswith("…") and "\n" not in cut


def test_uploads_are_checked_for_type_and_size(tmp_path: Path) -> None:
    state = Services(Settings(kb_root=tmp_path, ui={"max_upload_mb": 1, "allowed_types": [".txt", "md"]}))
    exact = tmp_path / "exact.TXT"
    exact.write_bytes(b"a" * 1024 * 1024)
    assert state.check_upload(exact) == exact
    (tmp_path / "notes.md").write_text("x", encoding="utf-8")
    assert state.check_upload(tmp_path / "notes.md")
    over = tmp_path / "over.txt"
    over.write_bytes(b"a" * (1024 * 1024 + 1))
    with pytest.raises(UserError, match=r"over.txt is 1.0 MB, the limit is 1 MB"):
        state.check_upload(over)
    for name in ("book.pdf", "book", "book.txt.exe"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(UserError, match="file type not allowed"):
            state.check_upload(tmp_path / name)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", ".x", "-x", "a..b", "", "  "])
def test_bad_knowledge_base_names_are_refused(name: str) -> None:
    with pytest.raises(UserError):
        Services.check_kb_name(name)


def test_chinese_knowledge_base_names_are_fine() -> None:
    assert Services.check_kb_name(" 三国演义_v2 ") == "三国演义_v2"
