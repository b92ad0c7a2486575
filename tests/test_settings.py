"""The settings loader: layer order, validation messages, shipped defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel
import yaml

from configs import Settings, SettingsError, load_settings
from configs.settings import DEFAULT_YAML


def test_default_yaml_matches_model_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/default.yaml documents the real defaults; the two must not drift apart."""
    monkeypatch.delenv("GLMKB_KB_ROOT")
    assert load_settings() == Settings()
    keys = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    assert set(keys) == set(Settings.model_fields)
    # Settings() reads default.yaml itself, so the line above cannot see a drift; each section's
    # model, built from its field defaults alone, can (llm.int4_kernel stayed "tinygemm" in the
    # YAML after the model's default became "auto", and every user got tinygemm).
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            assert section(**(keys[name] or {})) == section(), name


def test_layer_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "my.yaml"
    cfg.write_text("llm:\n  device: cpu\n  generation:\n    top_p: 0.5\nretrieval:\n  top_k: 7\n")
    s = load_settings(cfg)
    assert (s.llm.device, s.llm.generation.top_p, s.retrieval.top_k) == ("cpu", 0.5, 7)
    assert s.llm.generation.max_new_tokens == 1024  # untouched default survives the merge

    monkeypatch.setenv("GLMKB_CONFIG", str(cfg))
    monkeypatch.setenv("GLMKB_RETRIEVAL__TOP_K", "9")
    s = load_settings()
    assert s.retrieval.top_k == 9 and s.llm.device == "cpu"  # env beats YAML

    s = load_settings(retrieval={"top_k": 3, "mode": None}, llm={"device": "cuda:1"})
    assert (s.retrieval.top_k, s.retrieval.mode, s.llm.device) == (3, "hybrid", "cuda:1")


def test_env_list_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLMKB_UI__ALLOWED_TYPES", '[".txt"]')
    assert load_settings().ui.allowed_types == [".txt"]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"llm": {"quantization": "2bit"}}, "llm.quantization"),
        ({"llm": {"device": "gpu"}}, "cuda:N"),
        ({"retrieval": {"mode": "sparse"}}, "'dense', 'bm25' or 'hybrid'"),
        ({"chunking": {"chunk_size": 100, "chunk_overlap": 100}}, "chunking.chunk_overlap"),
        ({"llm": {"devcie": "cpu"}}, "llm.devcie: unknown setting"),
    ],
)
def test_bad_values_name_key_and_allowed(override: dict, needle: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(**override)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(bad)


def test_layers_are_pydantic_settings_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layers are pydantic-settings' own sources, so ``Settings()`` built directly (as
    libraries do) sees default.yaml and GLMKB_* too, and nested keys merge across layers."""
    monkeypatch.setenv("GLMKB_LLM__GENERATION__TOP_P", "0.3")
    s = Settings(llm={"device": "cpu"})
    assert (s.llm.device, s.llm.generation.top_p, s.llm.generation.max_new_tokens) == ("cpu", 0.3, 1024)


def test_misspelt_environment_variable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydantic-settings skips GLMKB_ names that match no field; a typo must still be one error."""
    monkeypatch.setenv("GLMKB_RETRIEVEL__TOP_K", "3")
    with pytest.raises(SettingsError, match="retrievel: unknown setting"):
        load_settings()


def test_unreadable_yaml_file_is_named(tmp_path: Path) -> None:
    """Regression: a config file saved as GBK (Windows editors) failed with only "'utf-8' codec
    can't decode byte ...", and ``--config FOLDER`` with "[Errno 21] Is a directory": neither
    said it was the config file."""
    gbk = tmp_path / "gbk.yaml"
    gbk.write_bytes("llm:\n  system_prompt: 你是三国专家\n".encode("gbk"))
    with pytest.raises(SettingsError, match="gbk.yaml is not UTF-8.*save it as UTF-8"):
        load_settings(gbk)
    with pytest.raises(SettingsError, match="cannot read config file .*GLMKB_CONFIG"):
        load_settings(tmp_path)
