"""Hostile knowledge-base names and uploads are refused everywhere, and nothing outside kb_root is touched.

Every test has a *victim*: a real knowledge base next to ``kb_root`` (``kb_root/../victim``), so
a name like ``../victim`` that slipped through would read, build into or delete it. Each entry
point is tried: the kb API, every ``ingest`` subcommand, the web UI's endpoints (over HTTP,
against a launched server) and the HTTP API (raw requests, so no client normalises ``..``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import UserError
from app.services import Services
from app.web.server import launch
from app.web.summary import FROM_KB, FROM_UPLOAD
from app.web.ui import build_ui
from configs import Settings
from ingest.cli import main as ingest_main
from kb import KnowledgeBase, KnowledgeBaseError, validate_kb_name
from tests.test_api import running

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]

TEXT = "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞三人在桃园结义，誓同生死。\n"
SECRET = "机密：服务器上的私人笔记，绝不能被读到。"
# Names that must never become a folder: traversal, absolute paths, separators, control
# characters, over-long names, hidden/option-like names, Milvus Lite's .db, and names that are
# device files on Windows (a kb_root copied there could not hold them).
BAD_NAMES = [
    "../victim", "..", ".", "./x", "/abs", "/etc", "a/b", "a\\b", "..\\victim", "a\x00b", "\x00",
    "x" * 65, "名" * 65, "a\nb", "a\tb", "\u202eevil", "a:b", "a*b", "a?b", 'a"b', "a<b", "a|b",
    ".hidden", "-rf", "x.db", " x", "x ", "x.", "CON", "con", "NUL", "aux", "PRN", "COM1", "lpt9", "nul.txt", "CON.kb",
    # invisible (glmkb #20.16): zero-width space/joiner, soft hyphen, bidi isolate, Hangul filler, variation selector
    "\u200b", "a\u200db", "a\u00adb", "a\u2066b", "a\u3164b", "a\ufe0fb",
]
GOOD_NAMES = ["sanguo", "三国演义", "kb-1_2", "v1.2", "a b", "nullable", "conan", "com10"]


@pytest.fixture
def kb_root(tmp_path: Path) -> Path:
    """``tmp/kb`` as kb_root, with the victim knowledge base at ``tmp/victim``."""
    victim = KnowledgeBase(tmp_path, "victim", create=True, embedding_model="none")
    victim.add_texts({"victim.txt": TEXT})
    (tmp_path / "kb").mkdir()
    return tmp_path / "kb"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (the victim) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def outside(kb_root: Path) -> dict[str, bytes]:
    """Everything next to kb_root (the victim and any stray file)."""
    return {name: data for name, data in snapshot(kb_root.parent).items() if not name.startswith("kb/")}


# ------------------------------------------------------------------------------ the kb API


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_kb_api_refuses_bad_names(kb_root: Path, name: str) -> None:
    before = outside(kb_root)
    with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
        validate_kb_name(name)
    for create in (False, True):
        with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
            KnowledgeBase(kb_root, name, create=create, embedding_model="none")
        with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
            KnowledgeBase.from_settings(Settings(kb_root=kb_root, embedding={"model": "none"}), name=name, create=create)
    assert outside(kb_root) == before and not any(kb_root.iterdir())


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_ordinary_names_are_still_fine(name: str) -> None:
    assert validate_kb_name(name) == name


# ------------------------------------------------------------------------------ ingest


INGEST_COMMANDS: dict[str, list[str]] = {
    "build": ["build", "{file}", "--embedding", "none"],
    "list": ["list"],
    "query": ["query", "桃园", "--mode", "bm25"],
    "remove": ["remove", "victim.txt"],
    "drop": ["drop"],
    "eval": ["eval", "{qa}"],
    "summarize": ["summarize", "victim.txt"],
}


@pytest.mark.parametrize("name", ["../victim", "/abs", "a\x00b", "CON", "x" * 65, ".hidden"])
@pytest.mark.parametrize("command", sorted(INGEST_COMMANDS))
def test_every_ingest_command_refuses_bad_names(
    kb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, name: str
) -> None:
    """One clean line and exit 2; the victim next to kb_root is neither read, built into nor dropped."""
    source = tmp_path / "new.txt"
    source.write_text(TEXT, encoding="utf-8")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"q": "谁结义", "evidence": "桃园结义"}, ensure_ascii=False) + "\n", encoding="utf-8")
    argv = [a.format(file=source, qa=qa) for a in INGEST_COMMANDS[command]]
    before = outside(kb_root)
    assert ingest_main([*argv, "--kb", name, "--kb-root", str(kb_root)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("ingest: error: invalid knowledge base name") and err.count("\n") == 1, err
    assert "刘备" not in out and outside(kb_root) == before and not any(kb_root.iterdir())


def test_a_bad_default_name_from_the_environment_is_refused(
    kb_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GLMKB_KB_NAME", "../victim")
    monkeypatch.setenv("GLMKB_KB_ROOT", str(kb_root))
    before = outside(kb_root)
    assert ingest_main(["drop", "--kb", os.environ["GLMKB_KB_NAME"]]) == 2
    assert ingest_main(["query", "桃园", "--mode", "bm25"]) == 2
    assert "invalid knowledge base name" in capsys.readouterr().err
    assert outside(kb_root) == before


# ------------------------------------------------------------------------------ the web UI


@contextlib.contextmanager
def ui(kb_root: Path, **ui_settings: Any) -> Iterator[str]:
    from tests.test_app import free_port

    settings = Settings(kb_root=kb_root, embedding={"model": "none"}, retrieval={"mode": "bm25"},
                        ui={"port": free_port(), **ui_settings})
    demo = build_ui(Services(settings))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{settings.ui.port}/"
    finally:
        demo.close()


def test_the_web_ui_refuses_bad_names_on_every_endpoint(kb_root: Path, tmp_path: Path) -> None:
    upload = tmp_path / "up.txt"
    upload.write_text(TEXT, encoding="utf-8")
    victim_doc = KnowledgeBase(kb_root.parent, "victim").list_documents()[0].doc_id
    before = outside(kb_root)
    with ui(kb_root) as url:
        c = Client(url, verbose=False, download_files=False)
        calls = {
            "/create_kb": lambda n: c.predict(n, api_name="/create_kb"),
            "/build": lambda n: c.predict(n, [handle_file(str(upload))], api_name="/build"),
            "/documents": lambda n: c.predict(n, api_name="/documents"),
            "/delete_document": lambda n: c.predict(n, victim_doc, api_name="/delete_document"),
            "/drop_kb": lambda n: c.predict(n, True, api_name="/drop_kb"),
            "/ask": lambda n: c.predict("谁结义？", n, "bm25", 3, api_name="/ask"),
            "/summarize": lambda n: c.predict(FROM_KB, n, victim_doc, None, "", api_name="/summarize"),
        }
        for name in ["../victim", "..", "/abs", "a/b", "a\x00b", "CON", "x" * 65]:
            for endpoint, call in calls.items():
                with pytest.raises(AppError, match="知识库名称无效|invalid knowledge base name"):
                    call(name)
    assert outside(kb_root) == before and not any(kb_root.iterdir())


def test_uploads_cannot_name_server_files_or_escape_the_upload_folder(kb_root: Path, tmp_path: Path) -> None:
    """A client sending a server path as a file (the summary tab and the build button take files)
    is refused by Gradio; an upload whose file name climbs folders lands in Gradio's cache only
    and is recorded under its bare name."""
    secret = kb_root.parent / "secret.txt"
    secret.write_text(SECRET, encoding="utf-8")
    victim_docstore = next((kb_root.parent / "victim").glob("v-*/docstore.sqlite"))
    with ui(kb_root, max_upload_mb=1) as url:
        c = Client(url, verbose=False, download_files=False)
        c.predict("mine", api_name="/create_kb")
        for path in (secret, victim_docstore, Path("/etc/hostname")):
            file_data = {"path": str(path), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.txt"}
            for endpoint, body in (
                ("summarize", [FROM_UPLOAD, None, None, file_data, ""]),
                ("build", ["mine", [file_data]]),
            ):
                result = raw_gradio_call(url, endpoint, body)
                assert "event: complete" not in result and SECRET not in result and "刘备" not in result
        # a hostile file name in a raw upload
        response = httpx.post(f"{url}gradio_api/upload", files={"files": ("../../../../escaped.txt", TEXT.encode())},
                              timeout=30)
        assert response.status_code == 200, response.text
        (stored,) = response.json()
        assert Path(stored).name == "escaped.txt" and not (kb_root.parent / "escaped.txt").exists()
        status = c.predict("mine", [{"path": stored, "meta": {"_type": "gradio.FileData"}}], api_name="/build")[0]
        assert "新增 1" in status
    docs = KnowledgeBase(kb_root, "mine").list_documents()
    assert [d.source for d in docs] == ["escaped.txt"]
    assert not list(kb_root.parent.rglob("escaped.txt"))


def raw_gradio_call(url: str, endpoint: str, data: list[Any]) -> str:
    """Gradio's two-step HTTP API without the client (which would upload local paths itself)."""
    event = httpx.post(f"{url}gradio_api/call/{endpoint}", json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{endpoint}/{event}", timeout=60).text


# ------------------------------------------------------------------------------ the HTTP API


def raw_post(base: str, path: str, body: dict[str, Any]) -> tuple[int, str]:
    """POST with the path sent exactly as given (httpx would normalise ``..`` away)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_the_http_api_refuses_bad_names(kb_root: Path) -> None:
    settings = Settings(kb_root=kb_root, embedding={"model": "none"}, retrieval={"mode": "bm25"})
    KnowledgeBase.from_settings(settings, name="mine", create=True).add_texts({"mine.txt": "曹操献刀。"})
    before = outside(kb_root)
    encoded = ["..", "%2e%2e", "%2E%2E", "..%2Fvictim", "%2e%2e%2fvictim", "..%5Cvictim", "%2Fetc", "a%00b", "%00",
               "x" * 65, "CON", ".hidden", "a%0Ab", "%E2%80%AEevil", "v%69ctim%2F..%2F..%2Fvictim"]
    with running(Services(settings)) as base:
        assert raw_post(base, "/v1/kb/mine/query", {"query": "曹操"})[0] == 200
        for name in encoded:
            for path in (f"/v1/kb/{name}/query", f"/v1/kb/{name}/chat/completions", f"/v1/kb/../{name}/query"):
                body = {"query": "桃园结义"} if path.endswith("query") else {"messages": [{"role": "user", "content": "谁"}]}
                status, text = raw_post(base, path, body)
                assert status in (400, 404, 503), (path, status, text)
                assert json.loads(text)["error"]["message"] and "刘备" not in text and "Traceback" not in text
    assert outside(kb_root) == before


def test_uploads_of_the_wrong_type_or_size_are_refused_on_both_tabs(kb_root: Path, tmp_path: Path) -> None:
    """tests/test_app.py checks the build button; the summary tab takes uploads too (any type a
    knowledge base reads), and on both a file whose name says .txt but whose bytes are a PDF or a
    ZIP is refused by its content."""
    pdf = tmp_path / "novel.pdf"
    pdf.write_bytes(b"%PDF-1.4 not really")
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ")
    disguised = {name: tmp_path / name for name in ("novel_pdf.txt", "book_docx.md")}
    disguised["novel_pdf.txt"].write_bytes(b"%PDF-1.7\n" + b"\x00" * 100)
    disguised["book_docx.md"].write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    big = tmp_path / "big.txt"
    big.write_text("话" * (1024 * 1024 // 3 + 10), encoding="utf-8")  # just over 1 MB
    with ui(kb_root, max_upload_mb=1) as url:
        c = Client(url, verbose=False, download_files=False)
        c.predict("mine", api_name="/create_kb")
        with pytest.raises(AppError, match=r"file type not allowed: tool\.exe"):
            c.predict(FROM_UPLOAD, None, None, handle_file(str(exe)), "", api_name="/summarize")
        with pytest.raises(AppError, match=r"novel\.pdf.*damaged"):
            c.predict(FROM_UPLOAD, None, None, handle_file(str(pdf)), "", api_name="/summarize")
        with pytest.raises((AppError, ValueError), match="maximum file size|file too large"):
            c.predict(FROM_UPLOAD, None, None, handle_file(str(big)), "", api_name="/summarize")
        # Both tabs take PDFs, DOCX, EPUB... by content, so the name must match the bytes.
        for path, kind, short in ((disguised["novel_pdf.txt"], "a PDF", "pdf"), (disguised["book_docx.md"], "a ZIP archive", "zip")):
            refused = rf"({kind}.*not a text file|is {short}.*not what its name says|damaged ZIP)"
            with pytest.raises(AppError, match=refused):
                c.predict("mine", [handle_file(str(path))], api_name="/build")
            with pytest.raises(AppError, match=refused):
                c.predict(FROM_UPLOAD, None, None, handle_file(str(path)), "", api_name="/summarize")
    # "mine" is written at creation (issue 18 #7) but nothing was built into it
    assert KnowledgeBase.list_names(kb_root) == ["mine"]
    assert KnowledgeBase(kb_root, "mine").list_documents() == []


# ------------------------------------------------------------------------------ look-alike names (glmkb #20.16)

NFC, NFD = "caf\u00e9", "cafe\u0301"  # "café" typed two ways


def test_a_name_typed_in_nfc_or_nfd_is_one_knowledge_base(
    kb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (#20.16): "é" as one code point and as e + U+0301 were two knowledge bases
    that displayed identically. Every entry point (kb API, CLI, Services, HTTP API) is one."""
    KnowledgeBase(kb_root, NFD, create=True, embedding_model="none").add_texts({"a.txt": TEXT})
    assert KnowledgeBase.list_names(kb_root) == [NFC] and KnowledgeBase(kb_root, NFC).list_documents()
    source = tmp_path / "b.txt"
    source.write_text("第二回 张翼德怒鞭督邮\n张飞鞭打督邮。\n", encoding="utf-8")
    assert ingest_main(["build", str(source), "--kb", NFD, "--kb-root", str(kb_root), "--embedding", "none", "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"{NFC}: files: 1 (1 added")
    assert ingest_main(["list", "--kb", NFC, "--kb-root", str(kb_root)]) == 0
    assert capsys.readouterr().out.count("\n") == 2 and KnowledgeBase.list_names(kb_root) == [NFC]
    settings = Settings(kb_root=kb_root, embedding={"model": "none"}, retrieval={"mode": "bm25"})
    services = Services(settings)
    assert services.kb(NFD).name == NFC and len(services.list_documents(NFD)) == 2
    with pytest.raises(UserError, match="already exists") as exists:
        services.create_kb(NFD)
    assert exists.value.zh == f"知识库 {NFC} 已存在"
    with running(services) as base:
        status, text = raw_post(base, "/v1/kb/cafe%CC%81/query", {"query": "张飞"})
    assert status == 200 and "督邮" in text


@pytest.mark.parametrize("lookalike", ["SANGUO1", "Sanguo1", "ｓａｎｇｕｏ１", "ＳＡＮＧＵＯ1", "sanguo¹"])
def test_a_new_name_that_looks_like_an_existing_one_is_refused(
    kb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], lookalike: str
) -> None:
    """Regression (#20.16): full-width, case or compatibility variants of an existing name made
    a second knowledge base that displayed (nearly) identically. Refused with one line naming
    the existing one, from the kb API, the CLI and Services (web UI and API); nothing is written."""
    KnowledgeBase(kb_root, "sanguo1", create=True, embedding_model="none").add_texts({"a.txt": TEXT})
    expected = f"knowledge base name {lookalike!r} looks the same as the existing knowledge base 'sanguo1'"
    with pytest.raises(KnowledgeBaseError, match=re.escape(expected)):
        KnowledgeBase(kb_root, lookalike, create=True, embedding_model="none").add_texts({"b.txt": TEXT})
    source = tmp_path / "b.txt"
    source.write_text(TEXT, encoding="utf-8")
    assert ingest_main(["build", str(source), "--kb", lookalike, "--kb-root", str(kb_root), "--embedding", "none", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ingest: error: {expected}") and err.count("\n") == 1, err
    services = Services(Settings(kb_root=kb_root, embedding={"model": "none"}))
    with pytest.raises(UserError, match=re.escape(expected)) as refused:
        services.create_kb(lookalike)
    assert refused.value.zh.startswith(f"知识库名称 {lookalike} 与已有的 sanguo1 看起来相同")
    assert KnowledgeBase.list_names(kb_root) == ["sanguo1"] and sorted(p.name for p in kb_root.iterdir()) == [".locks", "sanguo1"]


def test_invisible_characters_are_named_in_the_refusal() -> None:
    with pytest.raises(KnowledgeBaseError, match=r"invisible or control character \(U\+200D\)"):
        validate_kb_name("sanguo\u200d")
    with pytest.raises(KnowledgeBaseError, match=r"invisible or control character \(U\+2067\)"):
        validate_kb_name("\u2067sanguo")


def test_a_knowledge_base_name_that_is_an_existing_file_says_so(
    kb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (#20.16): a name equal to a file in kb_root was reported as a damaged
    knowledge base ("CURRENT cannot be read (Not a directory)") and then as missing."""
    (kb_root / "notes").write_text("mine", encoding="utf-8")
    source = tmp_path / "a.txt"
    source.write_text(TEXT, encoding="utf-8")
    for argv in (["build", str(source), "--embedding", "none", "-q"], ["list"], ["query", "桃园"], ["drop"]):
        assert ingest_main([*argv, "--kb", "notes", "--kb-root", str(kb_root)]) == 2
        err = capsys.readouterr().err
        assert err == (f"ingest: error: {kb_root / 'notes'} is a file, not a knowledge base folder: choose another "
                       f"knowledge base name, or move the file out of {kb_root}\n"), (argv, err)
    assert (kb_root / "notes").read_text(encoding="utf-8") == "mine"
    with pytest.raises(KnowledgeBaseError, match="is a file, not a knowledge base folder"):
        Services(Settings(kb_root=kb_root, embedding={"model": "none"})).create_kb("notes")


def test_a_file_name_that_is_not_utf8_is_refused_by_name(
    kb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (#20.16): a GBK-named file failed with "'utf-8' codec can't encode characters
    in position 16-17: surrogates not allowed", naming neither the file nor the fix."""
    raw = "三国.txt".encode("gbk")
    path = os.fsdecode(bytes(tmp_path) + b"/" + raw)
    Path(path).write_text(TEXT, encoding="utf-8")
    assert ingest_main(["build", path, "--kb", "k", "--kb-root", str(kb_root), "--embedding", "none", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not UTF-8" in err and repr(raw)[2:-1] in err and "convmv" in err, err
    assert KnowledgeBase.list_names(kb_root) == []


def test_tabs_and_newlines_in_names_never_break_ingest_list(
    kb_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """#20.16: ``ingest list`` is one line per row, tab-separated, whatever the file names hold."""
    path = tmp_path / "a\tb\nc.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert ingest_main(["build", str(path), "--kb", "k", "--kb-root", str(kb_root), "--embedding", "none", "-q"]) == 0
    capsys.readouterr()
    assert ingest_main(["list", "--kb", "k", "--kb-root", str(kb_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and len(lines[0].split("\t")) == 6 and lines[0].startswith(f"{tmp_path}/a b c.txt\t")
