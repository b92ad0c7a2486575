"""The ``ingest`` CLI: build/list/query/eval/remove/drop, JSON output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def built(capsys: pytest.CaptureFixture[str], sanguo_excerpts: dict[str, Path]) -> str:
    code, out, err = run_cli(
        capsys, "build", str(sanguo_excerpts["a"]), str(sanguo_excerpts["b"]),
        "--kb", "cli", "--embedding", "none", "--chunk-size", "200", "--chunk-overlap", "40",
    )
    assert code == 0, err
    assert out.startswith("cli: files: 2 (2 added") and "chunks:" in out and out.count("\n") == 1
    assert "tokenizing" in err, "progress bars go to stderr"
    return "cli"


def test_build_twice_adds_nothing(capsys: pytest.CaptureFixture[str], built: str, sanguo_excerpts: dict[str, Path]) -> None:
    code, out, _ = run_cli(capsys, "build", str(sanguo_excerpts["a"]), "--kb", built, "-q")
    assert code == 0 and "0 added" in out and "1 unchanged" in out and "chunks: 0 added" in out


def test_list(capsys: pytest.CaptureFixture[str], built: str, tmp_path: Path) -> None:
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and out.startswith("cli\t2 documents")
    code, out, _ = run_cli(capsys, "list", "--json")
    assert json.loads(out)[0]["name"] == "cli" and json.loads(out)[0]["embedding"] == "none"
    code, out, _ = run_cli(capsys, "list", "--kb", built)
    assert code == 0 and "sanguo_a.txt" in out and "2 chapters" in out
    code, out, _ = run_cli(capsys, "list", "--kb", built, "--json")
    assert {Path(d["source"]).name for d in json.loads(out)} == {"sanguo_a.txt", "sanguo_b.txt"}
    code, out, _ = run_cli(capsys, "list", "--kb-root", str(tmp_path / "empty"))
    assert code == 0 and "no knowledge bases" in out


def test_query_json(capsys: pytest.CaptureFixture[str], built: str) -> None:
    code, out, _ = run_cli(capsys, "query", "吕布 赤兔马", "--kb", built, "-k", "3", "--mode", "bm25", "--json")
    hits = json.loads(out)
    assert code == 0 and len(hits) == 3 and out.count("\n") == 1
    assert set(hits[0]) == {"text", "source", "chapter", "chapter_title", "page", "page_end", "section", "start", "end", "score"}
    assert "赤兔" in hits[0]["text"] and hits[0]["chapter"] == 3
    assert "\\u" not in out, "ensure_ascii=False"
    code, out, _ = run_cli(capsys, "query", "吕布 赤兔马", "--kb", built, "-k", "2")
    assert code == 0 and out.startswith("[1] ") and "ch.3 " in out


def test_eval(capsys: pytest.CaptureFixture[str], built: str, tmp_path: Path) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"q": "刘关张三人在哪里结拜", "evidence": "于桃园中，备下乌牛白马祭礼等项"}, ensure_ascii=False) + "\n"
        + json.dumps({"q": "董卓送给吕布什么马", "evidence": "赤兔马亦董公所赠也", "source": "sanguo_b.txt"}, ensure_ascii=False),
        encoding="utf-8",
    )
    code, out, _ = run_cli(capsys, "eval", str(qa), "--kb", built, "--mode", "bm25", "--json")
    metrics = json.loads(out)
    assert code == 0 and metrics["questions"] == 2 and metrics["mode"] == "bm25"
    assert {"recall@1", "recall@3", "recall@5", "recall@10", "mrr"} <= set(metrics)
    code, out, _ = run_cli(capsys, "eval", str(qa), "--kb", built, "--mode", "bm25")
    assert code == 0 and "recall@5" in out and "MRR@10" in out



def test_hybrid_on_a_keyword_only_kb_says_it_ran_bm25(capsys: pytest.CaptureFixture[str], built: str) -> None:
    """Bug: ``--mode hybrid`` on a keyword-only knowledge base silently searched with bm25."""
    code, out, err = run_cli(capsys, "query", "吕布 赤兔马", "--kb", built, "-k", "2", "--mode", "hybrid", "--json")
    assert code == 0 and len(json.loads(out)) == 2  # stdout stays one JSON array
    assert "keyword-only" in err and "bm25" in err and f"ingest build --embedding MODEL --kb {built}" in err
    code, _, err = run_cli(capsys, "query", "吕布 赤兔马", "--kb", built, "-k", "2", "--mode", "bm25")
    assert code == 0 and "keyword-only" not in err


def test_eval_names_the_qa_sources_the_kb_lacks(capsys: pytest.CaptureFixture[str], built: str, tmp_path: Path) -> None:
    """Bug: a QA file whose ``source`` names another file failed as "evidence does not occur"."""
    rows = [
        {"q": "刘关张三人在哪里结拜", "evidence": "于桃园中，备下乌牛白马祭礼等项", "source": "sanguo.txt"},
        {"q": "董卓送给吕布什么马", "evidence": "赤兔马亦董公所赠也", "source": "sanguo.txt"},
        {"q": "吕布的马", "evidence": "赤兔马亦董公所赠也", "source": "sanguo_b.txt"},
    ]
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    code, _, err = run_cli(capsys, "eval", str(qa), "--kb", built, "--mode", "bm25")
    assert_one_line_error(code, err, "'sanguo.txt' (2 questions)", "sanguo_a.txt, sanguo_b.txt", '"source"')
    assert "does not occur" not in err

def test_remove_and_drop(capsys: pytest.CaptureFixture[str], built: str) -> None:
    code, out, _ = run_cli(capsys, "remove", "sanguo_a.txt", "--kb", built)
    assert code == 0 and "1 removed" in out
    code, out, err = run_cli(capsys, "remove", "sanguo_a.txt", "--kb", built)
    assert_one_line_error(code, err, "no document", "ingest list --kb cli")
    code, out, _ = run_cli(capsys, "drop", "--kb", built)
    assert code == 0 and "dropped" in out
    code, out, err = run_cli(capsys, "query", "x", "--kb", built)
    assert_one_line_error(code, err, "no knowledge base named 'cli'")


def test_file_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "pic.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    for path, needle in [(tmp_path / "missing.txt", "not found"), (empty, "empty"), (binary, "PNG")]:
        code, _, err = run_cli(capsys, "build", str(path), "--kb", "x", "--embedding", "none", "-q")
        assert_one_line_error(code, err, needle, str(path))
    assert not (tmp_path / "kb_root" / "x").exists(), "a failed build writes nothing"


def test_kb_errors(capsys: pytest.CaptureFixture[str], built: str, sanguo_excerpts: dict[str, Path]) -> None:
    code, _, err = run_cli(capsys, "query", "x", "--kb", "nope")
    assert_one_line_error(code, err, "no knowledge base named 'nope'", "existing: cli", "ingest build")
    code, _, err = run_cli(capsys, "list", "--kb", "nope")
    assert_one_line_error(code, err, "no knowledge base named 'nope'")
    code, _, err = run_cli(capsys, "build", str(sanguo_excerpts["a"]), "--kb", "../evil", "--embedding", "none")
    assert_one_line_error(code, err, "invalid knowledge base name")
    code, _, err = run_cli(capsys, "query", "x", "--kb", built, "--mode", "dense")
    assert_one_line_error(code, err, "keyword-only", "--mode bm25")
    code, _, err = run_cli(capsys, "build", str(sanguo_excerpts["c"]), "--kb", built, "--chunk-size", "300")
    assert_one_line_error(code, err, "chunk_size 200, not 300")
    code, _, err = run_cli(capsys, "build", str(sanguo_excerpts["c"]), "--kb", "y", "--chunk-size", "50", "--chunk-overlap", "60")
    assert_one_line_error(code, err, "chunk_overlap")
    code, _, err = run_cli(capsys, "eval", str(sanguo_excerpts["a"]), "--kb", built)
    assert_one_line_error(code, err, "not valid JSON")


def test_embedding_model_unavailable_offline(capsys: pytest.CaptureFixture[str], sanguo_excerpts: dict[str, Path]) -> None:
    code, _, err = run_cli(
        capsys, "build", str(sanguo_excerpts["a"]), "--kb", "d", "--embedding", "GanymedeNil/text2vec-large-chinese", "-q"
    )
    assert_one_line_error(code, err, "GanymedeNil/text2vec-large-chinese", "--embedding PATH", "--embedding none")


def test_dense_build_and_query_through_the_cli(
    capsys: pytest.CaptureFixture[str], tiny_embedding_path: Path, other_embedding_path: Path, sanguo_excerpts: dict[str, Path]
) -> None:
    code, out, err = run_cli(
        capsys, "build", str(sanguo_excerpts["b"]), "--kb", "dense", "--embedding", str(tiny_embedding_path),
        "--embedding-device", "cpu", "--chunk-size", "200", "--chunk-overlap", "40",
    )
    assert code == 0 and "embedding" in err, err
    code, out, _ = run_cli(capsys, "query", "吕布", "--kb", "dense", "--mode", "hybrid", "--json", "--embedding-device", "cpu")
    assert code == 0 and len(json.loads(out)) == 5
    code, _, err = run_cli(capsys, "query", "吕布", "--kb", "dense", "--embedding", str(other_embedding_path))
    assert_one_line_error(code, err, "was built with embedding model")


def test_errors_in_a_real_process_have_no_traceback(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-m", "ingest", "query", "问题", "--kb", "nope", "--kb-root", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 2 and child.stdout == ""
    assert_one_line_error(child.returncode, child.stderr, "no knowledge base named 'nope'")


def test_list_survives_a_damaged_kb(capsys: pytest.CaptureFixture[str], built: str, tmp_path: Path) -> None:
    root = tmp_path / "kb_root"
    (root / "broken").mkdir()
    (root / "broken" / "CURRENT").write_text("v-missing\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "broken\tdamaged:" in out and "cli\t2 documents" in out


def test_build_a_folder_adds_every_document_under_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``ingest build docs/`` used to fail with "docs is a folder; give the documents inside it":
    a folder is every document under it, hidden files and lock files left out, other types
    skipped with a note."""
    from tests.fixtures.documents import SourceChapter, write_docx

    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / ".git").mkdir()
    (docs / "a.txt").write_text("第一章 开始\n张三出发了。\n", encoding="utf-8")
    write_docx(docs / "sub" / "b.docx", [SourceChapter("第一章 报销", ["差旅费凭发票报销。"])])
    (docs / "sub" / "c.md").write_text("# 请假\n年假五天。\n", encoding="utf-8")
    (docs / ".git" / "config.txt").write_text("不读", encoding="utf-8")
    (docs / ".notes.txt").write_text("不读", encoding="utf-8")
    (docs / "~$b.docx").write_bytes(b"lock")
    (docs / "tool.exe").write_bytes(b"MZ")
    root = ["--kb", "folder", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none"]
    code, out, err = run_cli(capsys, "build", str(docs), *root, "-q")
    assert code == 0, err
    assert out.startswith("folder: files: 3 (3 added")
    assert "note: skipped 1 file of other types in the folders and archives given (tool.exe)" in err
    code, out, _ = run_cli(capsys, "list", "--kb", "folder", "--kb-root", str(tmp_path / "kbs"), "--json")
    assert code == 0
    assert sorted(Path(d["source"]).name for d in json.loads(out)) == ["a.txt", "b.docx", "c.md"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.exe").write_bytes(b"MZ")
    code, _, err = run_cli(capsys, "build", str(tmp_path / "empty"), *root)
    assert_one_line_error(code, err, "no documents in the folder", "found 1 files of other types")


def test_doctor_refuses_a_kb_name_outside_kb_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Regression: ``ingest doctor --kb /other/kb --repair`` (or ``--kb ..``, ``GLMKB_KB_NAME=..``)
    diagnosed and repaired, i.e. rewrote, a folder outside kb_root: doctor joined the name to
    kb_root without the name check every other command makes."""
    outside = tmp_path / "outside"
    (outside / "v-1").mkdir(parents=True)
    for name in (str(outside), "..", "../outside"):
        code, out, err = run_cli(capsys, "doctor", "--kb", name, "--repair", "-q")
        assert_one_line_error(code, err, "invalid knowledge base name")
        assert code == 2 and out == ""
    assert [p.name for p in outside.iterdir()] == ["v-1"], "nothing outside kb_root was touched"


def test_verbose_keeps_the_exit_code_of_the_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: ``-v`` re-raised user errors, so the traceback came with exit 1 instead of the
    error's own code (2 for a missing knowledge base): adding -v changed what a script saw."""
    code, _, err = run_cli(capsys, "query", "x", "--kb", "nope", "-v")
    assert code == 2 and "Traceback" in err and "KnowledgeBaseNotFound" in err
    assert err.rstrip().splitlines()[-1].startswith("ingest: error: no knowledge base named 'nope'")


def test_help_shows_no_rst_double_backquotes(capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: ``ingest query/eval/convert --help`` printed the module docstrings' RST
    ````code```` markup verbatim."""
    for command in ("query", "eval", "convert"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and "``" not in out, out
