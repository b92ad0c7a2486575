"""知识库管理 tab: layout, wiring and handlers to create, upload and build, list, delete
documents, drop."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from app.errors import UserError
from app.services import Services, doc_label
from app.uploads import check_content
from app.web.errors import QUIET, named_load_errors, user_errors, warn
from app.web.widgets import kb_picker, upload_label
from kb.loaders.folders import not_read_note

DOC_COLUMNS = ["文档 / document", "块数 / chunks", "章节 / chapters", "doc_id"]
KEYWORDS, VECTORS = "none", "vectors"
KINDS = [("关键词（无需模型）/ keywords", KEYWORDS), ("向量 + 关键词 / vectors + keywords", VECTORS)]


def model_label(model: str) -> str:
    """A model's name for the picker: its last path part (never the server's folder)."""
    return model.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or model


class ManageHandlers:
    """The management tab's event handlers, bound to the shared ``Services``."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def kb_choices(self, selected: str | None = None) -> tuple[Any, Any, Any]:
        """The same knowledge-base list for the three pickers (chat, summary, manage)."""
        names = self.services.list_kbs()
        if selected not in names:
            default = self.services.settings.kb_name
            selected = default if default in names else (names[0] if names else None)
        return tuple(gr.Dropdown(choices=names, value=selected) for _ in range(3))  # type: ignore[return-value]

    def refresh(self, selected: str | None = None) -> tuple[Any, ...]:
        """On page load: the KB pickers (all three)."""
        return self.kb_choices(selected)

    def default_kind(self) -> str:
        """Vectors when the configured embedding model can be used, else keywords (``auto``)."""
        return VECTORS if self.services.embedding_model_names() else KEYWORDS

    def model_choices(self) -> list[tuple[str, str]]:
        """The embedding models a new knowledge base may use (the configured one, if usable)."""
        names = self.services.embedding_model_names()
        return [(model_label(names[0]), self.services.settings.embedding.model)] if names else []

    @user_errors(status=4, outputs=5)
    def create(self, name: str, kind: str | None = None, model: str | None = None) -> tuple[Any, ...]:
        """Create an empty knowledge base, keyword-only or with the chosen embedding model,
        and select it everywhere."""
        embedding = KEYWORDS if kind == KEYWORDS else (model or None)
        name = self.services.create_kb(name, embedding_model=embedding)
        how = "关键词检索 / keywords" if embedding == KEYWORDS else "向量 + 关键词 / vectors + keywords"
        status = f"已创建知识库 {name}（{how}），请上传文件并构建 / created knowledge base {name}"
        return (*self.kb_choices(name), "", status)

    def screen_uploads(self, files: Sequence[str] | str | None) -> Any:
        """Right after an upload: drop files of a wrong type or size, and those beyond
        ``ui.max_upload_files``, with a warning for each; dropped files are deleted at once."""
        single = isinstance(files, str)
        paths = [files] if single else list(files or [])
        limit = self.services.settings.ui.max_upload_files
        if len(paths) > limit:
            warn(f"一次最多上传 {limit} 个文件，多出的 {len(paths) - limit} 个已忽略",
                 f"at most {limit} files per upload (ui.max_upload_files); {len(paths) - limit} were dropped")
            discard_uploads(paths[limit:])
            paths = paths[:limit]
        kept = []
        for path in paths:
            try:
                kept.append(str(check_content(self.services.check_upload(path, archives=True))))
            except UserError as e:
                warn(e.zh, e.en)
                discard_uploads([path])
        if single:
            return kept[0] if kept else None
        return kept

    @user_errors(status=0, outputs=3)
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
        kb_name = self.services.check_kb_name(kb_name)
        paths = [files] if isinstance(files, str) else list(files or [])
        if not paths:
            raise UserError("请先选择要上传的文件", "choose files to upload first")
        limit = self.services.settings.ui.max_upload_files
        if len(paths) > limit:
            raise UserError(f"一次最多上传 {limit} 个文件", f"at most {limit} files per upload (ui.max_upload_files)")
        checked = [check_content(self.services.check_upload(p, archives=True)) for p in paths]
        progress(0, desc="读取文件 / reading files")
        with named_load_errors(checked):
            report = self.services.add_files(kb_name, checked)
        discard_uploads(checked)  # the KB keeps the text; Gradio's copies are not needed any more
        status = (
            f"知识库 {kb_name}：新增 {len(report.added)}，更新 {len(report.replaced)}，"
            f"未变 {len(report.unchanged)} 个文件，共 {report.chunks_added} 个新块 / "
            f"{kb_name}: {report.summary()}"
        )
        if note := not_read_note(report.skipped, report.unread):
            status += f"\n未读取 / note: {note}"
        return status, self.documents_table(kb_name), None

    def documents_table(self, kb_name: str | None) -> list[list[Any]]:
        """Rows for the documents table: file, chunk count, chapter count, doc_id."""
        if not kb_name:
            return []
        return [
            [doc_label(d), d.chunks, d.chapters, d.doc_id] for d in self.services.list_documents(kb_name)
        ]

    @user_errors
    def show(self, kb_name: str | None) -> tuple[Any, Any]:
        """The documents table and delete picker for the chosen knowledge base."""
        table = self.documents_table(kb_name)
        choices = [(row[0], row[3]) for row in table]
        return table, gr.Dropdown(choices=choices, value=None)

    @user_errors(status=0, outputs=3)
    def delete_document(self, kb_name: str | None, doc_id: str | None) -> tuple[Any, ...]:
        """Remove one document (its chunks and vectors) from the knowledge base."""
        kb_name = self.services.check_kb_name(kb_name)
        if not doc_id:
            raise UserError("请先选择要删除的文档", "choose the document to delete first")
        label = self.services.remove_document(kb_name, doc_id)
        table, picker = self.show(kb_name)
        return f"已删除文档 {label} / deleted {label}", table, picker

    @user_errors(status=4, outputs=5)
    def drop(self, kb_name: str | None, confirmed: bool) -> tuple[Any, ...]:
        """Delete a whole knowledge base, only once the confirmation box is ticked."""
        kb_name = self.services.check_kb_name(kb_name)
        if not confirmed:
            raise UserError(
                "请先勾选“确认删除”", "tick the confirmation box to delete the whole knowledge base"
            )
        self.services.drop_kb(kb_name)
        return (*self.kb_choices(None), False, f"已删除知识库 {kb_name} / deleted knowledge base {kb_name}")


def discard_uploads(paths: Sequence[str | Path]) -> None:
    """Delete Gradio's copies of uploaded files (and their emptied folders), never anything
    outside Gradio's upload folder (issue 20 #11: uploads were never deleted)."""
    root = Path(get_upload_folder()).resolve()
    for path in paths:
        file = Path(path).resolve()
        if root not in file.parents:
            continue
        file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the per-upload folder, once empty
            if file.parent != root:
                file.parent.rmdir()


class ManageTab:
    """The 知识库管理 tab: ``layout`` inside a ``gr.Tab``, then ``wire``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.handlers = ManageHandlers(services)

    def layout(self) -> None:
        """Create, pick, upload and build, the documents table, delete a document or the KB."""
        ui = self.services.settings.ui
        with gr.Row():
            self.new_name = gr.Textbox(
                label="新建知识库 / new knowledge base", placeholder="例如 sanguo 或 三国", scale=3, elem_id="new-kb"
            )
            self.create_btn = gr.Button("创建 / create", scale=1, elem_id="create-btn")
        with gr.Row():
            kind = self.handlers.default_kind()
            models = self.handlers.model_choices()
            self.kind = gr.Radio(KINDS, value=kind, label="检索方式 / index", scale=3, elem_id="new-kb-kind")
            self.model = gr.Dropdown(
                choices=models,
                value=models[0][1] if models else None,
                label="向量模型 / embedding model",
                info=None if models else "没有可用的向量模型，只能建关键词库 / no embedding model available",
                interactive=bool(models),
                visible=kind == VECTORS,
                scale=2,
                elem_id="new-kb-model",
            )
        self.kb = kb_picker(self.services, elem_id="manage-kb")
        self.files = gr.File(
            label="上传文件 / upload files "
            + upload_label(self.services.upload_types(archives=True), ui.max_upload_mb, each=True),
            file_count="multiple",
            elem_id="upload-files",
        )
        self.build_btn = gr.Button("加入知识库并构建 / add and build", variant="primary", elem_id="build-btn")
        self.status = gr.Markdown(elem_id="manage-status", min_height=40)
        self.docs_table = gr.Dataframe(
            headers=DOC_COLUMNS, interactive=False, label="文档 / documents", elem_id="docs-table"
        )
        with gr.Row():
            self.doc_pick = gr.Dropdown(
                label="删除文档 / delete a document", choices=[], scale=3, allow_custom_value=True
            )
            self.del_doc_btn = gr.Button("删除文档 / delete document", variant="stop", scale=1)
        with gr.Accordion("删除整个知识库 / delete the whole knowledge base", open=False, elem_id="drop-box"):
            self.confirm = gr.Checkbox(
                label="确认删除（不可恢复）/ yes, delete it (cannot be undone)", elem_id="drop-confirm"
            )
            self.drop_btn = gr.Button("删除知识库 / delete knowledge base", variant="stop", elem_id="drop-btn")

    def wire(self, *, pickers: list[gr.Dropdown], summary_file: gr.File, after_build: Any) -> None:
        """Events of this tab; ``pickers`` are the three KB pickers (chat, summary, manage),
        ``after_build`` the summary tab's document refresh (a callable and its in/outputs), run after
        a build and after a document is deleted."""
        handlers = self.handlers
        self.kind.change(
            lambda k: gr.Dropdown(visible=k == VECTORS), inputs=[self.kind], outputs=[self.model], api_name=False, **QUIET
        )
        self.create_btn.click(
            handlers.create,
            inputs=[self.new_name, self.kind, self.model],
            outputs=[*pickers, self.new_name, self.status],
            api_name="create_kb",
            **QUIET,
        )
        self.kb.change(
            handlers.show, inputs=[self.kb], outputs=[self.docs_table, self.doc_pick], api_name="documents", **QUIET
        )
        # No file_types on the File boxes: Gradio would refuse other types with its own
        # English-only error; ours says what is allowed in both languages.
        self.files.upload(handlers.screen_uploads, inputs=[self.files], outputs=[self.files], api_name=False, **QUIET)
        summary_file.upload(
            handlers.screen_uploads, inputs=[summary_file], outputs=[summary_file], api_name=False, **QUIET
        )
        fn, inputs, outputs = after_build
        # The build's progress bar sits on the status line only (not over the upload box or
        # the table); an error there is hidden by ui.CSS and written into the line instead.
        self.build_btn.click(
            handlers.build, inputs=[self.kb, self.files], outputs=[self.status, self.docs_table, self.files],
            api_name="build", show_progress_on=[self.status],
        ).then(
            handlers.show, inputs=[self.kb], outputs=[self.docs_table, self.doc_pick], api_name=False, **QUIET
        ).then(fn, inputs=inputs, outputs=outputs, api_name=False, **QUIET)
        # The summary tab's document list too: it kept offering a deleted document ("⚠️ 未找到").
        self.del_doc_btn.click(
            handlers.delete_document,
            inputs=[self.kb, self.doc_pick],
            outputs=[self.status, self.docs_table, self.doc_pick],
            api_name="delete_document",
            **QUIET,
        ).then(fn, inputs=inputs, outputs=outputs, api_name=False, **QUIET)
        self.drop_btn.click(
            handlers.drop, inputs=[self.kb, self.confirm], outputs=[*pickers, self.confirm, self.status],
            api_name="drop_kb",
            **QUIET,
        )
