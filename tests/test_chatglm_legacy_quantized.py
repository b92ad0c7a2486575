"""Folders of ChatGLM's own INT4/INT8 weights (``quantization_bit``, e.g. THUDM/chatglm2-6b-int4) load
onto glmkb's weight-only layers and compute what ChatGLM's quantized model computes.

The folders are written by the fixture's copy of ChatGLM's ``quantize()`` (fp16 per-row scales,
int4 pairs compressed high nibble first); the reference is ChatGLM's equations
(``tests.test_chatglm_legacy.reference_forward``) on the signed integers times their scales, which
the fixture keeps before packing, so a wrong unpacking cannot cancel out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llm import ModelLoadError
from llm.chatglm_legacy import convert_checkpoint, load_chatglm_legacy
from llm.chatglm_legacy_quantized import group_size_for, unpack_chatglm_int4
from llm.loading import load_model_and_tokenizer
from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from tests.fixtures.chatglm_legacy import chatglm_dequantized_state, chatglm_quantize, original_state_dict
from tests.test_chatglm_legacy import random_ids, read_config, reference_forward

LAYER_CLASS = {4: WeightOnlyInt4Linear, 8: WeightOnlyInt8Linear}


@pytest.fixture(scope="module")
def quantized_folder(make_chatglm_legacy: Callable[..., Path]) -> Callable[[int], Path]:
    """``quantized_folder(bits)``: the tiny ChatGLM3 folder as ChatGLM's ``quantize(bits)`` saves it (one per bits)."""
    made: dict[int, Path] = {}

    def make(bits: int) -> Path:
        if bits not in made:
            made[bits] = make_chatglm_legacy(quantization_bit=bits, seed=3)
        return made[bits]

    return make


def reference_state(config: dict, *, seed: int) -> dict[str, torch.Tensor]:
    """What ChatGLM's quantized model computes with, and glmkb's INT8 output layer (per-row absmax / 127)."""
    state = chatglm_dequantized_state(original_state_dict(config, seed=seed), config["quantization_bit"])
    head = state["transformer.output_layer.weight"]
    scale = head.abs().amax(dim=1, keepdim=True) / 127
    state["transformer.output_layer.weight"] = torch.round(head / scale) * scale
    return state


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(
    ("variant", "options"),
    [("chatglm3", {}), ("chatglm2", {"multi_query": False, "shards": 1, "fmt": "safetensors"})],
    ids=["chatglm3-mqa-bin-shards", "chatglm2-interleaved-safetensors"],
)
def test_logits_equal_chatglm_quantized_model(
    make_chatglm_legacy: Callable[..., Path], bits: int, variant: str, options: dict
) -> None:
    """Every linear layer is glmkb's INT4/INT8 layer holding the stored integers, the output layer INT8,
    and the logits are ChatGLM's quantized model's (float32: no rounding but the scales' fp16)."""
    folder = make_chatglm_legacy(variant=variant, quantization_bit=bits, seed=bits, **options)
    config = read_config(folder)
    model, tokenizer = load_chatglm_legacy(folder, device="cpu", dtype="float32")
    layers = [m for m in model.model.modules() if isinstance(m, LAYER_CLASS[bits])]
    assert len(layers) == 6 * config["num_layers"]  # q, k, v, o, gate_up, down
    assert isinstance(model.lm_head, WeightOnlyInt8Linear)
    assert not [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert model.config.glmkb_weight_only["kind"] == f"int{bits}"
    state = reference_state(config, seed=bits)
    ids = random_ids(config, 21, seed=bits, batch=2)
    style = "base" if variant == "chatglm3" else "positions"
    expected, _ = reference_forward(state, config, ids, style=style)
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert tokenizer.decode(tokenizer.encode("曹操")).endswith("曹操")


def test_int4_unpacking_covers_every_nibble_pair() -> None:
    """All 256 bytes of ChatGLM's compression (signed pairs -8..7, high nibble first) unpack to their pair."""
    values = torch.arange(-8, 8, dtype=torch.int16)
    pairs = torch.cartesian_prod(values, values)  # [256, 2]
    signed = pairs.reshape(1, -1).to(torch.int8)
    stored = ((pairs[:, 0] << 4) | (pairs[:, 1] & 0x0F)).to(torch.uint8).view(torch.int8).reshape(1, -1)
    assert torch.equal(unpack_chatglm_int4(stored), signed)


def test_fixture_compression_is_chatglm_layout() -> None:
    """The fixture's quantize() keeps ChatGLM's layout: byte j = (s[2j] << 4) | (s[2j+1] & 0xF), scale = absmax / 7."""
    w = torch.tensor([[0.7, -0.1, 0.35, -0.7]])
    stored, scale, signed = chatglm_quantize(w, 4)
    assert signed.tolist() == [[7, -1, 4, -7]] and scale.dtype == torch.float16
    assert [b & 0xFF for b in stored.flatten().tolist()] == [0x7F, 0x49]


def test_int8_layers_hold_the_stored_integers(quantized_folder: Callable[[int], Path]) -> None:
    """INT8 loads the checkpoint's integers unchanged (no requantization), scales as stored."""
    from llm.chatglm_legacy_weights import iter_shard

    folder = quantized_folder(8)
    stored = dict(item for file in sorted(folder.glob("*.bin")) for item in iter_shard(file))
    model, _ = load_chatglm_legacy(folder, device="cpu", dtype="float32")
    down = model.model.layers[1].mlp.down_proj
    assert torch.equal(down.weight, stored["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"])
    assert torch.equal(down.scales, stored["transformer.encoder.layers.1.mlp.dense_4h_to_h.weight_scale"].float())


def test_int4_groups_carry_the_row_scale(quantized_folder: Callable[[int], Path]) -> None:
    """Per-row INT4 as glmkb's grouped form: zero point 8 everywhere, every group the row's scale;
    the group is the configured one where it divides the inputs (64 | 64), else the largest that does (96)."""
    model, _ = load_chatglm_legacy(quantized_folder(4), device="cpu", dtype="float32", quantization_group_size=64)
    o_proj, down = model.model.layers[0].self_attn.o_proj, model.model.layers[0].mlp.down_proj
    assert (o_proj.group_size, down.group_size) == (64, 32)
    assert torch.all(down.zeros == 8) and torch.equal(down.scales, down.scales[:, :1].expand_as(down.scales))
    assert group_size_for(13696, 128) == 128 and group_size_for(4096, 96) == 256 and group_size_for(6, 128) == 6


def test_bfloat16_rounds_only_the_scales(quantized_folder: Callable[[int], Path]) -> None:
    """bf16 (a GPU's default dtype): the integers are kept and only the scales round, by < 2^-8 relative."""
    folder = quantized_folder(4)
    full, _ = load_chatglm_legacy(folder, device="cpu", dtype="float32")
    half, _ = load_chatglm_legacy(folder, device="cpu", dtype="bfloat16")
    a, b = full.model.layers[1].self_attn.q_proj.state_dict(), half.model.layers[1].self_attn.q_proj.state_dict()
    assert torch.equal(a["weight"], b["weight"]) and b["scales"].dtype == torch.bfloat16
    assert ((b["scales"].float() - a["scales"]) / a["scales"]).abs().max() < 2**-8


def test_quantization_setting_may_be_none_or_the_stored_kind(quantized_folder: Callable[[int], Path]) -> None:
    """llm.quantization none or int4 loads an INT4 folder; int8 cannot be had from int4 weights: one line."""
    folder = quantized_folder(4)
    model, _ = load_model_and_tokenizer(folder, device="cpu", quantization="int4")
    assert isinstance(model.model.layers[0].mlp.down_proj, WeightOnlyInt4Linear)
    refused = r"own INT4 weights.*llm.quantization int8 cannot be applied.*int4 or none"
    with pytest.raises(ModelLoadError, match=refused) as e:
        load_model_and_tokenizer(folder, device="cpu", quantization="int8")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("stored", "claimed", "message"),
    [
        (4, 3, r"quantization_bit 3 is not one ChatGLM's quantization code writes \(0, 4, 8\)"),
        (4, True, r"quantization_bit True is not one"),
        (4, 8, r"query_key_value.weight' has shape \(128, 32\), but config.json implies \(128, 64\)"),
        (8, 0, r"query_key_value.weight' holds integers, but config.json has no quantization_bit"),
    ],
)
def test_config_and_weights_that_disagree(
    quantized_folder: Callable[[int], Path], tmp_path: Path, stored: int, claimed: object, message: str
) -> None:
    """A quantization_bit the code never writes, or one that does not match the stored weights."""
    import shutil

    folder = Path(shutil.copytree(quantized_folder(stored), tmp_path / "model"))
    config = read_config(folder)
    config["quantization_bit"] = claimed
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=message):
        load_chatglm_legacy(folder, device="cpu", dtype="float32")


def test_float_weights_under_a_quantized_config(make_chatglm_legacy: Callable[..., Path], tmp_path: Path) -> None:
    """Regression guard: a full-precision folder whose config says quantization_bit 8 (shapes agree at 8
    bits only through dtype) is refused, not read as integers."""
    import shutil

    folder = Path(shutil.copytree(make_chatglm_legacy(seed=9), tmp_path / "model"))
    config = read_config(folder)
    config["quantization_bit"] = 8
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    state = torch.load(folder / "pytorch_model-00002-of-00002.bin", weights_only=True)
    for name in [n for n in state if n.endswith((".dense.weight", "dense_h_to_4h.weight", "dense_4h_to_h.weight",
                                                 "query_key_value.weight"))]:
        state[name + "_scale"] = torch.ones(state[name].shape[0], dtype=torch.float16)
    torch.save(state, folder / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(ModelLoadError, match=r"is float32, but config.json \(quantization_bit 8\) says it holds"):
        load_chatglm_legacy(folder, device="cpu", dtype="float32")


def test_convert_refuses_a_quantized_folder(quantized_folder: Callable[[int], Path], tmp_path: Path) -> None:
    """``ingest convert`` cannot write ChatGLM's integers into a native folder: it says to load the folder directly."""
    with pytest.raises(ModelLoadError, match=r"own INT4 weights.*loads this folder directly"):
        convert_checkpoint(quantized_folder(4), tmp_path / "native", progress=False)
    assert not (tmp_path / "native").exists()


def test_streams_through_chatglm(quantized_folder: Callable[[int], Path]) -> None:
    """The LangChain face over a pre-quantized folder: streamed chunks join to the invoked answer."""
    from llm import ChatGLM

    llm_ = ChatGLM.from_model_path(quantized_folder(4), device="cpu", temperature=0.0, max_new_tokens=12)
    chunks = list(llm_.stream("曹操是谁？"))
    assert "".join(chunks) == llm_.invoke("曹操是谁？") and chunks


def test_ptuning_prefix_on_an_int4_folder(make_chatglm_legacy: Callable[..., Path], tmp_path: Path) -> None:
    """THUDM's P-tuning v2 also trains on the INT4 model (ptuning/ with --quantization_bit 4): such a
    checkpoint's prefix loads onto the pre-quantized base, and the logits are ChatGLM's with both."""
    from tests.fixtures.chatglm_legacy import write_ptuning_checkpoint
    from tests.fixtures.chatglm_reference import reference_model

    base = make_chatglm_legacy(variant="chatglm2", shards=1, multi_query=True, seed=4, quantization_bit=4)
    checkpoint = write_ptuning_checkpoint(tmp_path / "checkpoint-100", base, pre_seq_len=4)
    model, _ = load_model_and_tokenizer(base, device="cpu", dtype="float32", adapter=checkpoint)
    config = read_config(checkpoint)
    state = reference_state(config, seed=4)
    state.update(torch.load(checkpoint / "pytorch_model.bin", weights_only=True))
    ids = random_ids(config, 9, seed=2, batch=2)
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, reference_model(config, state)(ids), atol=1e-4,
                                   rtol=1e-4)


@pytest.mark.gpu
def test_int4_folder_on_the_fast_path_equals_generate(quantized_folder: Callable[[int], Path]) -> None:
    """On a CUDA GPU a pre-quantized INT4 folder takes tinygemm's form and the captured fast path."""
    from tests.helpers import assert_int4_model_on_the_fast_path_equals_generate

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    assert_int4_model_on_the_fast_path_equals_generate(quantized_folder(4), int4_kernel="tinygemm", group_size=32)
