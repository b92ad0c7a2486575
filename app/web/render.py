"""Turn chain output into what the page shows: source cards, chat messages, banners, errors.

Everything user-supplied (passage text, file names, error text) is HTML-escaped here, so a
novel's ``<`` or ``*`` never turns into markup in the chat.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from chains.events import Source

SNIPPET_CHARS = 240

MODEL_HOWTO = (
    "配置方法 / how to configure: `glmkb-web --model-path DIR`, "
    "or `GLMKB_LLM__MODEL_PATH=DIR`, or `llm: {model_path: DIR}` in your YAML (`--config FILE`); "
    "or an OpenAI-compatible server (vLLM): `llm: {backend: openai, base_url: URL, model: NAME}`."
)
EMBEDDING_HOWTO = (
    "配置方法 / how to configure: `glmkb-web --embedding NAME_OR_DIR`, or "
    "`GLMKB_EMBEDDING__MODEL=DIR`, or `embedding: {model: DIR}` in YAML."
)


def chapter_label(source: Source) -> str:
    """``第12回 标题`` for a passage; empty when it lies outside any chapter."""
    number, title = source.chapter, (source.chapter_title or "").strip()
    if title.startswith("第"):
        return title  # the title already carries its own 第N回 heading
    if number is None:
        return title
    return f"第{number}回 {title}".strip()


def snippet(text: str, *, limit: int = SNIPPET_CHARS) -> str:
    """The passage on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def source_card(index: int, src: Source) -> str:
    """One cited passage as a small HTML card: file, chapter, score, snippet."""
    path = src.source or ""
    name = path.replace("\\", "/").rsplit("/", 1)[-1] or "?"
    head = [f"<b>[{index}] {html.escape(name)}</b>"]
    if label := chapter_label(src):
        head.append(html.escape(label))
    if src.score is not None:
        head.append(f"score {src.score:.3f}")
    return (
        f'<div class="glmkb-src"><div class="glmkb-src-head" title="{html.escape(path)}">'
        + " · ".join(head)
        + f'</div><div class="glmkb-src-text">{html.escape(snippet(src.text))}</div></div>'
    )


def sources_html(docs: Sequence[Source]) -> str:
    """All cited passages, one card each (no blank lines: the chat renders it as one HTML block)."""
    return "".join(source_card(i, d) for i, d in enumerate(docs, 1))


def sources_message(docs: Sequence[Source]) -> dict[str, Any]:
    """A collapsible chat message (Gradio's titled-message box) holding the cited passages."""
    if not docs:
        return {
            "role": "assistant",
            "content": "没有检索到相关段落。/ No matching passages found.",
            "metadata": {"title": "引用来源 / Sources (0)", "status": "done"},
        }
    return {
        "role": "assistant",
        "content": sources_html(docs),
        "metadata": {"title": f"引用来源 / Sources ({len(docs)})", "status": "done"},
    }


def passages_answer(docs: Sequence[Source]) -> str:
    """The no-LLM answer: say so, then the passages themselves (the sources box follows)."""
    if not docs:
        return "（未配置大模型 / no LLM）没有检索到相关段落。/ No matching passages found."
    return (
        f"（未配置大模型，以下是检索到的 {len(docs)} 个段落 / no LLM: the {len(docs)} "
        "retrieved passages are shown instead of an answer）\n\n"
        + sources_html(docs)
    )


def banner(problems: Iterable[str]) -> str:
    """The warning banner's Markdown: one line per problem, empty when all is well."""
    lines = [f"⚠️ {p}" for p in problems]
    return "\n\n".join(lines)


def llm_problem(reason: str, *, loading: bool = False) -> str:
    """Banner text for a chat model that is missing, loading or failed to load."""
    if loading:
        return f"大模型加载中 / loading the chat model… {html.escape(reason)}"
    return (
        f"**大模型不可用，问答只显示检索到的段落 / No chat model: questions show the retrieved "
        f"passages instead of an answer.** {html.escape(reason)} {MODEL_HOWTO}"
    )


def embedding_problem(reason: str) -> str:
    """Banner text for an embedding model that cannot be used (keyword search still works)."""
    return (
        "**向量模型不可用，只能使用关键词检索 (bm25) / No embedding model: only keyword (bm25) "
        f"search works, and new knowledge bases are keyword-only.** {html.escape(reason)} "
        f"{EMBEDDING_HOWTO}"
    )


def user_message(zh: str, en: str) -> str:
    """The one-line Chinese + English text shown in gr.Warning / gr.Error toasts."""
    return f"{zh} / {en}"
