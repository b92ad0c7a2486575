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
from tests.helpers import wait_until

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
    messages, new_turns, clear_btn, send_btn, status = ChatHandlers.settle(turns)
    assert new_turns[0]["status"] == "stopped" and turns[0]["status"] == "streaming"
    assert send_btn.interactive is True and "已停止" in status
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
    first = next(gen)
    turns = first[2]
    assert first[5].interactive is False and "正在回答" in first[6]  # send disabled, with a hint
    failed = next(gen)  # the reason goes to the status line first; the other outputs keep their values
    assert "索引坏了" in failed[6] and all(isinstance(u, type(gr.skip())) for u in failed[:6])
    with pytest.raises(gr.Error, match="索引坏了"):
        next(gen)
    messages, settled_turns, *_ = ChatHandlers.settle(turns)
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
    assert e.value.message.startswith("内部错误，请稍后重试或联系管理员 / KeyError")
    assert "Traceback" not in e.value.message and "internal" not in e.value.message  # no raw library text
    assert e.value.title == "错误"  # toast titles in Chinese


def test_a_failing_handler_writes_its_status_line_first_and_keeps_other_outputs() -> None:
    """Bug: errors showed as red overlays over every output, blocking the controls under them;
    now the reason goes to the tab's status line, the other outputs keep their values, and the
    toast (and API clients) still get the error."""

    @user_errors(status=1, outputs=3)
    def build(ok: bool) -> tuple[str, str, str]:
        if not ok:
            raise UserError("请先选择要上传的文件", "choose files to upload first")
        return "table", "done", "box"

    assert list(build(True)) == [("table", "done", "box")]
    failing = build(False)
    update = next(failing)
    assert update[1] == "⚠️ 请先选择要上传的文件 / choose files to upload first"
    assert all(isinstance(u, type(gr.skip())) for u in (update[0], update[2]))
    with pytest.raises(gr.Error, match="请先选择要上传的文件"):
        next(failing)


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


@pytest.mark.parametrize(
    ("chapter", "title", "heading", "label"),
    [(2, "休假", "第二章", "第二章 休假"), (3, "尾声", "第三节", "第三节 尾声"), (2, "第二卷", "第二卷", "第二卷"),
     (1, "宴桃园豪杰三结义", "第一回", "第一回 宴桃园豪杰三结义"), (4, "序曲", None, "第4回 序曲")],
)
def test_chapter_labels_keep_the_documents_own_unit(chapter: int, title: str, heading: str | None, label: str) -> None:
    """Bug: ``## 第二章 休假`` was labelled "第2回 休假"; the label keeps the heading's unit."""
    source = Source(text="x", doc_id="d", chapter=chapter, chapter_title=title)
    assert render.chapter_label(source, heading) == label
    assert label in render.source_card(1, source, {("d", chapter): heading} if heading else None)


def test_banner_is_one_line_with_details_folded_and_no_server_paths() -> None:
    """Bug: a half-page bilingual banner with CLI flags and the server's folders."""
    text = render.banner([render.llm_problem("the chat model failed to load: /srv/models/glm3 has no config.json")])
    summary, details = text.split("</summary>")
    assert summary.startswith("<details><summary>⚠️ 未加载大模型") and "\n" not in summary
    assert "…/models/glm3" in details and "/srv/models" not in text and " --" not in text and "llm.model_path" in details
    assert render.banner([]) == ""


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


def test_upload_types_are_the_loaders_types_unless_restricted(tmp_path: Path) -> None:
    from kb.loaders import SUPPORTED_SUFFIXES

    state = Services(Settings(kb_root=tmp_path))
    assert state.upload_types() == list(SUPPORTED_SUFFIXES)
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.7")
    assert state.check_upload(tmp_path / "book.pdf")
    restricted = Services(Settings(kb_root=tmp_path, ui={"allowed_types": ["PDF", ".txt", ".pages"]}))
    assert restricted.upload_types() == [".txt", ".pdf"]  # a type no loader reads stays refused


def test_a_pdf_uploads_and_builds_and_content_that_contradicts_its_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13: uploads accept PDF/DOCX/EPUB/HTML/images by content; issue 18 #9: a PNG
    renamed .txt is still refused at upload."""
    import zipfile

    from app.web.manage import ManageHandlers
    from tests.fixtures.documents import SourceChapter, write_docx, write_pdf

    services = Services(Settings(kb_root=tmp_path / "kbs", embedding={"model": "none"}))
    handlers = ManageHandlers(services)
    warnings: list[str] = []
    monkeypatch.setattr("app.web.manage.warn", lambda zh, en: warnings.append(zh))
    chapters = [SourceChapter("第一回 宴桃园豪杰三结义", ["刘备与关羽、张飞在桃园结为兄弟。" * 4])]
    pdf = uploaded("sanguo.pdf", "")
    write_pdf(pdf, chapters)
    docx = uploaded("sanguo.docx", "")
    write_docx(docx, chapters)
    png = uploaded("photo.txt", "")
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    fake_pdf = uploaded("fake.pdf", "")
    with zipfile.ZipFile(fake_pdf, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    kept = handlers.screen_uploads([str(p) for p in (pdf, docx, png, fake_pdf)])
    assert kept == [str(pdf), str(docx)]
    assert warnings[0].startswith("不是可读的文本文件：photo.txt") and "fake.pdf" in warnings[1]
    services.create_kb("books")
    status = list(handlers.build("books", kept))[-1][0]
    assert "新增 2" in status, status
    docs = services.list_documents("books")
    assert sorted(Path(d.source).name for d in docs) == ["sanguo.docx", "sanguo.pdf"]
    assert all(d.chapters == 1 for d in docs)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", ".x", "-x", "a..b", "", "  "])
def test_bad_knowledge_base_names_are_refused(name: str) -> None:
    with pytest.raises(UserError):
        Services.check_kb_name(name)


def test_chinese_knowledge_base_names_are_fine() -> None:
    assert Services.check_kb_name(" 三国演义_v2 ") == "三国演义_v2"


def test_the_loading_banner_is_replaced_when_the_load_ends(tmp_path: Path) -> None:
    """Bug: "大模型加载中" stayed on the page after the model had loaded (or failed)."""
    import threading

    from app.web.widgets import banner_poll

    release = threading.Event()

    def slow_load() -> Any:
        release.wait(10)
        raise ValueError("no weights here")

    services = Services(Settings(kb_root=tmp_path, embedding={"model": "none"}), llm_factory=slow_load)
    loader = threading.Thread(target=services.warm_up)
    loader.start()
    assert wait_until(lambda: services.llm_status().loading, timeout=5)
    banner, timer = banner_poll(services)
    assert "加载中" in banner.value and timer.active is True
    release.set()
    loader.join(10)
    banner, timer = banner_poll(services)
    assert "加载中" not in banner.value and "加载失败" in banner.value and timer.active is False


@pytest.mark.parametrize("spec", ["1" + " " * 30_000 + "-", "第" + " " * 30_000 + "1回-", "1" * 50_000])
def test_hostile_chapter_ranges_are_refused_at_once(spec: str) -> None:
    """Issue 20 #4: ``parse_chapter_range`` backtracked quadratically on "1" + N spaces + "-"
    (30k characters: 28 s), freezing the whole web UI for every user."""
    import time

    from chains.summarize import parse_chapter_range

    started = time.monotonic()
    with pytest.raises(ValueError, match="not understood"):
        parse_chapter_range(spec)
    assert time.monotonic() - started < 0.5


def test_the_summary_tab_refuses_a_long_chapter_range_before_parsing(tmp_path: Path) -> None:
    """Issue 20 #4: the chapter box took 50 KB; the handler now refuses more than a short range."""
    from app.web.summary import FROM_KB, SummaryHandlers

    handlers = SummaryHandlers(Services(Settings(kb_root=tmp_path, embedding={"model": "none"})))
    with pytest.raises(gr.Error, match="章节范围太长"):
        list(handlers.summarize(FROM_KB, "sanguo", "d1", None, "1" + " " * 50_000 + "-"))


def uploaded(name: str, text: str) -> Path:
    """A file where Gradio keeps uploads (its upload folder), as an upload would leave it."""
    import uuid

    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()) / f"glmkb-test-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_uploads_are_deleted_after_the_build_and_when_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 #11: uploads were never deleted from Gradio's upload folder, and one request
    could carry any number of files."""
    from app.web.manage import ManageHandlers

    services = Services(Settings(kb_root=tmp_path, embedding={"model": "none"}, ui={"max_upload_files": 2}))
    handlers = ManageHandlers(services)
    monkeypatch.setattr("app.web.manage.warn", lambda zh, en: None)
    files = [uploaded(f"part{i}.txt", "刘备与关羽、张飞桃园结义。" * 20) for i in range(3)]
    wrong = uploaded("notes.pdf", "%PDF")
    kept = handlers.screen_uploads([str(p) for p in [*files, wrong]])
    assert kept == [str(files[0]), str(files[1])]
    assert not files[2].exists() and not files[2].parent.exists() and not wrong.exists()
    services.create_kb("up")
    status = list(handlers.build("up", kept))[-1][0]  # a generator: the status line first on failure
    assert "新增 2" in status
    assert not files[0].exists() and not files[1].exists()
    outside = tmp_path / "mine.txt"
    outside.write_text("刘备", encoding="utf-8")
    list(handlers.build("up", [str(outside)]))
    assert outside.exists()  # only Gradio's own copies are ever deleted
    with pytest.raises(gr.Error, match="一次最多上传 2 个文件"):
        list(handlers.build("up", [str(outside)] * 3))


# ----- the 全书问答 switch: whole-book answers through app.web.book_scope (tiny forced ChatGLM) -----


class RestartPerCall:
    """``ForcedTokens`` restarted at every generation (map batches, then the reduce stream)."""

    def __init__(self, forced: Any) -> None:
        self.forced = forced
        self.last: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        length = input_ids.shape[1]
        if self.last is None or length != self.last + 1:
            self.forced.prompt_length = length
        self.last = length
        return self.forced(input_ids, scores)


def book_services(tmp_path: Path, tiny_chatglm: Any, text: str, **forced_options: Any) -> tuple[Services, Any]:
    """Services over a small novel KB with the tiny ChatGLM forced to write ``text`` each call."""
    from kb import KnowledgeBase
    from tests.fixtures.corpus import mini_novel
    from tests.fixtures.models import ForcedTokens, forced_chatglm

    KnowledgeBase(tmp_path, "novels", create=True, embedding_model="none", chunk_size=60, chunk_overlap=0).add_texts(
        {"sanguo.txt": mini_novel(chapters=3)}
    )
    tok = tiny_chatglm.tokenizer
    forced = ForcedTokens(tok.encode(text, add_special_tokens=False), eos_id=tok.eos_token_id, **forced_options)
    llm = forced_chatglm(tiny_chatglm, RestartPerCall(forced), max_new_tokens=120)
    services = Services(Settings(kb_root=tmp_path, embedding={"model": "none"}, llm={"max_input_tokens": 1500}), llm=llm)
    services.ask = lambda *a, **k: pytest.fail("the book switch must not run chunk QA")  # type: ignore[method-assign]
    return services, forced


def test_the_book_switch_streams_a_whole_book_answer_with_progress_and_sources(
    tmp_path: Path, tiny_chatglm: Any
) -> None:
    services, _ = book_services(tmp_path, tiny_chatglm, "孔明出山[1][77]。")
    updates = run(ChatHandlers(services).ask("孔明做了哪些事？", [], "novels", "bm25", 3, book=True))
    statuses = [u[6] for u in updates if isinstance(u[6], str)]
    assert any(s.endswith("chapters selected") for s in statuses), statuses
    assert any(s.startswith("分段概括 / map") for s in statuses), statuses
    assert statuses[-1] == ""
    turn = updates[-1][2][-1]
    said = tiny_chatglm.tokenizer.decode(tiny_chatglm.tokenizer.encode("孔明出山[1]。", add_special_tokens=False))
    assert turn["status"] == "done" and turn["answer"] == said.strip()  # [77] resolves to nothing: dropped
    box = render_text(turn["sources_message"])
    assert "sanguo.txt" in box and "第2回" in box


def test_the_book_switch_refuses_when_nothing_is_found(tmp_path: Path, tiny_chatglm: Any) -> None:
    from chains.prompts import REFUSAL

    from chains.book_prompts import IRRELEVANT

    services, _ = book_services(tmp_path, tiny_chatglm, IRRELEVANT)  # every chapter: nothing relevant
    updates = run(ChatHandlers(services).ask("孔明做了哪些事？", [], "novels", "bm25", 3, book=True))
    turn = updates[-1][2][-1]
    assert turn["answer"] == REFUSAL and not turn["answered"] and turn["status"] == "done"


def test_stop_ends_a_book_answer_inside_its_map_batch(tmp_path: Path, tiny_chatglm: Any) -> None:
    """Bug guarded: the chat's Stop only cancelled the Gradio event, which lands between
    yields, so a whole-book answer kept generating for the whole map batch."""
    import threading

    services, forced = book_services(tmp_path, tiny_chatglm, "曹操" * 60, pause_at=3)
    chat = ChatHandlers(services)
    updates: list[Any] = []
    worker = threading.Thread(target=lambda: updates.extend(chat.ask("孔明做了哪些事？", [], "novels", "bm25", 3, book=True)))
    worker.start()
    assert forced.parked.wait(30)
    chat.stop(None)
    forced.resume.set()
    worker.join(30)
    assert not worker.is_alive() and forced.steps <= 6
    assert updates[-1][6] == "已停止 / stopped" and updates[-1][2][-1]["status"] == "stopped"


def render_text(message: dict[str, Any]) -> str:
    return str(message.get("content", ""))
