"""``llm.adapter`` reaches every model loader: settings -> factory, the servers' shared flags, ``ingest convert --adapter``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from configs import load_settings
from llm.loading import load_model_and_tokenizer
from tests.fixtures.chatglm_legacy import write_ptuning_checkpoint

peft = pytest.importorskip("peft")


def test_factory_loads_the_configured_adapter(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    from llm.factory import load_llm

    folder = write_ptuning_checkpoint(tmp_path / "checkpoint-3000", chatglm2_mqa_legacy_path, pre_seq_len=4)
    settings = load_settings(
        None, llm={"model_path": str(chatglm2_mqa_legacy_path), "device": "cpu", "adapter": str(folder)}
    )
    llm = load_llm(settings)
    assert llm.model.prefix_encoder.shape.pre_seq_len == 4
    assert llm.max_new_tokens == settings.llm.generation.max_new_tokens


def test_every_chatglm_constructor_applies_the_adapter(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    """Regression: ``ChatGLM.from_settings`` (used by ``glmkb bundle``'s check) ignored ``llm.adapter``
    and ``ChatGLMChat.from_model_path`` kept its own list of loading options without it; all now go
    through ``ChatGLM.from_model_path`` (issue 17)."""
    from llm import ChatGLM, ChatGLMChat

    folder = write_ptuning_checkpoint(tmp_path / "checkpoint-3000", chatglm2_mqa_legacy_path, pre_seq_len=4)
    settings = load_settings(
        None, llm={"model_path": str(chatglm2_mqa_legacy_path), "device": "cpu", "adapter": str(folder)}
    )
    assert ChatGLM.from_settings(settings.llm).model.prefix_encoder.shape.pre_seq_len == 4
    chat = ChatGLMChat.from_model_path(chatglm2_mqa_legacy_path, device="cpu", adapter=folder, max_tokens=3)
    assert chat.llm.model.prefix_encoder.shape.pre_seq_len == 4 and chat.max_tokens == 3


def test_server_flags_map_onto_settings() -> None:
    from unittest import mock

    from app.api.cli import command

    settings = command.settings_from_argv(["--adapter", "./output/checkpoint-3000", "--merge-adapter"])
    assert settings.llm.adapter == "./output/checkpoint-3000" and settings.llm.merge_adapter is True
    with mock.patch.dict("os.environ", {"GLMKB_LLM__MERGE_ADAPTER": "true"}):
        assert command.settings_from_argv([]).llm.merge_adapter is True  # unset: the environment/YAML decides


def test_convert_with_adapter_writes_a_merged_native_folder(chatglm3_legacy_path: Path, tmp_path: Path) -> None:
    from ingest.cli import main
    from tests.test_adapters_lora import make_original_lora

    adapter = tmp_path / "adapter"
    make_original_lora(chatglm3_legacy_path, adapter, targets=["query_key_value", "dense"])
    out = tmp_path / "merged"
    assert main(["convert", str(chatglm3_legacy_path), str(out), "--adapter", str(adapter)]) == 0
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["model_type"] == "glm"
    merged, _ = load_model_and_tokenizer(out, device="cpu", dtype="float32")
    expected, _ = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32", adapter=adapter)
    ids = torch.randint(0, merged.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        got, want = merged(input_ids=ids).logits, expected(input_ids=ids).logits
    assert float((got - want).norm() / want.norm()) < 1e-5


@pytest.mark.parametrize("fixture", ["tiny_glm_dir", "tiny_glm4_dir"], ids=["glm", "glm4"])
def test_native_models_train_reload_and_merge(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """GLM-4 -hf style folders: glmkb-finetune's native-layout LoRA and prefix reload exactly; convert --adapter merges."""
    from ingest.cli import main
    from llm.finetune.train import FinetuneConfig, run_finetune
    from tests.test_finetune_train import TOY

    base: Path = request.getfixturevalue(fixture)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"conversations": c}, ensure_ascii=False) for c in TOY), encoding="utf-8")
    ids = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(1))
    for method in ("lora", "ptuning"):
        cfg = FinetuneConfig(data=str(data), model_path=str(base), output=str(tmp_path / method), method=method,
                             device="cpu", dtype="float32", max_steps=2, lr=1e-2, pre_seq_len=4, progress=False)
        result = run_finetune(cfg)
        reloaded, _ = load_model_and_tokenizer(base, device="cpu", dtype="float32", adapter=result.checkpoint)
        with torch.inference_mode():
            torch.testing.assert_close(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits, rtol=0, atol=1e-5)
    out = tmp_path / "merged"
    assert main(["convert", str(base), str(out), "--adapter", str(tmp_path / "lora" / "checkpoint-2")]) == 0
    merged, _ = load_model_and_tokenizer(out, device="cpu", dtype="float32")
    adapted, _ = load_model_and_tokenizer(base, device="cpu", dtype="float32", adapter=tmp_path / "lora" / "checkpoint-2")
    with torch.inference_mode():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
