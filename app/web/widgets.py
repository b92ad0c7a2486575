"""Pieces every tab uses: the knowledge-base picker and the warning banner."""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from app.services import Services
from app.web import render

__all__ = ["banner_markdown", "banner_poll", "banner_update", "kb_picker", "llm_problem", "upload_label"]


def llm_problem(services: Services) -> tuple[str, str] | None:
    """Banner (headline, details) about the chat model, or None when it is loaded (or will
    load on demand)."""
    status = services.llm_status()
    if status.loaded:
        return None
    if status.error is not None:
        reason = status.error
        if status.configured:
            reason = "加载失败 / failed to load: " + reason.removeprefix("the chat model failed to load: ")
        return render.llm_problem(reason)
    if status.loading:
        return render.llm_problem(status.target, loading=True)
    return None


def banner_markdown(services: Services) -> str:
    """Everything the user should know is missing, as the banner's Markdown ('' if nothing)."""
    problems = services.embedding_problems()
    embedding = render.embedding_problem(" ".join(problems)) if problems else None
    return render.banner([p for p in (llm_problem(services), embedding) if p])


def banner_update(services: Services) -> gr.Markdown:
    """The warning banner: shown with what is missing and how to fix it, hidden when all is well."""
    text = banner_markdown(services)
    return gr.Markdown(value=text, visible=bool(text))


def banner_poll(services: Services) -> tuple[gr.Markdown, gr.Timer]:
    """The banner again, and whether to keep polling: while the chat model loads, so that
    "大模型加载中" is replaced as soon as the load ends (well or not)."""
    return banner_update(services), gr.Timer(active=services.llm_status().loading)


def kb_picker(services: Services, *, elem_id: str) -> gr.Dropdown:
    """A knowledge-base dropdown. Its choices are refreshed per page load and after changes;
    custom values are allowed because handlers validate names themselves (API clients too)."""
    names = services.list_kbs()
    default = services.settings.kb_name if services.settings.kb_name in names else None
    return gr.Dropdown(
        label="知识库 / knowledge base",
        choices=names,
        value=default or (names[0] if names else None),
        allow_custom_value=True,
        elem_id=elem_id,
    )


def upload_label(types: Sequence[str], max_mb: int, *, each: bool) -> str:
    """``(txt md pdf …, ≤ 50 MB each)``: the types and size limit an upload box lists."""
    listed = " ".join(t.lstrip(".") for t in types)
    return f"({listed}, ≤ {max_mb} MB{' each' if each else ''})"
