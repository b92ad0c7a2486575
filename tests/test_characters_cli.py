"""``ingest characters`` and ``ingest ask --scope book`` on a small knowledge base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ingest.cli import main


@pytest.fixture
def novels_root(sanguo_path: Path, tmp_path: Path) -> Path:
    """A keyword-only KB ``novels`` holding chapters 1-6 of 三国演义."""
    from kb import KnowledgeBase, load_text

    text = load_text(sanguo_path)
    kb = KnowledgeBase(tmp_path / "kbs", "novels", create=True, embedding_model="none")
    kb.add_texts({"sanguo.txt": text[: text.index("第七回")]})
    kb.close()
    return tmp_path / "kbs"


def test_json_png_and_table(novels_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--kb", "novels", "--kb-root", str(novels_root)]
    assert main(["characters", *root, "--json", "-q"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [p["name"] for p in data["persons"][:12]]
    assert {"刘备", "关羽", "张飞", "曹操"} <= set(names), names
    assert set(data["relations"][0]) == {"a", "b", "weight", "chapters", "label", "evidence"}

    png = tmp_path / "graph.png"
    assert main(["characters", *root, "--png", str(png), "--top", "10", "--chapters", "1-3"]) == 0
    out, err = capsys.readouterr()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.splitlines()[0].startswith("刘备\t")


def test_png_without_a_cjk_font_numbers_nodes_and_says_so(
    novels_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import kb.characters.render as render

    monkeypatch.setattr(render, "FONT_CANDIDATES", ())
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    png = tmp_path / "g.png"
    assert main(["characters", "--kb", "novels", "--kb-root", str(novels_root), "--png", str(png), "-q"]) == 0
    err = capsys.readouterr().err
    assert "no CJK font found" in err and "1=刘备" in err and png.is_file()


def test_bad_alias_file_is_one_line(novels_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "a.yaml"
    bad.write_text("[1, 2]\n", encoding="utf-8")
    assert main(["characters", "--kb", "novels", "--kb-root", str(novels_root), "--aliases", str(bad)]) == 2
    assert "must map each canonical name" in capsys.readouterr().err


def test_ask_book_scope_with_the_tiny_model(
    novels_root: Path, tiny_glm_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLMKB_LLM__GENERATION__MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("GLMKB_LLM__GENERATION__TEMPERATURE", "0")
    monkeypatch.setenv("GLMKB_LLM__MAX_INPUT_TOKENS", "1200")
    monkeypatch.setenv("GLMKB_LLM__DEVICE", "cpu")
    code = main(
        ["ask", "玄德和谁结为兄弟？", "--kb", "novels", "--kb-root", str(novels_root), "--scope", "book",
         "--chapters", "第1-3回", "--max-chapters", "3", "--model-path", str(tiny_glm_dir)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "chapters selected: 3/3" in err and "chapters read: 3/3" in err
    assert out.rstrip().splitlines()[-1].startswith("[") and "sanguo.txt · 第" in out
    code = main(["ask", "玄德和谁结为兄弟？", "--kb", "novels", "--kb-root", str(novels_root), "-q",
                 "--model-path", str(tiny_glm_dir)])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and "[1] sanguo.txt · 第" in out
    assert main(["ask", "问题", "--kb", "novels", "--kb-root", str(novels_root), "--chapters", "1-2"]) == 2
    assert "need --scope book" in capsys.readouterr().err


def test_ask_bad_chapters_or_aliases_fail_before_the_model_loads(
    novels_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ``ingest ask --scope book`` parsed ``--chapters 第50-10回`` and read ``--aliases``
    only after loading the chat model (minutes for a 6B model) before saying they were wrong."""
    import ingest.cmd_summarize

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(ingest.cmd_summarize, "load_llm", no_model)
    book = ["ask", "问题", "--kb", "novels", "--kb-root", str(novels_root), "--scope", "book"]
    assert main([*book, "--chapters", "第50-10回"]) == 2
    assert "chapter range '第50-10回' is empty" in capsys.readouterr().err
    assert main([*book, "--aliases", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read alias file" in capsys.readouterr().err
    # a range the book does not have (第200回 of a 120-回 book) too, not after the load (sweep 34)
    assert main([*book, "--chapters", "第200回"]) == 2
    assert "no chapters 200-200" in capsys.readouterr().err


@pytest.fixture
def manual_root(tmp_path: Path) -> Path:
    """A keyword-only KB ``manual``: a company manual in chapters that names no person."""
    from kb import KnowledgeBase

    body = "员工应当遵守公司的考勤制度，每天上午九点前到岗。请假需提前在系统中提交申请，由部门经理审批。\n" * 8
    kb = KnowledgeBase(tmp_path / "kbs", "manual", create=True, embedding_model="none")
    kb.add_texts({"manual.txt": "".join(f"第{n}章 考勤\n{body}" for n in range(1, 4))})
    kb.close()
    return tmp_path / "kbs"


def test_chapters_outside_the_book_are_one_line(
    novels_root: Path, manual_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bug guarded: ``--chapters 第200-210回`` on a 6-chapter book printed an empty table with exit 0,
    read as "no persons"; now one line as ``ingest summarize`` says it."""
    assert main(["characters", "--kb", "novels", "--kb-root", str(novels_root), "--chapters", "第200-210回"]) == 2
    assert "no chapters 200-210 in this document; it has chapters 1-6" in capsys.readouterr().err
    assert main(["characters", "--kb", "manual", "--kb-root", str(manual_root), "--chapters", "2-3", "-q"]) == 0


def test_no_persons_says_so_and_draws_no_blank_png(
    manual_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bug guarded: a KB naming nobody (a company manual) printed nothing at all, and ``--png`` wrote a
    blank white image with "wrote graph.png"; now a clear line, no file, and ``--json`` stays valid."""
    root = ["--kb", "manual", "--kb-root", str(manual_root)]
    png = tmp_path / "graph.png"
    assert main(["characters", *root, "--png", str(png)]) == 0
    err = capsys.readouterr().err
    assert "no persons found" in err and "not written" in err and not png.exists()
    assert main(["characters", *root, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out) == {"persons": [], "relations": []}
