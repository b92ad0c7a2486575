"""The web UI served for real: gradio_client against a launched server with the tiny ChatGLM.

Every server here runs in this process on 127.0.0.1 and a free port, over a keyword-only
knowledge base built from the first chapters of 三国演义, with the real ``Services`` →
``KnowledgeBaseQAChain`` / summarizer → ``ChatGLM`` path (tiny random weights, greedy).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.web.server import launch
from app.services import Services
from app.web.summary import FROM_KB, FROM_UPLOAD
from app.web.ui import build_ui
from chains import KnowledgeBaseQAChain
from configs import Settings
from kb import KnowledgeBase
from llm.streaming import model_is_busy

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from tests.helpers import free_port, wait_until

# Gradio's queue statistics trip pandas 3 deprecations; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]

KB = "sanguo"
QUESTION = "刘备和谁结义？"
CORPUS_CHARS = 40_000  # the first five chapters: enough for chapters and retrieval, quick to index


# ------------------------------------------------------------------------------ helpers


def make_settings(kb_root: Path, **ui: Any) -> Settings:
    """Settings built directly (no YAML/env layers), keyword-only KBs, a free port."""
    return Settings(
        kb_root=kb_root,
        kb_name=KB,
        embedding={"model": "none"},
        retrieval={"mode": "bm25", "top_k": 3},
        llm={"max_input_tokens": 2048},  # within the tiny model's 4096 positions
        ui={"port": free_port(), **ui},
    )


@contextlib.contextmanager
def serve(state: Services) -> Iterator[str]:
    """Launch the real UI for ``state`` without blocking; close it afterwards."""
    demo = build_ui(state)
    launch(demo, state.settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{state.settings.ui.port}/"
    finally:
        demo.close()


def client(url: str, **kwargs: Any) -> Client:
    return Client(url, verbose=False, download_files=False, **kwargs)


def message_text(message: dict[str, Any]) -> str:
    """The text of a chatbot message as gradio_client returns it (content parts or a string)."""
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def answers(chat: list[dict[str, Any]]) -> list[str]:
    """Assistant answers (not the sources boxes) in a chatbot value."""
    return [message_text(m) for m in chat if m["role"] == "assistant" and not m.get("metadata")]


def sources_boxes(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in chat if m["role"] == "assistant" and (m.get("metadata") or {}).get("title")]


def generating(llm: Any) -> bool:
    """Whether ``llm``'s model is running (or has queued) a generation right now."""
    return model_is_busy(llm.model)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sanguo_text(sanguo_path: Path) -> str:
    return sanguo_path.read_text(encoding="utf-8")[:CORPUS_CHARS]


@pytest.fixture(scope="module")
def kb_root(tmp_path_factory: pytest.TempPathFactory, sanguo_text: str) -> Path:
    """A kb_root holding the keyword-only knowledge base ``sanguo`` (chapters 1-5)."""
    root = tmp_path_factory.mktemp("app_kb_root")
    settings = make_settings(root)
    KnowledgeBase.from_settings(settings, name=KB, create=True).add_texts({"sanguo.txt": sanguo_text})
    return root


@pytest.fixture(scope="module")
def qa_llm(tiny_chatglm: Any) -> Any:
    """The tiny ChatGLM answering in 32 tokens: several streamed updates, quick."""
    return tiny_chatglm.model_copy(update={"max_new_tokens": 32})


@pytest.fixture(scope="module")
def app_url(kb_root: Path, qa_llm: Any) -> Iterator[str]:
    """The full UI with the tiny ChatGLM; uploads limited to 1 MB."""
    state = Services(make_settings(kb_root, max_upload_mb=1), llm=qa_llm)
    with serve(state) as url:
        yield url


@contextlib.contextmanager
def throttled(model: Any, *, seconds_per_step: float) -> Iterator[None]:
    """Each forward pass of ``model`` (one generation step) takes at least ``seconds_per_step``,
    so how long a stream lasts no longer depends on how busy the machine is."""
    handle = model.register_forward_pre_hook(lambda module, args: time.sleep(seconds_per_step))
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def slow_llm(tiny_chatglm: Any) -> Iterator[Any]:
    """The tiny ChatGLM allowed 3000 new tokens at >= 10 ms each: an answer that streams for 25 s
    or more. Bug: unthrottled, the tiny model reached its 4096-token length in ~10 s, and under
    load the browser test's checks that it was still generating came after it had finished."""
    with throttled(tiny_chatglm.model, seconds_per_step=0.01):
        yield tiny_chatglm.model_copy(update={"max_new_tokens": 3000})


# ------------------------------------------------------------------------------ QA


def test_question_streams_tokens_then_ends_with_sources(app_url: str, kb_root: Path, qa_llm: Any) -> None:
    job = client(app_url).submit(QUESTION, KB, "bm25", 3, api_name="/ask")
    job.result(timeout=120)
    updates = [out[1] for out in job.outputs() if isinstance(out[1], list)]
    lengths = [len(answers(chat)[-1]) for chat in updates if answers(chat)]
    # the answer grows over many updates, never shrinks
    assert len(set(lengths)) >= 5, lengths
    assert lengths == sorted(lengths)
    final = updates[-1]
    assert [message_text(m) for m in final if m["role"] == "user"] == [QUESTION]
    boxes = sources_boxes(final)
    assert len(boxes) == 1 and boxes[0]["metadata"]["title"] == "引用来源 / Sources (3)"
    assert "sanguo.txt" in message_text(boxes[0]) and "第" in message_text(boxes[0])
    # what the page shows is what the real chain over the real model answers
    kb = KnowledgeBase.from_settings(make_settings(kb_root), name=KB)
    chain = KnowledgeBaseQAChain.from_settings(kb.as_retriever(mode="bm25", k=3), qa_llm, make_settings(kb_root))
    expected = chain.invoke({"question": QUESTION})["answer"]
    assert expected and answers(final)[-1] == expected


def test_follow_up_keeps_the_conversation(app_url: str) -> None:
    c = client(app_url)
    c.predict(QUESTION, KB, "bm25", 3, api_name="/ask")
    chat = c.predict("他的两个兄弟后来怎样？", KB, "bm25", 3, api_name="/ask")[1]
    assert [message_text(m) for m in chat if m["role"] == "user"] == [QUESTION, "他的两个兄弟后来怎样？"]
    assert len(sources_boxes(chat)) == 2
    cleared = c.predict(api_name="/clear")
    assert cleared == []


def test_sessions_do_not_see_each_others_streams(app_url: str) -> None:
    """Two users asking at once each get exactly the answer their own question gets alone."""
    questions = ["刘备和谁结义？", "曹操献刀给谁？"]
    alone = [answers(client(app_url).predict(q, KB, "bm25", 3, api_name="/ask")[1])[-1] for q in questions]
    assert alone[0] != alone[1]
    jobs = [client(app_url).submit(q, KB, "bm25", 3, api_name="/ask") for q in questions]
    together = [answers(job.result(timeout=120)[1]) for job in jobs]
    assert together == [[alone[0]], [alone[1]]]


def test_stop_closes_the_stream_and_ends_generation(kb_root: Path, slow_llm: Any) -> None:
    """Regression: a cancelled answer must stop the model's worker thread, not run to the end."""
    state = Services(make_settings(kb_root), llm=slow_llm)
    with serve(state) as url:
        c = client(url)
        job = c.submit(QUESTION, KB, "bm25", 3, api_name="/ask")
        assert wait_until(lambda: generating(slow_llm) and len(job.outputs()) > 20, timeout=60)
        started = time.monotonic()
        job.cancel()
        assert wait_until(lambda: not generating(slow_llm), timeout=10), "generation kept running after Stop"
        assert time.monotonic() - started < 10
        partial = answers(job.outputs()[-1][1])[-1]
        assert 0 < len(partial) < 3000
        # the model is free again: the next question streams normally
        job = c.submit("曹操献刀给谁？", KB, "bm25", 1, api_name="/ask")
        assert wait_until(lambda: len(job.outputs()) > 5, timeout=60)
        job.cancel()
        assert wait_until(lambda: not generating(slow_llm), timeout=10)


def test_the_book_switch_answers_from_the_whole_book_through_the_page(app_url: str) -> None:
    """全书问答 on: the status line reports the chapters chosen and the map, the answer comes
    with its cited passages; the same page's chunk QA is untouched (tests above)."""
    job = client(app_url).submit("刘备做了哪些事？", KB, "bm25", 3, True, "第1-3回", api_name="/ask")
    final = job.result(timeout=300)
    statuses = [out[-1] for out in job.outputs() if isinstance(out[-1], str)]
    assert any(s.endswith("chapters selected") for s in statuses), statuses
    assert any(s.startswith("分段概括 / map") for s in statuses), statuses
    chat = final[1]
    assert [message_text(m) for m in chat if m["role"] == "user"] == ["刘备做了哪些事？"]
    assert answers(chat)[-1]
    boxes = sources_boxes(chat)
    assert len(boxes) == 1 and "sanguo.txt" in message_text(boxes[0])
    assert "第4回" not in message_text(boxes[0]) and "第5回" not in message_text(boxes[0])  # the range holds


# ------------------------------------------------------------------------------ summary


def test_summary_of_a_chapter_range_streams_with_progress(app_url: str, kb_root: Path) -> None:
    kb = KnowledgeBase.from_settings(make_settings(kb_root), name=KB)
    doc_id = kb.list_documents()[0].doc_id
    job = client(app_url).submit(FROM_KB, KB, doc_id, None, "第1-2回", api_name="/summarize")
    status, summary = job.result(timeout=300)
    outputs = job.outputs()
    progress = [o[0] for o in outputs if "map" in o[0]]
    counts = [re.search(r" (\d+)/(\d+)", s).groups() for s in progress]  # type: ignore[union-attr]
    done = [int(d) for d, _ in counts]
    total = {int(t) for _, t in counts}
    assert len(total) == 1 and total.pop() >= 2, progress  # chapters 1 and 2, long ones split
    assert done[0] == 0 and done == sorted(done) and len(set(done)) >= 2, progress
    texts = [o[1] for o in outputs if isinstance(o[1], str) and o[1]]
    assert len(set(texts)) >= 3, "the final summary should arrive in several pieces"
    assert status == "完成 / done" and summary == texts[-1]


def long_answers(tiny_chatglm: Any) -> Any:
    """The tiny model forced to write 3,000 tokens for every prompt, batched or not
    (``.forced.steps`` counts the steps of the first generation)."""
    from tests.fixtures.models import ForcedTokens, forced_chatglm

    tok = tiny_chatglm.tokenizer
    forced = ForcedTokens(tok.encode("曹操", add_special_tokens=False) * 3000, eos_id=tok.eos_token_id)
    return forced_chatglm(tiny_chatglm, forced, max_new_tokens=3000)


def test_stop_ends_a_summary_inside_its_map_batch(kb_root: Path, tiny_chatglm: Any) -> None:
    """Bug: Stop on the summary tab only cancelled the Gradio event, which takes effect when the
    handler next yields; a batched map step yields nothing until the whole batch is generated,
    so the model kept generating (minutes on a CPU) after Stop."""
    llm = long_answers(tiny_chatglm)
    forced = llm.forced
    doc_id = KnowledgeBase.from_settings(make_settings(kb_root), name=KB).list_documents()[0].doc_id
    with serve(Services(make_settings(kb_root), llm=llm)) as url:
        c = client(url)
        job = c.submit(FROM_KB, KB, doc_id, None, "第1-3回", api_name="/summarize")
        assert wait_until(lambda: forced.steps > 20, timeout=120), "the map batch did not start"
        c.predict(api_name="/stop_summary")
        started = time.monotonic()
        assert wait_until(lambda: not generating(llm), timeout=10), "the map batch kept generating after Stop"
        took, steps = time.monotonic() - started, forced.steps
        status, _ = job.result(timeout=30)
        assert status == "已停止 / stopped"
        assert steps < 1500, f"{steps} of 3000 tokens generated"
        time.sleep(1)
        assert not generating(llm) and forced.steps == steps, "a next batch started after Stop"
        assert took < 10
        # The same session summarizes normally afterwards (the Stop was for that run only).
        llm.max_new_tokens = 8
        status, summary = c.predict(FROM_KB, KB, doc_id, None, "第1回", api_name="/summarize")
        assert status == "完成 / done" and summary


def test_stop_ends_a_book_answer_inside_its_map_batch_in_the_page(kb_root: Path, tiny_chatglm: Any) -> None:
    """Bug guarded: the chat's Stop only cancelled the Gradio event, which lands when the
    handler next yields: never inside a whole-book answer's batched map step."""
    llm = long_answers(tiny_chatglm)
    forced = llm.forced
    with serve(Services(make_settings(kb_root), llm=llm)) as url:
        c = client(url)
        job = c.submit("刘备做了哪些事？", KB, "bm25", 3, True, "第1-3回", api_name="/ask")
        assert wait_until(lambda: forced.steps > 20, timeout=120), "the map batch did not start"
        c.predict(api_name="/stop_answer")
        started = time.monotonic()
        assert wait_until(lambda: not generating(llm), timeout=10), "the map batch kept generating after Stop"
        steps = forced.steps
        final = job.result(timeout=30)
        assert final[-1] == "已停止 / stopped"
        assert steps < 1500 and time.monotonic() - started < 10
        time.sleep(1)
        assert not generating(llm) and forced.steps == steps, "a next batch started after Stop"


def test_summary_of_an_uploaded_file(app_url: str, tmp_path: Path, sanguo_text: str) -> None:
    path = tmp_path / "chapter1.txt"
    path.write_text(sanguo_text[:3000], encoding="utf-8")
    status, summary = client(app_url).predict(
        FROM_UPLOAD, None, None, handle_file(str(path)), "", api_name="/summarize"
    )
    assert status == "完成 / done" and summary.strip()


def test_summary_with_a_bad_chapter_range_says_why(app_url: str, kb_root: Path) -> None:
    doc_id = KnowledgeBase.from_settings(make_settings(kb_root), name=KB).list_documents()[0].doc_id
    with pytest.raises(AppError, match="第1-10回"):
        client(app_url).predict(FROM_KB, KB, doc_id, None, "第几回", api_name="/summarize")


# ------------------------------------------------------------------------------ management


def test_create_upload_build_list_delete_drop(app_url: str, kb_root: Path, sanguo_text: str, tmp_path: Path) -> None:
    c = client(app_url)
    name = "上传测试"
    created = c.predict(name, api_name="/create_kb")
    assert created[0]["value"] == name and [name, name] in created[0]["choices"]
    assert "已创建" in created[-1]
    utf8 = tmp_path / "第一部分.txt"
    utf8.write_text(sanguo_text[:6000], encoding="utf-8")
    gbk = tmp_path / "part2.md"
    gbk.write_bytes(sanguo_text[6000:12000].encode("gb18030"))
    status, table, files = c.predict(name, [handle_file(str(utf8)), handle_file(str(gbk))], api_name="/build")
    assert "新增 2" in status and files is None
    rows = {row[0]: row for row in table["data"]}
    assert set(rows) == {"第一部分.txt", "part2.md"}
    assert all(int(row[1]) > 0 for row in rows.values())
    on_disk = KnowledgeBase.from_settings(make_settings(kb_root), name=name)
    assert {d.source for d in on_disk.list_documents()} == {"第一部分.txt", "part2.md"}
    assert on_disk.get_document_text("part2.md") == sanguo_text[6000:12000]  # GB18030 decoded
    # Uploads stream from their temporary files like `ingest build` and record what they were.
    assert {d.source: d.encoding for d in on_disk.list_documents()} == {"第一部分.txt": "utf-8", "part2.md": "gb18030"}

    status, table, _ = c.predict(name, rows["part2.md"][3], api_name="/delete_document")
    assert "part2.md" in status and [r[0] for r in table["data"]] == ["第一部分.txt"]

    with pytest.raises(AppError, match="确认删除"):
        c.predict(name, False, api_name="/drop_kb")
    dropped = c.predict(name, True, api_name="/drop_kb")
    assert "已删除知识库" in dropped[-1]
    assert name not in KnowledgeBase.list_names(kb_root)


def test_upload_of_a_disallowed_type_is_refused(app_url: str, tmp_path: Path) -> None:
    table = tmp_path / "novel.pages"  # an Apple Pages document: no loader reads it
    table.write_text("宴桃园豪杰三结义\n", encoding="utf-8")
    with pytest.raises(AppError, match=r"不支持的文件类型.*file type not allowed: novel\.pages"):
        client(app_url).predict(KB, [handle_file(str(table))], api_name="/build")


def test_upload_over_the_size_limit_is_refused(app_url: str, kb_root: Path, tmp_path: Path) -> None:
    """ui.max_upload_mb is enforced by the server itself, not only by well-behaved clients."""
    import httpx

    big = tmp_path / "big.txt"
    big.write_text("话" * (1024 * 1024 // 3 + 10), encoding="utf-8")  # just over 1 MB
    before = KnowledgeBase.from_settings(make_settings(kb_root), name=KB).version
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client(app_url).predict(KB, [handle_file(str(big))], api_name="/build")
    with big.open("rb") as f:  # a raw upload, bypassing the client's own check
        response = httpx.post(f"{app_url}gradio_api/upload", files={"files": ("big.txt", f)}, timeout=30)
    assert response.status_code == 413, response.text
    assert KnowledgeBase.from_settings(make_settings(kb_root), name=KB).version == before


@pytest.mark.parametrize("name", ["../evil", "a/b", ".hidden", ""])
def test_knowledge_base_names_cannot_escape_kb_root(app_url: str, kb_root: Path, name: str) -> None:
    with pytest.raises(AppError, match="知识库名称|knowledge-base name"):
        client(app_url).predict(name, api_name="/create_kb")
    assert not (kb_root.parent / "evil").exists()


# ------------------------------------------------------------------------------ no LLM


@pytest.fixture(scope="module")
def no_llm_url(kb_root: Path) -> Iterator[str]:
    """The UI as started without llm.model_path and with an embedding model that is missing."""
    settings = make_settings(kb_root)
    settings.embedding.model = str(kb_root / "no-such-embedding-model")
    with serve(Services.from_settings(settings)) as url:
        yield url


def test_without_a_model_the_banner_says_how_to_configure_it(no_llm_url: str) -> None:
    update = client(no_llm_url).predict(api_name="/banner")
    banner = update["value"]
    assert update["visible"] is True
    assert "llm.model_path" in banner and "embedding.model" in banner
    assert "向量模型不可用" in banner and "no-such-embedding-model" in banner
    # Bug: the page showed CLI flags and a half-page banner; now settings keys, one line, details folded
    assert " --" not in banner and "GLMKB_" not in banner
    assert banner.startswith("<details><summary>⚠️ ") and banner.count("</summary>") == 1


def test_without_a_model_questions_show_the_passages(no_llm_url: str, sanguo_text: str) -> None:
    # hybrid is asked for; the keyword-only KB is searched by keywords
    chat = client(no_llm_url).predict(QUESTION, KB, "hybrid", 3, api_name="/ask")[1]
    (answer,) = answers(chat)
    assert "未配置大模型" in answer and 'class="glmkb-src"' in answer
    assert answer.count('class="glmkb-src"') == 3 and not sources_boxes(chat)


def test_without_a_model_summaries_are_refused_clearly(no_llm_url: str, kb_root: Path) -> None:
    doc_id = KnowledgeBase.from_settings(make_settings(kb_root), name=KB).list_documents()[0].doc_id
    with pytest.raises(AppError, match="总结需要大模型.*llm.model_path"):
        client(no_llm_url).predict(FROM_KB, KB, doc_id, None, "", api_name="/summarize")


def test_using_a_knowledge_base_that_does_not_exist_says_to_create_it(app_url: str, tmp_path: Path) -> None:
    doc = tmp_path / "a.txt"
    doc.write_text("桃园结义", encoding="utf-8")
    c = client(app_url)
    with pytest.raises(AppError, match="请先在“知识库管理”中创建"):  # no CLI hint in the page
        c.predict("没有这个库", [handle_file(str(doc))], api_name="/build")
    with pytest.raises(AppError, match="没有名为 没有这个库 的知识库"):
        c.predict(QUESTION, "没有这个库", "bm25", 3, api_name="/ask")


def test_a_created_knowledge_base_is_on_disk_at_once_and_deleting_removes_its_folder(tmp_path: Path) -> None:
    """Regression (issue 18 #7): a KB created in the page lived only in the server's memory until
    its first build (`ingest list` and other processes could not see it), and a deleted one left
    a folder behind."""
    from kb import KnowledgeBase

    services = Services(make_settings(tmp_path / "kbs"))
    services.create_kb("fresh", embedding_model="none")
    assert "fresh" in KnowledgeBase.list_names(tmp_path / "kbs")  # what `ingest list` reads
    assert services.kb("fresh").keyword_only and services.list_documents("fresh") == []
    services.drop_kb("fresh")
    assert not (tmp_path / "kbs" / "fresh").exists()
    assert "fresh" not in KnowledgeBase.list_names(tmp_path / "kbs")
