"""Optional: name the strongest relations with a chat model (``ingest characters --llm``).

Each relation's evidence passages go into one short prompt; the model picks one label from
``LABELS``. Prompts run as ``llm.batch`` calls. Without a model the graph is complete, only
``label`` stays None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["LABELS", "label_relations", "parse_label"]

LABELS = ("结义兄弟", "君臣", "师徒", "父子", "母子", "兄弟", "夫妻", "主仆", "同僚", "朋友", "敌对", "其他")

_PROMPT = (
    "下面是小说中{a}和{b}同时出现的段落：\n{passages}\n\n"
    "请从以下关系中选出最能概括{a}与{b}关系的一个：{labels}。只输出这个词。\n关系："
)


def parse_label(text: str) -> str | None:
    """The first known label in the model's reply (None if it named none)."""
    found = [(text.find(label), label) for label in LABELS if label in text]
    return min(found)[1] if found else None


def label_relations(
    graph: Any,
    llm: Any,
    *,
    passage_text: Callable[[dict[str, Any]], str],
    top: int = 20,
    batch_size: int = 4,
    max_chars: int = 600,
) -> int:
    """Set ``label`` on the ``top`` heaviest relations; returns how many got one.

    ``passage_text(evidence)`` returns the text of one evidence entry (a KB chunk's span).
    """
    relations = graph.relations[:top]
    prompts = []
    for r in relations:
        passages = "\n".join(passage_text(e)[: max_chars // max(1, len(r.evidence))] for e in r.evidence)
        prompts.append(_PROMPT.format(a=r.a, b=r.b, passages=passages, labels="、".join(LABELS)))
    labelled = 0
    for start in range(0, len(prompts), batch_size):
        replies = llm.batch(prompts[start : start + batch_size])
        for r, reply in zip(relations[start : start + batch_size], replies, strict=True):
            r.label = parse_label(getattr(reply, "content", reply) if not isinstance(reply, str) else reply)
            labelled += r.label is not None
    return labelled
