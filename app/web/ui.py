"""The page: a banner and three tabs (知识库问答, 长文总结, 知识库管理) over one ``Services``.

``build_ui(services)`` lays out the page and lets each tab module lay out and wire its own
tab (``app.web.chat``, ``app.web.summary``, ``app.web.manage``); only the links between tabs
(the three KB pickers, the summary's document list after a build) are made here. Per-user
data (the conversation) is kept in ``gr.State``, so concurrent users share nothing but the
read-mostly ``Services``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from app.services import Services  # noqa: E402
from app.web.chat import MODES, ChatTab  # noqa: E402
from app.web.manage import ManageTab  # noqa: E402
from app.web.summary import SummaryTab, document_dropdown  # noqa: E402
from app.web.widgets import banner_update, kb_picker  # noqa: E402

__all__ = ["CSS", "MODES", "THEME", "TITLE", "banner_update", "build_ui", "kb_picker"]

TITLE = "glmkb 中文知识库问答"

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


def build_ui(services: Services) -> gr.Blocks:
    """Lay out the page and its three tabs and connect their events; returns the unlaunched Blocks."""
    chat, summary, manage = ChatTab(services), SummaryTab(services), ManageTab(services)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}")
        banner = gr.Markdown(visible=False, elem_id="glmkb-banner")
        with gr.Tab("知识库问答 / Chat", id="chat"):
            chat.layout()
        with gr.Tab("长文总结 / Summary", id="summary"):
            summary.layout()
        with gr.Tab("知识库管理 / Manage", id="manage"):
            manage.layout()

        pickers = [chat.kb, summary.kb, manage.kb]
        chat.wire(banner=banner)
        summary.wire()
        manage.wire(
            pickers=pickers,
            summary_file=summary.file,
            after_build=(lambda kb: document_dropdown(services, kb), [summary.kb], [summary.doc]),
        )

        demo.load(manage.handlers.refresh, outputs=pickers, api_name=False).then(
            summary.handlers.documents, inputs=[summary.kb], outputs=[summary.doc], api_name=False
        ).then(manage.handlers.show, inputs=[manage.kb], outputs=[manage.docs_table, manage.doc_pick], api_name=False)
        demo.load(lambda: banner_update(services), outputs=[banner], api_name="banner")
    return demo
