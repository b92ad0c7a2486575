"""Corrupt, partial or unsupported original ChatGLM folders fail with a clear ModelLoadError naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from llm import ModelLoadError
from llm.chatglm_legacy import load_chatglm_legacy
from llm.loading import load_model_and_tokenizer

SHARD1 = "pytorch_model-00001-of-00002.bin"
SHARD2 = "pytorch_model-00002-of-00002.bin"


class NotATensor:
    """Stands in for arbitrary pickled objects in a weight file."""


@pytest.fixture
def broken(chatglm3_legacy_path: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny ChatGLM3 folder to damage."""
    return Path(shutil.copytree(chatglm3_legacy_path, tmp_path / "chatglm3"))


def edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is _DELETE:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")


_DELETE = object()


def load(folder: Path, **options: Any) -> Any:
    return load_chatglm_legacy(folder, device="cpu", dtype="float32", **options)


def test_missing_shard_named_in_index(broken: Path) -> None:
    (broken / SHARD2).unlink()
    with pytest.raises(ModelLoadError, match=f"{SHARD2}.*pytorch_model.bin.index.json.*missing"):
        load(broken)


def test_truncated_shard(broken: Path) -> None:
    (broken / SHARD1).write_bytes((broken / SHARD1).read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=f"{SHARD1} is not a readable PyTorch weight file"):
        load(broken)


def test_wrong_tensor_shape(broken: Path) -> None:
    state = torch.load(broken / SHARD2, weights_only=True)
    name = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"
    state[name] = state[name][:, :-1].clone()
    torch.save(state, broken / SHARD2)
    with pytest.raises(ModelLoadError, match=rf"{SHARD2}: tensor '{name}' has shape \(64, 95\).*\(64, 96\)"):
        load(broken)


def test_tensor_missing_from_shards(broken: Path) -> None:
    state = torch.load(broken / SHARD2, weights_only=True)
    del state["transformer.output_layer.weight"]
    torch.save(state, broken / SHARD2)
    with pytest.raises(ModelLoadError, match="missing from the weights.*transformer.output_layer.weight"):
        load(broken)


def test_unexpected_tensor(broken: Path) -> None:
    """Regression: P-tuning prefix weights must not be silently dropped."""
    state = torch.load(broken / SHARD2, weights_only=True)
    state["transformer.prefix_encoder.embedding.weight"] = torch.zeros(4, 8)
    torch.save(state, broken / SHARD2)
    match = f"{SHARD2} holds the P-tuning prefix tensor 'transformer.prefix_encoder.embedding.weight'.*no pre_seq_len"
    with pytest.raises(ModelLoadError, match=match):
        load(broken)


def test_pickled_objects_are_never_loaded(broken: Path) -> None:
    state = torch.load(broken / SHARD1, weights_only=True)
    state["extra"] = NotATensor()
    torch.save(state, broken / SHARD1)
    with pytest.raises(ModelLoadError, match=f"{SHARD1} holds more than plain tensors; refusing to unpickle"):
        load(broken)


def test_missing_tokenizer_model(broken: Path) -> None:
    (broken / "tokenizer.model").unlink()
    with pytest.raises(ModelLoadError, match="missing .*tokenizer.model"):
        load(broken)


def test_incomplete_tiktoken_tokenizer_file(broken: Path) -> None:
    """A tiktoken tokenizer.model (GLM-4's format) without the 256 single-byte tokens cannot encode text."""
    (broken / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"tokenizer.model lacks 253 of the 256 single-byte tokens.*byte 0x00"):
        load(broken)


def test_foreign_tokenizer_file(broken: Path) -> None:
    (broken / "tokenizer.model").write_bytes(b"\x00\xffnot a tokenizer at all")
    with pytest.raises(ModelLoadError, match="neither a sentencepiece model .* nor a tiktoken rank file"):
        load(broken)


def test_unknown_config_field(broken: Path) -> None:
    edit_config(broken, rotary_percent=0.25)
    with pytest.raises(ModelLoadError, match=r"config.json has field\(s\) rotary_percent"):
        load(broken)


def test_missing_required_config_field(broken: Path) -> None:
    edit_config(broken, ffn_hidden_size=_DELETE)
    with pytest.raises(ModelLoadError, match="config.json lacks ffn_hidden_size"):
        load(broken)


@pytest.mark.parametrize(
    ("field", "value", "meaning"),
    [
        ("rmsnorm", False, "LayerNorm instead of RMSNorm"),
        ("apply_residual_connection_post_layernorm", True, "after the layernorm"),
        ("add_bias_linear", True, "dense and MLP layers have biases"),
        ("post_layer_norm", False, "no final layernorm"),
        ("fp32_residual_connection", True, "float32"),
    ],
)
def test_config_values_the_native_model_cannot_express(broken: Path, field: str, value: Any, meaning: str) -> None:
    edit_config(broken, **{field: value})
    with pytest.raises(ModelLoadError, match=f"config.json: {field} = .*{meaning}"):
        load(broken)


def test_first_generation_chatglm_is_refused(broken: Path) -> None:
    edit_config(broken, position_encoding_2d=True, inner_hidden_size=16384, max_sequence_length=2048)
    with pytest.raises(ModelLoadError, match="first-generation ChatGLM-6B"):
        load(broken)


def test_heads_not_divisible_into_groups(broken: Path) -> None:
    edit_config(broken, multi_query_group_num=3)
    with pytest.raises(ModelLoadError, match="not a multiple of multi_query_group_num 3"):
        load(broken)


def test_quantization_points_to_convert(chatglm3_legacy_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="ingest convert"):
        load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", quantization="4bit")


def test_no_index_and_no_single_file(broken: Path) -> None:
    (broken / "pytorch_model.bin.index.json").unlink()
    with pytest.raises(ModelLoadError, match="no weight index.*found pytorch_model-00001-of-00002.bin"):
        load(broken)


def test_pre_seq_len_without_prefix_weights_loads_the_base(broken: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A base config.json with pre_seq_len (copied from a P-tuning run) but no prefix weights: the base, and a warning."""
    edit_config(broken, pre_seq_len=128)
    model, _ = load(broken)
    assert getattr(model, "prefix_encoder", None) is None
    assert "pre_seq_len 128 but the weights hold no transformer.prefix_encoder" in caplog.text
