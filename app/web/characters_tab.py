"""The 人物关系 (characters) tab: the KB's person graph as inline SVG, a chapter range, a person panel.

Self-contained: ``build_characters_tab(state)`` adds the tab inside an open ``gr.Blocks`` and
wires its own events; ``state`` is the app's ``app.services.Services`` (``list_kbs``, ``kb``, ``list_documents``). The
graph is drawn server-side as SVG (positions from ``kb.characters.layout``) with a few lines of
vanilla JS in ``js_on_load`` that report which person was clicked: no CDN, no external asset,
so the page works offline. Moving the chapter sliders redraws the graph for that range;
clicking a person lists the chapters they appear in and their first passage per chapter.
"""

from __future__ import annotations

import html
import math
from typing import Any

import gradio as gr

from app.web.errors import error_line, user_errors
from kb.citation import chapter_label, chapter_span_label, chapter_unit

__all__ = ["build_characters_tab", "graph_svg", "load_graph", "person_markdown"]

ALL_DOCS = "全部文档 / all documents"
MAX_CHAPTER = 200
_CLICK_JS = (
    "element.addEventListener('click', (e) => {"
    " const node = e.target.closest('[data-person]');"
    " if (node) { trigger('person', {person: node.dataset.person}); } });"
)
_CSS = (
    ".glmkb-graph svg { width: 100%; height: auto; background: #fff; }"
    " .glmkb-graph [data-person] { cursor: pointer; }"
    " .glmkb-graph [data-person]:hover circle { stroke: #dc2626; stroke-width: 3; }"
)


def load_graph(state: Any, kb_name: str | None, source: str | None, first: int, last: int) -> Any:
    """The KB's character graph for chapters ``first``..``last`` (whole KB unless ``source``)."""
    from kb.characters import character_graph

    kb = state.kb(kb_name)
    chapters = (int(min(first, last)), int(max(first, last)))
    return character_graph(kb, source=None if source in (None, "", ALL_DOCS) else source, chapters=chapters)


def graph_svg(graph: Any, *, width: int = 960, height: int = 680) -> str:
    """The graph as one inline ``<svg>``: edges by weight, nodes sized by mentions, Chinese labels."""
    from kb.characters.layout import layout

    if not graph.persons:
        return "<p>这个范围内没有找到人物。/ No persons in this range.</p>"
    pos = layout(graph)
    margin = 60

    def xy(name: str) -> tuple[float, float]:
        x, y = pos[name]
        return margin + x * (width - 2 * margin), margin + y * (height - 2 * margin)

    parts = [f'<svg viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="人物关系图">']
    top_weight = max((r.weight for r in graph.relations), default=1)
    for r in sorted(graph.relations, key=lambda r: r.weight):
        (x1, y1), (x2, y2) = xy(r.a), xy(r.b)
        w = 0.5 + 5 * r.weight / top_weight
        title = html.escape(f"{r.a} — {r.b}：{r.weight}" + (f"（{r.label}）" if r.label else ""))
        parts.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#93c5fd" '
            f'stroke-width="{w:.1f}" stroke-opacity="0.8"><title>{title}</title></line>'
        )
    top_mentions = max(p.mentions for p in graph.persons)
    for p in graph.persons:
        x, y = xy(p.name)
        radius = 6 + 18 * math.sqrt(p.mentions / top_mentions)
        name = html.escape(p.name)
        aliases = html.escape("、".join(p.aliases[:5]))
        parts.append(
            f'<g data-person="{name}"><title>{name}（{aliases or "无别名"}）：{p.mentions} 次</title>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius:.1f}" fill="#fdba74" stroke="#9a3412"/>'
            f'<text x="{x:.1f}" y="{y + radius + 14:.1f}" text-anchor="middle" font-size="14">{name}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def person_markdown(state: Any, kb_name: str | None, graph: Any, name: str, *, max_passages: int = 8) -> str:
    """A person's names, chapters, closest persons and first passages (text from the KB)."""
    person = graph.person(name) if graph is not None else None
    if person is None:
        return f"没有找到人物“{name}”。"
    kb = state.kb(kb_name)
    headings = chapter_headings(kb)
    unit = chapter_unit(h for doc in headings.values() for h in doc.values())
    near = "、".join(f"{n}（{w}）" for n, w in graph.neighbours(person.name, 6))
    lines = [
        f"### {person.name}",
        f"别名：{'、'.join(person.aliases) or '无'}　提及 {person.mentions} 次",
        f"出现的章节：{'、'.join(chapter_span_label(c, c, unit) for c in person.chapters) or '无'}",
        f"关系最近：{near or '无'}",
        "",
    ]
    texts: dict[str, str] = {}
    for passage in graph.passages.get(person.name, [])[:max_passages]:
        doc_id = passage["doc_id"]
        if doc_id not in texts:
            texts[doc_id] = kb.get_document_text(doc_id)
        snippet = texts[doc_id][passage["start"] : passage["end"]].strip()[:160]
        number = passage["chapter"]
        heading = headings.get(doc_id, {}).get(number)
        chapter = chapter_label(number, None, heading) or (chapter_span_label(number, number, unit) if number else "")
        lines.append(f"- **{chapter}** {html.escape(snippet)}")
    return "\n".join(lines)


def chapter_headings(kb: Any, doc_ids: Any = None) -> dict[str, dict[int, str]]:
    """Each document's chapter headings by number (``第二章``), for labels in its own unit."""
    ids = doc_ids if doc_ids is not None else [d.doc_id for d in kb.list_documents()]
    found: dict[str, dict[int, str]] = {}
    for doc_id in ids:
        try:
            chapters = kb.get_chapters(doc_id)
        except Exception:  # noqa: BLE001 - a label is not worth failing the panel for
            continue
        found[doc_id] = {c.number: c.heading for c in chapters if c.number is not None and c.heading}
    return found


def _opened(state: Any, selected: str | None) -> tuple[gr.Dropdown, gr.Dropdown, gr.Slider, gr.Slider]:
    """On opening the tab: the knowledge bases there are now (keeping ``selected`` while it
    exists), then that KB's documents and chapter sliders (``_documents``)."""
    names = state.list_kbs()
    if selected not in names:
        selected = names[0] if names else None
    return (gr.Dropdown(choices=names, value=selected), *_documents(state, selected))


def _documents(state: Any, kb_name: str | None) -> tuple[gr.Dropdown, gr.Slider, gr.Slider]:
    """The KB's documents, and chapter sliders that end at its longest document's last chapter."""
    try:
        infos = state.list_documents(kb_name)
    except Exception:  # noqa: BLE001 - an unusable KB shows its error when drawing
        infos = []
    names = [d.source.replace("\\", "/").rsplit("/", 1)[-1] for d in infos]
    last = max([d.chapters for d in infos if d.chapters] or [MAX_CHAPTER])
    return (
        gr.Dropdown(choices=[ALL_DOCS, *names], value=ALL_DOCS),
        gr.Slider(minimum=1, maximum=last, value=1),
        gr.Slider(minimum=1, maximum=last, value=last),
    )


def build_characters_tab(state: Any) -> gr.Tab:
    """Add the 人物关系 tab to the open Blocks and connect its events."""
    names = state.list_kbs()
    with gr.Tab("人物关系 / Characters", id="characters") as tab:
        graph_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=240):
                kb_name = gr.Dropdown(
                    label="知识库 / knowledge base", choices=names, value=names[0] if names else None,
                    allow_custom_value=True, elem_id="characters-kb",
                )
                source = gr.Dropdown(label="文档 / document", choices=[ALL_DOCS], value=ALL_DOCS, elem_id="characters-doc")
                first = gr.Slider(1, MAX_CHAPTER, value=1, step=1, label="起始章节 / from chapter", elem_id="characters-from")
                last = gr.Slider(1, MAX_CHAPTER, value=MAX_CHAPTER, step=1, label="结束章节 / to chapter", elem_id="characters-to")
                top = gr.Slider(5, 80, value=30, step=1, label="人物数 / persons shown")
                draw = gr.Button("绘制 / draw", variant="primary", elem_id="characters-draw")
                status = gr.Markdown(elem_id="characters-status")
            with gr.Column(scale=3):
                picture = gr.HTML(
                    "<p>选择知识库后点“绘制”。/ Pick a knowledge base, then draw.</p>",
                    js_on_load=_CLICK_JS, css_template=_CSS, elem_classes=["glmkb-graph"], elem_id="characters-graph",
                )
                detail = gr.Markdown(elem_id="characters-person")

        def redraw(kb: str | None, doc: str | None, a: float, b: float, n: float) -> tuple[Any, str, str]:
            try:
                graph = load_graph(state, kb, doc, int(a), int(b)).top(persons=int(n))
            except Exception as e:  # noqa: BLE001 - shown to the user in one line, Chinese first
                # error_line, as every tab: no server path, command or endpoint ("GET /v1/kb") on the page
                return None, "", f"⚠️ {html.escape(error_line(e))}"
            unit = chapter_unit(h for doc in chapter_headings(state.kb(kb)).values() for h in doc.values())
            span = chapter_span_label(int(min(a, b)), int(max(a, b)), unit)
            shown = f"{len(graph.persons)} 人，{len(graph.relations)} 条关系（{span}）"
            return graph, graph_svg(graph), shown

        @user_errors
        def clicked(kb: str | None, graph: Any, evt: gr.EventData) -> str:
            return person_markdown(state, kb, graph, getattr(evt, "person", "") or "")

        inputs = [kb_name, source, first, last, top]
        outputs = [graph_state, picture, status]
        kb_name.change(lambda kb: _documents(state, kb), inputs=kb_name, outputs=[source, first, last])
        # The KB list is read again each time the tab is opened: it was fixed when the server
        # started, so a KB made in the manage tab never showed here and a deleted one stayed.
        tab.select(lambda kb: _opened(state, kb), inputs=kb_name, outputs=[kb_name, source, first, last])
        draw.click(redraw, inputs=inputs, outputs=outputs)
        first.release(redraw, inputs=inputs, outputs=outputs)
        last.release(redraw, inputs=inputs, outputs=outputs)
        picture.person(clicked, inputs=[kb_name, graph_state], outputs=detail)
    return tab
