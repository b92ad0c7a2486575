"""Bugs a first-time user met driving the page: what was typed or uploaded wrongly is told in
Chinese, naming the file or range (the Chinese line was only "操作失败" / "输入有误"); the summary
tab forgets a document deleted in the manage tab; the 人物关系 tab sees KBs made after start-up."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.utils import get_upload_folder

from app.errors import UserError
from app.services import Services
from app.web.manage import ManageHandlers
from app.web.summary import FROM_KB, FROM_UPLOAD, SummaryHandlers, check_chapter_range
from configs import Settings

NOVEL = "".join(f"第{n}回 第{n}回的回目\n\n" + f"第{n}回里刘备与关羽、张飞议事。" * 20 + "\n\n" for n in "一二三")


def services(tmp_path: Path) -> Services:
    """Keyword-only knowledge bases under ``tmp_path``, no chat model."""
    return Services(Settings(kb_root=tmp_path / "kbs", embedding={"model": "none"}))


@pytest.fixture
def upload_folder() -> Iterator[Path]:
    """A new folder where Gradio keeps uploads, named by a long hex string as Gradio's are."""
    folder = Path(get_upload_folder()) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def damaged_pdf(folder: Path) -> Path:
    """A file named .pdf that starts like one (so it passes the upload check) but cannot be read."""
    path = folder / "坏的.pdf"
    path.write_bytes(b"%PDF-1.4\n garbage garbage\n")
    return path


def summary_error(handlers: SummaryHandlers, *args: object) -> tuple[str, str]:
    """(status line, toast) of a summary that is refused."""
    updates = []
    with pytest.raises(gr.Error) as caught:
        for update in handlers.summarize(*args):
            updates.append(update)
    return updates[-1][0], str(caught.value.message)


@pytest.mark.parametrize("spec", ["第50-10回", "第0回", "abc"])
def test_a_bad_chapter_range_is_refused_in_chinese(tmp_path: Path, spec: str) -> None:
    """Bug: 第50-10回 in the summary's chapter box showed "⚠️ 操作失败 / chapter range ... is empty":
    the Chinese line did not say what was wrong. The chat's whole-book range said the same."""
    status, toast = summary_error(SummaryHandlers(services(tmp_path)), FROM_KB, "sanguo", "d1", None, spec)
    assert status.startswith(f"⚠️ 章节范围无效：{spec}") and toast.startswith(f"章节范围无效：{spec}")
    with pytest.raises(UserError) as caught:
        check_chapter_range(spec)
    assert caught.value.zh.startswith(f"章节范围无效：{spec}")
    assert check_chapter_range(" 第1-10回 ") == "第1-10回" and check_chapter_range("") is None


def test_a_chapter_range_past_the_document_is_refused_in_chinese(tmp_path: Path, upload_folder: Path) -> None:
    """Bug: 第999回 of a three-chapter document (in a KB or uploaded) showed "⚠️ 操作失败 / no chapters
    999-999 ...": no Chinese reason. A range that meets the document still goes on (here to the
    missing chat model)."""
    state = services(tmp_path)
    state.create_kb("书")
    state.kb("书").add_texts({"sanguo.txt": NOVEL})
    doc_id = state.list_documents("书")[0].doc_id
    handlers = SummaryHandlers(state)
    status, toast = summary_error(handlers, FROM_KB, "书", doc_id, None, "第999回")
    assert toast.startswith("本文档中找不到 第999回：超出了文档的章节") and "it has chapters 1-3" in toast, toast
    assert status.startswith("⚠️ 本文档中找不到 第999回")
    upload = upload_folder / "三国.txt"
    upload.write_text(NOVEL, encoding="utf-8")
    _, toast = summary_error(handlers, FROM_UPLOAD, None, None, str(upload), "第9回")
    assert toast.startswith("本文档中找不到 第9回："), toast
    _, toast = summary_error(handlers, FROM_KB, "书", doc_id, None, "第2-999回")
    assert "总结需要大模型" in toast, toast


def test_a_damaged_pdf_is_named_in_chinese_at_build_and_in_the_summary(tmp_path: Path, upload_folder: Path) -> None:
    """Bug: a damaged PDF passes the upload check (its first bytes are a PDF's) and the build then
    failed with "输入有误 / …/6f47…(64 hex)…/坏的.pdf is a damaged PDF": no Chinese reason, and
    Gradio's hashed upload folder on the page. The summary of an uploaded file said the same."""
    state = services(tmp_path)
    state.create_kb("书")
    pdf = damaged_pdf(upload_folder)
    with pytest.raises(gr.Error) as caught:
        list(ManageHandlers(state).build("书", [str(pdf)]))
    toast = str(caught.value.message)
    assert toast.startswith("无法读取 坏的.pdf：文件可能已损坏"), toast
    assert pdf.parent.name not in toast and "坏的.pdf is a damaged PDF" in toast
    assert state.list_documents("书") == []
    _, toast = summary_error(SummaryHandlers(state), FROM_UPLOAD, None, None, str(pdf), "")
    assert toast.startswith("无法读取 坏的.pdf：") and pdf.parent.name not in toast, toast


def test_deleting_a_document_refreshes_the_summary_tabs_document_list(tmp_path: Path) -> None:
    """Bug: after 删除文档 in the manage tab, the summary tab still offered (and had selected) the
    deleted document, and summarizing it said only "⚠️ 未找到"."""
    from app.web.ui import build_ui

    state = services(tmp_path)
    state.create_kb("书")
    state.kb("书").add_texts({"sanguo.txt": NOVEL, "notes.txt": "第一回 笔记\n\n刘备。" * 20})
    demo = build_ui(state)
    delete = next(i for i, f in demo.fns.items() if f.api_name == "delete_document")
    summary_doc = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "summary-tab-doc")
    refresh = next(f for f in demo.fns.values() if f.trigger_after == delete and summary_doc in f.outputs)
    gone = next(d for d in state.list_documents("书") if d.source.endswith("sanguo.txt"))
    state.remove_document("书", gone.doc_id)
    update = refresh.fn("书")
    assert [doc_id for _, doc_id in update.choices] != [] and gone.doc_id not in dict(update.choices).values()
    assert update.value != gone.doc_id


def characters_events(state: Services) -> dict[str, Any]:
    """The 人物关系 tab's event functions by trigger: "select" (the tab opened) and "click" (draw)."""
    from app.web.characters_tab import build_characters_tab

    with gr.Blocks() as demo:
        build_characters_tab(state)
    return {f.targets[0][1]: f.fn for f in demo.fns.values() if f.targets and f.targets[0][1] in ("select", "click")}


def test_the_characters_tab_lists_knowledge_bases_made_after_the_server_started(tmp_path: Path) -> None:
    """Bug: the 人物关系 tab's KB list was read once when the server started: a KB created in the
    manage tab never appeared there (not even after a reload), and a deleted one stayed."""
    state = services(tmp_path)
    state.create_kb("三国")
    opened = characters_events(state)["select"]
    state.create_kb("红楼梦")
    picker = opened("三国")[0]
    assert sorted(picker.choices) == [("三国", "三国"), ("红楼梦", "红楼梦")] and picker.value == "三国"
    state.drop_kb("三国")
    picker = opened("三国")[0]
    assert picker.choices == [("红楼梦", "红楼梦")] and picker.value == "红楼梦"


def test_the_characters_tab_error_names_no_endpoint(tmp_path: Path) -> None:
    """Bug: drawing a deleted KB showed "... or with ingest build (GET /v1/kb lists them)" on the
    page: the tab built its line itself instead of through ``error_line`` as the other tabs do."""
    draw = characters_events(services(tmp_path))["click"]
    _, _, status = draw("没有这个库", None, 1, 10, 30)
    assert status.startswith("⚠️ 没有名为 没有这个库 的知识库") and "GET /" not in status, status
