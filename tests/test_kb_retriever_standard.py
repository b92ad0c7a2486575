"""``KnowledgeBaseRetriever`` against LangChain's standard ``RetrieversIntegrationTests``.

Issue 17 (API conformance): ``invoke(q, k=1)`` silently ignored a per-call ``k`` (and ``mode``).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_tests")
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

from configs import Settings  # noqa: E402
from kb import KnowledgeBase  # noqa: E402
from kb.knowledge_base_retriever import KnowledgeBaseRetriever  # noqa: E402

TEXT = "".join(f"第{i}回 刘备第{i}次访贤\n刘备与关羽、张飞议事，第{i}段。\n" + "闲话。" * 60 + "\n" for i in range(1, 13))


@functools.cache
def knowledge_base() -> KnowledgeBase:
    """A small keyword-only KB (built once per test run) where every chapter mentions 刘备."""
    root = Path(tempfile.mkdtemp(prefix="glmkb-retriever-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # each run left one in /tmp
    settings = Settings(kb_root=root, embedding={"model": "none"}, retrieval={"mode": "bm25", "top_k": 4})
    kb = KnowledgeBase.from_settings(settings, name="std", create=True, chunk_size=120, chunk_overlap=0)
    kb.add_texts({"std.txt": TEXT})
    return kb


class TestKnowledgeBaseRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[KnowledgeBaseRetriever]:
        return KnowledgeBaseRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"knowledge_base": knowledge_base(), "mode": "bm25"}

    @property
    def retriever_query_example(self) -> str:
        return "刘备访贤"


def test_a_per_call_mode_overrides_the_constructor_one() -> None:
    """``invoke(q, mode=...)`` reaches the search (hybrid on a keyword-only KB is keywords)."""
    retriever = KnowledgeBaseRetriever(knowledge_base=knowledge_base(), mode="bm25", k=2)
    assert len(retriever.invoke("刘备", mode="hybrid")) == 2
    assert len(retriever.invoke("刘备", k=5)) == 5
