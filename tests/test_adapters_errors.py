"""Bad adapters fail with one clear line (what is wrong, with which file, and the fix); the CLI exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm.adapters import AdapterError
from llm.loading import load_model_and_tokenizer
from tests.fixtures.chatglm_legacy import write_ptuning_checkpoint


def load(base: Path, adapter: Path) -> None:
    load_model_and_tokenizer(base, device="cpu", dtype="float32", adapter=adapter)


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def edit_json(file: Path, **changes: object) -> None:
    data = json.loads(file.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    file.write_text(json.dumps(data), encoding="utf-8")


def test_ptuning_for_another_base_by_config(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    folder = write_ptuning_checkpoint(tmp_path / "ckpt", chatglm2_mqa_legacy_path, pre_seq_len=4)
    edit_json(folder / "config.json", num_layers=28)
    with pytest.raises(AdapterError) as e:
        load(chatglm2_mqa_legacy_path, folder)
    assert "trained for another base model" in one_line(e) and "num_layers = 28" in str(e.value)


def test_ptuning_for_another_base_by_shape(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    """Regression guard: a prefix sized for another model must not be reshaped into this one."""
    folder = write_ptuning_checkpoint(tmp_path / "ckpt", chatglm2_mqa_legacy_path, pre_seq_len=4)
    edit_json(folder / "config.json", num_layers=None, multi_query_group_num=None, kv_channels=None, hidden_size=None)
    torch.save({"transformer.prefix_encoder.embedding.weight": torch.zeros(4, 3 * 2 * 2 * 16)}, folder / "pytorch_model.bin")
    with pytest.raises(AdapterError) as e:
        load(chatglm2_mqa_legacy_path, folder)
    assert "does not fit this base model" in one_line(e) and "(4, 192)" in str(e.value) and "(4, 128)" in str(e.value)


def test_ptuning_without_pre_seq_len(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    folder = write_ptuning_checkpoint(tmp_path / "ckpt", chatglm2_mqa_legacy_path, pre_seq_len=4)
    edit_json(folder / "config.json", pre_seq_len=None)
    with pytest.raises(AdapterError) as e:
        load(chatglm2_mqa_legacy_path, folder)
    assert "has no pre_seq_len" in one_line(e)


def test_lora_for_another_base(chatglm3_legacy_path: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["dense_4h_to_h"]}), encoding="utf-8"
    )
    key = "base_model.model.transformer.encoder.layers.0.mlp.dense_4h_to_h.lora_{}.weight"
    save_file({key.format("A"): torch.zeros(4, 200), key.format("B"): torch.zeros(64, 4)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError) as e:
        load(chatglm3_legacy_path, folder)
    assert "does not fit this base model" in one_line(e) and "(4, 200)" in str(e.value)


def test_not_an_adapter(chatglm3_legacy_path: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(AdapterError) as e:
        load(chatglm3_legacy_path, tmp_path)
    assert "not an adapter glmkb knows" in one_line(e)
    with pytest.raises(AdapterError, match="does not exist"):
        load(chatglm3_legacy_path, tmp_path / "missing")


def test_convert_refuses_to_merge_a_prefix(
    chatglm2_mqa_legacy_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest.cli import main

    folder = write_ptuning_checkpoint(tmp_path / "ckpt", chatglm2_mqa_legacy_path, pre_seq_len=4)
    code = main(["convert", str(chatglm2_mqa_legacy_path), str(tmp_path / "out"), "--adapter", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "cannot be merged into weights" in err
    assert not (tmp_path / "out").exists()
