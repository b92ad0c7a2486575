"""The web UI over dense/hybrid knowledge bases (tiny sentence-transformers BERT from tests/fixtures/kb.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.services import Services
from kb import KnowledgeBase
from tests.test_app import answers, client, free_port, message_text, serve, sources_boxes

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]
QUESTION = "刘备和谁结义？"


def dense_settings(kb_root: Path, embedding: Path) -> Any:
    from configs import Settings

    return Settings(
        kb_root=kb_root,
        kb_name="dense",
        embedding={"model": str(embedding), "device": "cpu"},
        retrieval={"mode": "hybrid", "top_k": 3},
        llm={"max_input_tokens": 2048},
        ui={"port": free_port()},
    )


@pytest.fixture(scope="module")
def dense_root(tmp_path_factory: pytest.TempPathFactory, tiny_embedding_path: Path, sanguo_path: Path) -> Path:
    """Two dense KBs built with the tiny embedding model, and one built with a model since deleted."""
    root = tmp_path_factory.mktemp("dense_kb_root")
    text = sanguo_path.read_text(encoding="utf-8")[:40_000]
    settings = dense_settings(root, tiny_embedding_path)
    for name, part in (("dense", text[:20_000]), ("dense2", text[20_000:])):
        KnowledgeBase.from_settings(settings, name=name, create=True).add_texts({f"{name}.txt": part})
    gone = root.parent / "embedding-that-will-vanish"
    shutil.copytree(tiny_embedding_path, gone)
    orphan = KnowledgeBase.from_settings(dense_settings(root, gone), name="orphan", create=True)
    orphan.add_texts({"orphan.txt": text[:20_000]})
    orphan.close()
    shutil.rmtree(gone)
    return root


@pytest.fixture(scope="module")
def dense_app(dense_root: Path, tiny_embedding_path: Path, tiny_chatglm: Any) -> Iterator[tuple[str, Services]]:
    state = Services(dense_settings(dense_root, tiny_embedding_path), llm=tiny_chatglm)
    with serve(state) as url:
        yield url, state


@pytest.mark.parametrize("mode", ["dense", "hybrid", "bm25"])
def test_every_retrieval_mode_answers_with_sources(dense_app: tuple[str, Services], mode: str) -> None:
    url, _ = dense_app
    chat = client(url).predict(QUESTION, "dense", mode, 3, api_name="/ask")[1]
    assert answers(chat)[-1] and "(3)" in sources_boxes(chat)[0]["metadata"]["title"]


def test_knowledge_bases_share_one_embedding_model(dense_app: tuple[str, Services]) -> None:
    url, state = dense_app
    c = client(url)
    for kb in ("dense", "dense2"):
        c.predict(QUESTION, kb, "dense", 2, api_name="/ask")
    assert len(state._embeddings) == 1  # noqa: SLF001 - the shared cache is what is tested


def test_a_missing_embedding_model_falls_back_to_keywords(dense_app: tuple[str, Services]) -> None:
    url, _ = dense_app
    c = client(url)
    chat = c.predict(QUESTION, "orphan", "hybrid", 3, api_name="/ask")[1]
    assert "orphan.txt" in message_text(sources_boxes(chat)[0])  # searched by keywords instead
    banner = c.predict(api_name="/banner")
    assert "向量模型不可用" in banner["value"] and "embedding-that-will-vanish" in banner["value"]


def test_a_knowledge_base_created_in_the_ui_uses_the_configured_embedding(
    dense_app: tuple[str, Services], dense_root: Path, tmp_path: Path, tiny_embedding_path: Path
) -> None:
    from gradio_client import handle_file

    url, _ = dense_app
    c = client(url)
    c.predict("新向量库", api_name="/create_kb")
    doc = tmp_path / "notes.txt"
    doc.write_text("桃园结义：刘备、关羽、张飞三人结为兄弟。" * 20, encoding="utf-8")
    status = c.predict("新向量库", [handle_file(str(doc))], api_name="/build")[0]
    assert "新增 1" in status
    kb = KnowledgeBase.from_settings(dense_settings(dense_root, tiny_embedding_path), name="新向量库")
    assert not kb.keyword_only and kb.search("刘备", mode="dense", k=1)
