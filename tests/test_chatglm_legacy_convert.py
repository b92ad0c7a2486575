"""``ingest convert`` output reloads with plain transformers; streaming chat on an original folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GlmForCausalLM

from ingest.cli import main as ingest_main
from llm import ChatGLM, ModelLoadError
from llm.chatglm_legacy import convert_checkpoint, load_chatglm_legacy

PROMPTS = [
    [{"role": "user", "content": "你好"}],
    [
        {"role": "system", "content": "你是一个熟读三国演义的助手。"},
        {"role": "user", "content": "桃园三结义是哪三人？"},
        {"role": "assistant", "content": "刘备、关羽、张飞。"},
        {"role": "user", "content": "  再说一遍\n谢谢"},
    ],
]


@pytest.fixture(scope="module")
def converted3(chatglm3_legacy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_checkpoint(
        chatglm3_legacy_path, tmp_path_factory.mktemp("converted") / "chatglm3-native", progress=False
    )


def test_convert_writes_a_native_folder(converted3: Path) -> None:
    names = sorted(p.name for p in converted3.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((converted3 / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "glm"
    assert config["architectures"] == ["GlmForCausalLM"]
    assert "auto_map" not in config
    assert (
        "[gMASK]sop" in json.loads((converted3 / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
    )
    generation = json.loads((converted3 / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"][0] == 2 and len(generation["eos_token_id"]) == 3
    index = json.loads((converted3 / "model.safetensors.index.json").read_text(encoding="utf-8"))
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


def test_converted_folder_reloads_with_plain_transformers(chatglm3_legacy_path: Path, converted3: Path) -> None:
    """AutoModelForCausalLM/AutoTokenizer, no remote code: same prompt ids and identical logits."""
    legacy_model, legacy_tokenizer = load_chatglm_legacy(chatglm3_legacy_path, device="cpu", dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(converted3, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(converted3)
    assert isinstance(model, GlmForCausalLM)
    assert model.generation_config.eos_token_id == legacy_model.generation_config.eos_token_id
    for messages in PROMPTS:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        legacy_ids = legacy_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        assert ids["input_ids"].tolist() == legacy_ids["input_ids"].tolist()
        with torch.inference_mode():
            assert torch.equal(model(**ids).logits, legacy_model(**legacy_ids).logits)
    text = "滚滚长江东逝水"
    assert tokenizer(text)["input_ids"] == legacy_tokenizer(text)["input_ids"]
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == 0


def test_convert_keeps_dtype_and_single_file_layout(make_chatglm_legacy: Callable[..., Path], tmp_path: Path) -> None:
    """A float16 single-file ``pytorch_model.bin`` becomes one float16 ``model.safetensors``."""
    source = make_chatglm_legacy(variant="chatglm2", shards=1, dtype=torch.float16, seed=4)
    out = convert_checkpoint(source, tmp_path / "native", progress=False)
    assert (out / "model.safetensors").is_file()
    assert not (out / "model.safetensors.index.json").exists()
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["dtype"] == "float16"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert "Round" in AutoTokenizer.from_pretrained(out).chat_template


def test_ingest_convert_cli(chatglm3_legacy_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-native"
    assert ingest_main(["convert", str(chatglm3_legacy_path), str(out), "--quiet"]) == 0
    assert (out / "model.safetensors.index.json").is_file()
    assert str(out) in capsys.readouterr().out
    # A second run must not overwrite the finished folder.
    assert ingest_main(["convert", str(chatglm3_legacy_path), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingest: error:") and "already exists" in err and len(err.strip().splitlines()) == 1


def test_ingest_convert_rejects_native_and_nested_folders(
    converted3: Path, chatglm3_legacy_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ingest_main(["convert", str(converted3), str(tmp_path / "again")]) == 2
    assert "not 'chatglm'" in capsys.readouterr().err
    assert ingest_main(["convert", str(chatglm3_legacy_path), str(chatglm3_legacy_path / "inside")]) == 2
    assert "outside the source folder" in capsys.readouterr().err


def test_failed_convert_leaves_nothing_behind(make_chatglm_legacy: Callable[..., Path], tmp_path: Path) -> None:
    """Regression: a shard that breaks mid-way must not leave a half-written model folder."""
    source = make_chatglm_legacy(variant="chatglm3", seed=5)
    second = source / "pytorch_model-00002-of-00002.bin"
    second.write_bytes(second.read_bytes()[:200])
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with pytest.raises(ModelLoadError, match="pytorch_model-00002-of-00002.bin"):
        convert_checkpoint(source, out_parent / "native", progress=False)
    assert list(out_parent.iterdir()) == []


# ----- chat through the shared ChatGLM LLM --------------------------------------------------


def test_streaming_chat_through_chatglm(chatglm3_legacy_path: Path, chatglm_sp_model: Path) -> None:
    """ChatGLM.from_model_path on an original folder: ChatGLM3 prompt ids reach generate; tokens stream."""
    import sentencepiece as spm

    llm = ChatGLM.from_model_path(chatglm3_legacy_path, device="cpu", dtype="float32", temperature=0.0)
    calls: list[dict[str, Any]] = []
    generate = llm.model.generate

    def recording_generate(**kwargs: Any) -> Any:
        out = generate(**kwargs)
        calls.append({"input_ids": kwargs["input_ids"], "eos": kwargs["eos_token_id"], "out": out})
        return out

    llm.model.generate = recording_generate
    try:
        chunks = list(llm.stream("曹操是谁？", system_prompt="你是助手", max_new_tokens=6, min_new_tokens=6))
    finally:
        del llm.model.generate
    sp = spm.SentencePieceProcessor(model_file=str(chatglm_sp_model))
    n = sp.vocab_size()
    system, user, assistant = n + 5, n + 6, n + 7
    expected = [n + 1, n + 3, system, *sp.encode("\n"), *sp.encode("你是助手"), user, *sp.encode("\n")]
    expected += [*sp.encode("曹操是谁？"), assistant]
    (call,) = calls
    assert call["input_ids"].tolist() == [expected]
    assert call["eos"] == [2, user, n + 8]
    new_ids = call["out"][0, len(expected) :].tolist()
    assert len(new_ids) == 6
    decoded = llm.tokenizer.decode(new_ids, skip_special_tokens=True)
    assert "".join(chunks).strip() == decoded.strip()
    assert len(chunks) >= 2  # pieces arrive as tokens are generated, not as one final string
