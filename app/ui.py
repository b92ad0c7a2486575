"""The page: three tabs (知识库问答, 长文总结, 知识库管理) wired to handlers over one ``AppState``.

``build_ui(state)`` only lays out components and connects events; what each event does lives
in ``app.chat``, ``app.summary`` and ``app.manage``. Per-user data (the conversation) is kept
in ``gr.State`` so concurrent users never share anything but the read-mostly ``AppState``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from app.chat import ChatHandlers  # noqa: E402
from app.manage import DOC_COLUMNS, ManageHandlers  # noqa: E402
from app.state import AppState  # noqa: E402
from app.summary import FROM_KB, FROM_UPLOAD, SummaryHandlers, document_dropdown  # noqa: E402

TITLE = "glmkb 中文知识库问答"
MODES = [("混合 hybrid", "hybrid"), ("向量 dense", "dense"), ("关键词 bm25", "bm25")]

# System fonts only (Gradio's default theme ships its Latin fonts locally; nothing is fetched
# from the internet), with common CJK fonts before the generic fallback.
THEME = gr.themes.Soft(
    primary_hue="teal",
    font=[
        gr.themes.LocalFont("Source Sans Pro", weights=(400, 600)),
        "Noto Sans CJK SC",
        "PingFang SC",
        "Microsoft YaHei",
        "sans-serif",
    ],
)
CSS = """
#glmkb-banner { border-left: 4px solid #d97706; background: #fffbeb; padding: 0.4em 0.8em; }
.glmkb-src { border-top: 1px solid #e5e7eb; padding: 0.35em 0; font-size: 0.92em; }
.glmkb-src:first-child { border-top: none; }
.glmkb-src-head { color: #0f766e; margin-bottom: 0.15em; }
.glmkb-src-text { color: #374151; }
"""


def banner_update(state: AppState) -> gr.Markdown:
    """The warning banner: shown with what is missing and how to fix it, hidden when all is well."""
    text = state.banner_markdown()
    return gr.Markdown(value=text, visible=bool(text))


def kb_picker(state: AppState, *, elem_id: str) -> gr.Dropdown:
    """A knowledge-base dropdown. Its choices are refreshed per page load and after changes;
    custom values are allowed because handlers validate names themselves (API clients too)."""
    names = state.list_kbs()
    default = state.settings.kb_name if state.settings.kb_name in names else None
    return gr.Dropdown(
        label="知识库 / knowledge base",
        choices=names,
        value=default or (names[0] if names else None),
        allow_custom_value=True,
        elem_id=elem_id,
    )


def build_ui(state: AppState) -> gr.Blocks:
    """Lay out the three tabs and connect their events; returns the (unlaunched) Blocks."""
    chat, summary, manage = ChatHandlers(state), SummaryHandlers(state), ManageHandlers(state)
    settings = state.settings
    allowed = ", ".join(settings.ui.allowed_types)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}")
        banner = gr.Markdown(visible=False, elem_id="glmkb-banner")

        with gr.Tab("知识库问答 / Chat", id="chat"):
            turns = gr.State([])
            with gr.Row():
                with gr.Column(scale=1, min_width=220):
                    chat_kb = kb_picker(state, elem_id="chat-kb")
                    mode = gr.Radio(
                        MODES, value=settings.retrieval.mode, label="检索方式 / retrieval"
                    )
                    top_k = gr.Slider(
                        1, 20, value=settings.retrieval.top_k, step=1, label="段落数 / top_k"
                    )
                    clear_btn = gr.Button("清空对话 / clear", elem_id="clear-btn")
                with gr.Column(scale=4):
                    chatbot = gr.Chatbot(
                        label="对话 / conversation",
                        height=520,
                        elem_id="chatbot",
                        buttons=["copy"],
                        feedback_options=None,
                        placeholder="选择知识库，然后提问。/ Pick a knowledge base and ask.",
                    )
                    with gr.Row():
                        question = gr.Textbox(
                            show_label=False,
                            placeholder="输入问题，回车发送 / ask a question, Enter to send",
                            scale=6,
                            elem_id="question",
                        )
                        send_btn = gr.Button("发送 / send", variant="primary", scale=1, elem_id="send-btn")
                        stop_btn = gr.Button("停止 / stop", variant="stop", scale=1, elem_id="stop-btn")

        with gr.Tab("长文总结 / Summary", id="summary"):
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    origin = gr.Radio([FROM_KB, FROM_UPLOAD], value=FROM_KB, label="文本来源 / text from")
                    sum_kb = kb_picker(state, elem_id="summary-kb")
                    sum_doc = gr.Dropdown(
                        label="文档 / document", choices=[], allow_custom_value=True, elem_id="summary-tab-doc"
                    )
                    sum_file = gr.File(
                        label=f"上传文本 / upload ({allowed}, ≤ {settings.ui.max_upload_mb} MB)",
                        visible=False,
                    )
                    chapters = gr.Textbox(
                        label="章节范围（可选）/ chapters (optional)",
                        placeholder="例如 第1-10回 / e.g. 1-10",
                        elem_id="summary-chapters",
                    )
                    with gr.Row():
                        sum_btn = gr.Button("开始总结 / summarize", variant="primary", elem_id="summarize-btn")
                        sum_stop = gr.Button("停止 / stop", variant="stop", elem_id="summary-stop-btn")
                with gr.Column(scale=3):
                    sum_status = gr.Markdown(elem_id="summary-status")
                    sum_out = gr.Markdown(
                        label="总结 / summary", elem_id="summary-output", min_height=300, container=True
                    )

        with gr.Tab("知识库管理 / Manage", id="manage"):
            with gr.Row():
                new_name = gr.Textbox(
                    label="新建知识库 / new knowledge base",
                    placeholder="例如 sanguo 或 三国",
                    scale=3,
                    elem_id="new-kb",
                )
                create_btn = gr.Button("创建 / create", scale=1, elem_id="create-btn")
            man_kb = kb_picker(state, elem_id="manage-kb")
            files = gr.File(
                label=f"上传文件 / upload files ({allowed}, ≤ {settings.ui.max_upload_mb} MB each)",
                file_count="multiple",
                elem_id="upload-files",
            )
            build_btn = gr.Button("加入知识库并构建 / add and build", variant="primary", elem_id="build-btn")
            man_status = gr.Markdown(elem_id="manage-status")
            docs_table = gr.Dataframe(
                headers=DOC_COLUMNS, interactive=False, label="文档 / documents", elem_id="docs-table"
            )
            with gr.Row():
                doc_pick = gr.Dropdown(
                    label="删除文档 / delete a document", choices=[], scale=3, allow_custom_value=True
                )
                del_doc_btn = gr.Button("删除文档 / delete document", variant="stop", scale=1)
            with gr.Accordion("删除整个知识库 / delete the whole knowledge base", open=False):
                confirm = gr.Checkbox(label="确认删除（不可恢复）/ yes, delete it (cannot be undone)")
                drop_btn = gr.Button("删除知识库 / delete knowledge base", variant="stop")

        pickers = [chat_kb, sum_kb, man_kb]

        # -- chat ---------------------------------------------------------------------
        ask = gr.on(
            [question.submit, send_btn.click],
            chat.ask,
            inputs=[question, turns, chat_kb, mode, top_k],
            outputs=[question, chatbot, turns, banner, clear_btn],
            api_name="ask",
            show_progress="hidden",
        )
        # Runs after the answer ends, and after a Stop once the stream is really closed.
        ask.then(chat.settle, inputs=[turns], outputs=[chatbot, turns, clear_btn], api_name=False)
        stop_btn.click(None, cancels=[ask], api_name=False)
        clear_btn.click(chat.clear, outputs=[chatbot, turns], api_name="clear")

        # -- summary ------------------------------------------------------------------
        origin.change(
            lambda o: (gr.update(visible=o == FROM_KB),) * 2 + (gr.update(visible=o == FROM_UPLOAD),),
            inputs=[origin],
            outputs=[sum_kb, sum_doc, sum_file],
            api_name=False,
        )
        sum_kb.change(summary.documents, inputs=[sum_kb], outputs=[sum_doc], api_name=False)
        sum_btn.click(
            summary.summarize,
            inputs=[origin, sum_kb, sum_doc, sum_file, chapters],
            outputs=[sum_status, sum_out],
            api_name="summarize",
            show_progress_on=[sum_out],  # keep the status line readable above the bar
        )
        # No ``cancels=[...]`` here: a Gradio cancel lands only when the handler yields (never
        # inside a map batch) and would race its own "stopped" line; ``summary.stop`` reaches
        # the model at once (llm.cancel_scope) and the handler ends by itself.
        sum_stop.click(summary.stop, api_name="stop_summary", queue=False)

        # -- management ---------------------------------------------------------------
        create_btn.click(
            manage.create, inputs=[new_name], outputs=[*pickers, new_name, man_status], api_name="create_kb"
        )
        man_kb.change(manage.show, inputs=[man_kb], outputs=[docs_table, doc_pick], api_name="documents")
        # No file_types on the File boxes: Gradio would refuse other types with its own
        # English-only error; ours says what is allowed in both languages.
        files.upload(manage.screen_uploads, inputs=[files], outputs=[files], api_name=False)
        sum_file.upload(manage.screen_uploads, inputs=[sum_file], outputs=[sum_file], api_name=False)
        build_btn.click(
            manage.build, inputs=[man_kb, files], outputs=[man_status, docs_table, files], api_name="build"
        ).then(manage.show, inputs=[man_kb], outputs=[docs_table, doc_pick], api_name=False).then(
            lambda kb: document_dropdown(state, kb), inputs=[sum_kb], outputs=[sum_doc], api_name=False
        )
        del_doc_btn.click(
            manage.delete_document,
            inputs=[man_kb, doc_pick],
            outputs=[man_status, docs_table, doc_pick],
            api_name="delete_document",
        )
        drop_btn.click(
            manage.drop, inputs=[man_kb, confirm], outputs=[*pickers, confirm, man_status], api_name="drop_kb"
        )

        demo.load(manage.refresh, outputs=pickers, api_name=False).then(
            summary.documents, inputs=[sum_kb], outputs=[sum_doc], api_name=False
        ).then(manage.show, inputs=[man_kb], outputs=[docs_table, doc_pick], api_name=False)
        demo.load(lambda: banner_update(state), outputs=[banner], api_name="banner")
    return demo
