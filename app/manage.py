"""知识库管理 tab handlers: create, upload and build, list, delete documents, drop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr

from app.errors import UserError, user_errors, warn
from app.state import AppState, doc_label

DOC_COLUMNS = ["文档 / document", "块数 / chunks", "章节 / chapters", "doc_id"]


class ManageHandlers:
    """The management tab's event handlers, bound to the shared ``AppState``."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def kb_choices(self, selected: str | None = None) -> tuple[Any, Any, Any]:
        """The same knowledge-base list for the three pickers (chat, summary, manage)."""
        names = self.state.list_kbs()
        if selected not in names:
            default = self.state.settings.kb_name
            selected = default if default in names else (names[0] if names else None)
        return tuple(gr.Dropdown(choices=names, value=selected) for _ in range(3))  # type: ignore[return-value]

    def refresh(self, selected: str | None = None) -> tuple[Any, ...]:
        """On page load: the KB pickers (all three)."""
        return self.kb_choices(selected)

    @user_errors
    def create(self, name: str) -> tuple[Any, ...]:
        """Create an empty knowledge base and select it everywhere."""
        name = self.state.create_kb(name)
        status = f"已创建知识库 {name} / created knowledge base {name}"
        return (*self.kb_choices(name), "", status)

    def screen_uploads(self, files: Sequence[str] | str | None) -> Any:
        """Right after an upload: drop files of a wrong type or size, with a warning for each."""
        single = isinstance(files, str)
        kept = []
        for path in [files] if single else list(files or []):
            try:
                kept.append(str(self.state.check_upload(path)))
            except UserError as e:
                warn(e.zh, e.en)
        if single:
            return kept[0] if kept else None
        return kept

    @user_errors
    def build(
        self,
        kb_name: str | None,
        files: Sequence[str] | str | None,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
    ) -> tuple[Any, ...]:
        """Check every upload first (nothing is added if one is refused), then add and build.

        The knowledge base's tqdm bars (reading, tokenizing, embedding) drive the progress bar.
        Returns (status line, documents table, emptied file box).
        """
        kb_name = self.state.check_kb_name(kb_name)
        paths = [files] if isinstance(files, str) else list(files or [])
        if not paths:
            raise UserError("请先选择要上传的文件", "choose files to upload first")
        checked = [self.state.check_upload(p) for p in paths]
        progress(0, desc="读取文件 / reading files")
        report = self.state.add_files(kb_name, checked)
        status = (
            f"知识库 {kb_name}：新增 {len(report.added)}，更新 {len(report.replaced)}，"
            f"未变 {len(report.unchanged)} 个文件，共 {report.chunks_added} 个新块 / "
            f"{kb_name}: {report.summary()}"
        )
        return status, self.documents_table(kb_name), None

    def documents_table(self, kb_name: str | None) -> list[list[Any]]:
        """Rows for the documents table: file, chunk count, chapter count, doc_id."""
        if not kb_name:
            return []
        return [
            [doc_label(d), d.chunks, d.chapters, d.doc_id] for d in self.state.list_documents(kb_name)
        ]

    @user_errors
    def show(self, kb_name: str | None) -> tuple[Any, Any]:
        """The documents table and delete picker for the chosen knowledge base."""
        table = self.documents_table(kb_name)
        choices = [(row[0], row[3]) for row in table]
        return table, gr.Dropdown(choices=choices, value=None)

    @user_errors
    def delete_document(self, kb_name: str | None, doc_id: str | None) -> tuple[Any, ...]:
        """Remove one document (its chunks and vectors) from the knowledge base."""
        kb_name = self.state.check_kb_name(kb_name)
        if not doc_id:
            raise UserError("请先选择要删除的文档", "choose the document to delete first")
        label = self.state.remove_document(kb_name, doc_id)
        table, picker = self.show(kb_name)
        return f"已删除文档 {label} / deleted {label}", table, picker

    @user_errors
    def drop(self, kb_name: str | None, confirmed: bool) -> tuple[Any, ...]:
        """Delete a whole knowledge base, only once the confirmation box is ticked."""
        kb_name = self.state.check_kb_name(kb_name)
        if not confirmed:
            raise UserError(
                "请先勾选“确认删除”", "tick the confirmation box to delete the whole knowledge base"
            )
        self.state.drop_kb(kb_name)
        return (*self.kb_choices(None), False, f"已删除知识库 {kb_name} / deleted knowledge base {kb_name}")
