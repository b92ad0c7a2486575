"""``ingest summarize``: streams the summary to stdout, progress to stderr, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.cli import main


@pytest.fixture
def small_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the tiny model quick: short generations, prompts well inside its 4096 positions."""
    monkeypatch.setenv("GLMKB_LLM__GENERATION__MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("GLMKB_LLM__GENERATION__TEMPERATURE", "0")
    monkeypatch.setenv("GLMKB_LLM__MAX_INPUT_TOKENS", "1200")
    monkeypatch.setenv("GLMKB_LLM__DEVICE", "cpu")


def test_without_a_model_says_how_to_set_one(sanguo_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summarize", str(sanguo_path), "--chapters", "1-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "llm.model_path" in err and "GLMKB_LLM__MODEL_PATH" in err


def test_bad_chapter_range_fails_before_loading_a_model(sanguo_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summarize", str(sanguo_path), "--chapters", "10-1"]) == 2
    assert "chapter range" in capsys.readouterr().err


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summarize", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.txt" in err


def test_summarizes_file_chapters_with_the_tiny_model(
    sanguo_path: Path, tiny_glm_dir: Path, small_model_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["summarize", str(sanguo_path), "--chapters", "第1-2回", "--model-path", str(tiny_glm_dir)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.endswith("\n") and out.strip()
    assert "summarizing sanguo.txt, chapters 1-2 (2)" in err
    assert "summarizing chapters" in err  # the tqdm bar


def test_summarizes_a_knowledge_base_document(
    sanguo_path: Path, tiny_glm_dir: Path, small_model_env: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from kb import KnowledgeBase, load_text

    text = load_text(sanguo_path)
    third = text.index("第三回")
    kb = KnowledgeBase(tmp_path / "kbs", "novels", create=True, embedding_model="none")
    kb.add_texts({"sanguo.txt": text[:third]})
    code = main(
        ["summarize", "sanguo.txt", "--kb", "novels", "--kb-root", str(tmp_path / "kbs"), "--chapters", "2",
         "--model-path", str(tiny_glm_dir), "-q"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() and err == ""
    assert main(["summarize", "other.txt", "--kb", "novels", "--kb-root", str(tmp_path / "kbs")]) == 2
    assert "no document 'other.txt'" in capsys.readouterr().err


def test_token_max_below_one_fails_before_loading_a_model(
    sanguo_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: ``--token-max -5`` was accepted and failed only after the whole map stage (hours
    on a novel), and ``--token-max 0`` silently meant the default."""
    for bad in ("0", "-5"):
        assert main(["summarize", str(sanguo_path), "--token-max", bad, "--model-path", "/nonexistent"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"ingest: error: --token-max must be at least 1 (got {bad})"
