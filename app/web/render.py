"""Turn chain output into what the page shows: source cards, chat messages, banners, errors.

Everything user-supplied (passage text, file names, error text) is HTML-escaped here, so a
novel's ``<`` or ``*`` never turns into markup in the chat.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chains.events import Source
from kb.citation import page_label, section_label

SNIPPET_CHARS = 240
# (doc_id, chapter number) -> the document's own heading, e.g. "第二章" (not always 回).
Headings = Mapping[tuple[str | None, int | None], str]

# How to fix it, in settings keys (the page names no command-line flags; the CLI's own
# messages do).
MODEL_HOWTO = (
    "请管理员在配置文件中设置 llm.model_path（本地模型文件夹），或设置 llm.backend: openai 连接 "
    "vLLM 等兼容 OpenAI 的服务，然后重启。/ Ask the administrator to set llm.model_path (a local "
    "model folder) or llm.backend: openai with base_url in the settings, then restart."
)
EMBEDDING_HOWTO = (
    "关键词检索照常可用；需要向量检索时，请管理员在配置文件中把 embedding.model 设为本地向量模型文件夹后重启。"
    "/ Keyword search works; for vector search set embedding.model to a local model folder and restart."
)
# An absolute path in a reason (the server's folders) is shown by its last part only.
_PATH = re.compile(r"(?<![\w.~])(?:[A-Za-z]:)?(?:[\\/][^\s'\"`,;:()\\/]+){2,}[\\/]?")


def chapter_label(source: Source, heading: str | None = None) -> str:
    """``第二章 休假`` for a passage, in the document's own unit (回/章/节/卷) when its
    ``heading`` is known (``第12回`` otherwise); ``p.3 · 3.2 安装`` where the chunk knows its page
    and section (kb.citation); empty when it lies outside any chapter."""
    if source.section or source.page is not None:
        return " · ".join(p for p in (page_label(source.page, source.page_end), section_label(source.section)) if p)
    number, title = source.chapter, (source.chapter_title or "").strip()
    heading = (heading or getattr(source, "chapter_heading", None) or "").strip()
    if title.startswith("第") or (title and title == heading):
        return title  # the title already carries its own heading
    if number is None:
        return title
    return f"{heading or f'第{number}回'} {title}".strip()


def snippet(text: str, *, limit: int = SNIPPET_CHARS) -> str:
    """The passage on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def source_card(index: int, src: Source, headings: Headings | None = None) -> str:
    """One cited passage as a small HTML card: file, chapter, score, snippet."""
    path = src.source or ""
    name = path.replace("\\", "/").rsplit("/", 1)[-1] or "?"
    head = [f"<b>[{index}] {html.escape(name)}</b>"]
    if label := chapter_label(src, (headings or {}).get((src.doc_id, src.chapter))):
        head.append(html.escape(label))
    if src.score is not None:
        head.append(f"score {src.score:.3f}")
    return (
        f'<div class="glmkb-src"><div class="glmkb-src-head" title="{html.escape(path)}">'
        + " · ".join(head)
        + f'</div><div class="glmkb-src-text">{html.escape(snippet(src.text))}</div></div>'
    )


def sources_html(docs: Sequence[Source], headings: Headings | None = None) -> str:
    """All cited passages, one card each (no blank lines: the chat renders it as one HTML block)."""
    return "".join(source_card(i, d, headings) for i, d in enumerate(docs, 1))


def sources_message(docs: Sequence[Source], headings: Headings | None = None) -> dict[str, Any]:
    """A collapsible chat message (Gradio's titled-message box) holding the cited passages."""
    if not docs:
        return {
            "role": "assistant",
            "content": "没有检索到相关段落。/ No matching passages found.",
            "metadata": {"title": "引用来源 / Sources (0)", "status": "done"},
        }
    return {
        "role": "assistant",
        "content": sources_html(docs, headings),
        "metadata": {"title": f"引用来源 / Sources ({len(docs)})", "status": "done"},
    }


def passages_answer(docs: Sequence[Source], headings: Headings | None = None) -> str:
    """The no-LLM answer: say so, then the passages themselves (the sources box follows)."""
    if not docs:
        return "（未配置大模型 / no LLM）没有检索到相关段落。/ No matching passages found."
    return (
        f"（未配置大模型，以下是检索到的 {len(docs)} 个段落 / no LLM: the {len(docs)} "
        "retrieved passages are shown instead of an answer）\n\n"
        + sources_html(docs, headings)
    )


def page_reason(text: str) -> str:
    """A model error's reason as the page shows it: server folders cut to their last part,
    and the parts that name command-line flags or environment variables left to the CLI."""
    text = re.sub(r"\s*\([^()]*(?:--[a-z]|GLMKB_)[^()]*\)", "", hide_paths(text))
    parts = re.split(r"(?<=[;；.])\s+|,\s+(?=or\b)", text)
    return " ".join(p for p in parts if not re.search(r"(?<![\w-])--[a-z]|GLMKB_", p)).strip()


def hide_paths(text: str) -> str:
    """``text`` with each absolute path cut to its last two parts (``…/model/config.json``):
    enough to recognise the file, without the server's folders."""
    return _PATH.sub(lambda m: "…/" + "/".join(re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-2:]), text)


def banner(problems: Iterable[tuple[str, str]]) -> str:
    """The warning banner: one short line (each problem's headline), the details folded
    under it; empty when all is well."""
    problems = list(problems)
    if not problems:
        return ""
    headline = "；".join(head for head, _ in problems)
    details = "".join(f"<p>{detail}</p>" for _, detail in problems)
    return f"<details><summary>⚠️ {headline}（点击查看详情 / details）</summary>{details}</details>"


def llm_problem(reason: str, *, loading: bool = False) -> tuple[str, str]:
    """(headline, details) for a chat model that is missing, loading or failed to load."""
    if loading:
        return "大模型加载中，稍候即可问答 / loading the chat model…", html.escape(page_reason(reason))
    return (
        "未加载大模型：问答只显示检索到的段落 / no chat model: questions show the passages",
        f"{html.escape(page_reason(reason))} {MODEL_HOWTO}",
    )


def embedding_problem(reason: str) -> tuple[str, str]:
    """(headline, details) for an embedding model that cannot be used (keywords still work)."""
    return (
        "向量模型不可用：只能关键词检索 / no embedding model: keyword search only",
        f"{html.escape(page_reason(reason))} {EMBEDDING_HOWTO}",
    )


def user_message(zh: str, en: str) -> str:
    """The one-line Chinese + English text shown in gr.Warning / gr.Error toasts."""
    return f"{zh} / {en}"
