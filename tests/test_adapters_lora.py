"""LoRA adapters on the original ChatGLM layout (peft on ``query_key_value``, as ChatGLM3's finetune_demo
trains them) loaded onto glmkb's native model: logits equal peft's own ``PeftModel`` forward on the
reference ChatGLM module, and merging changes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from llm.loading import load_model_and_tokenizer
from tests.fixtures.chatglm_legacy import load_original_state
from tests.fixtures.chatglm_reference import reference_model

peft = pytest.importorskip("peft")

TARGET_SETS = {
    "qkv": ["query_key_value"],
    "all-linear": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def make_original_lora(base: Path, out: Path, *, targets: list[str], seed: int = 0) -> Any:
    """A peft LoRA adapter trained (here: randomly initialised, B != 0) on the reference ChatGLM; returns the PeftModel."""
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    reference = reference_model(config, load_original_state(base))
    torch.manual_seed(seed)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
    model = peft.get_peft_model(reference, lora)
    with torch.no_grad():  # make the update large enough to matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(5.0)
    model.save_pretrained(out)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(TARGET_SETS))
def lora_pair(
    request: pytest.FixtureRequest, chatglm3_legacy_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model = make_original_lora(chatglm3_legacy_path, folder, targets=TARGET_SETS[request.param])
    config = json.loads((chatglm3_legacy_path / "config.json").read_text(encoding="utf-8"))
    return peft_model, folder, config


def ids_for(config: dict[str, Any], length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["padded_vocab_size"], (2, length), generator=gen)


def test_adapter_is_in_the_original_layout(lora_pair: tuple[Any, Path, dict[str, Any]]) -> None:
    """What peft wrote is what ChatGLM3's finetune_demo writes: query_key_value keys under base_model.model.transformer."""
    from safetensors.torch import load_file

    _peft, folder, _config = lora_pair
    keys = list(load_file(str(folder / "adapter_model.safetensors")))
    assert "base_model.model.transformer.encoder.layers.0.self_attention.query_key_value.lora_B.weight" in keys


def test_native_logits_equal_peft_forward(chatglm3_legacy_path: Path, lora_pair: tuple[Any, Path, dict[str, Any]]) -> None:
    peft_model, folder, config = lora_pair
    model, _tok = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32", adapter=folder)
    ids = ids_for(config, 11, seed=1)
    with torch.inference_mode():
        want = peft_model(ids)
        base = peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = base(ids)
        got = model(input_ids=ids).logits
    assert rel_err(want, plain) > 1e-2  # the adapter changes the output
    assert rel_err(got, want) < 1e-4
    assert "LoRA" in model.fast_decode_unsupported


def test_merged_equals_unmerged(chatglm3_legacy_path: Path, lora_pair: tuple[Any, Path, dict[str, Any]]) -> None:
    _peft, folder, config = lora_pair
    unmerged, _ = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32", adapter=folder)
    merged, _ = load_model_and_tokenizer(
        chatglm3_legacy_path, device="cpu", dtype="float32", adapter=folder, merge_adapter=True
    )
    assert type(merged).__name__ == "GlmForCausalLM"
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert getattr(merged, "fast_decode_unsupported", None) is None
    ids = ids_for(config, 9, seed=2)
    with torch.inference_mode():
        assert rel_err(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits) < 1e-5


@pytest.mark.parametrize("fixture", ["chatglm3_legacy_path", "chatglm2_legacy_path"], ids=["multi-query", "interleaved"])
def test_split_lora_equals_the_fused_weight_update(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Folding scale * B @ A into the ORIGINAL fused query_key_value and loading that folder == the split adapter.

    Covers ChatGLM2's per-head interleaved q/k/v (no multi-query attention), where B's rows must be
    cut like the weight's."""
    import shutil

    from safetensors.torch import save_file

    base: Path = request.getfixturevalue(fixture)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    gen = torch.Generator().manual_seed(3)
    rows = next(v.shape[0] for k, v in load_original_state(base).items() if k.endswith("0.self_attention.query_key_value.weight"))
    a, b = torch.randn(4, config["hidden_size"], generator=gen) * 0.3, torch.randn(rows, 4, generator=gen) * 0.3
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query_key_value"],
                    "layers_to_transform": None}), encoding="utf-8"
    )
    key = "base_model.model.transformer.encoder.layers.{}.self_attention.query_key_value.lora_{}.weight"
    save_file({key.format(i, p): t.clone() for i in range(config["num_layers"]) for p, t in (("A", a), ("B", b))},
              str(adapter / "adapter_model.safetensors"))
    folded = tmp_path / "folded"
    shutil.copytree(base, folded)
    for shard in folded.glob("pytorch_model*.bin"):
        state = torch.load(shard, weights_only=True)
        for name in state:
            if name.endswith("self_attention.query_key_value.weight"):
                state[name] = state[name] + 2.0 * (b @ a)  # scale = lora_alpha / r
        torch.save(state, shard)
    expected, _ = load_model_and_tokenizer(folded, device="cpu", dtype="float32")
    got, _ = load_model_and_tokenizer(base, device="cpu", dtype="float32", adapter=adapter)
    ids = ids_for(config, 8, seed=4)
    with torch.inference_mode():
        assert rel_err(got(input_ids=ids).logits, expected(input_ids=ids).logits) < 1e-5


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_lora_with_weight_only_quantization_is_merged_first(
    chatglm3_legacy_path: Path, lora_pair: tuple[Any, Path, dict[str, Any]], kind: str
) -> None:
    """Regression: llm.quantization int8/int4 with a LoRA adapter failed with peft's "Target module
    WeightOnlyInt8Linear is not supported". The adapter is now merged into the full-precision weights,
    which are then quantized: the same model as merging by hand and quantizing, on the fast path's layers."""
    from llm.quantization import quantize_model_

    _peft, folder, config = lora_pair
    got, _ = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32", adapter=folder,
                                      quantization=kind, quantization_group_size=32)
    want, _ = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="float32", adapter=folder,
                                       merge_adapter=True)
    quantize_model_(want, kind, group_size=32)
    assert not any("lora" in name for name, _ in got.named_parameters())
    assert getattr(got, "fast_decode_unsupported", None) is None
    assert got.config.glmkb_weight_only["kind"] == kind
    ids = ids_for(config, 9, seed=4)
    with torch.inference_mode():
        torch.testing.assert_close(got(input_ids=ids).logits, want(input_ids=ids).logits, atol=1e-6, rtol=1e-6)


def test_lora_on_a_prequantized_folder_is_one_line(
    make_chatglm_legacy: Any, lora_pair: tuple[Any, Path, dict[str, Any]]
) -> None:
    """ChatGLM's own INT4 weights have no full-precision weight to adapt: a one-line AdapterError, not peft's."""
    from llm.adapters import AdapterError

    _peft, folder, _config = lora_pair
    base = make_chatglm_legacy(quantization_bit=4, seed=3)
    with pytest.raises(AdapterError, match=r"targets model\.layers\.0\..*holds quantized.*llm.quantization int8 or int4") as e:
        load_model_and_tokenizer(base, device="cpu", dtype="float32", adapter=folder)
    assert "\n" not in str(e.value)
