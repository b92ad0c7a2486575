"""INT8/INT4 weight-only models (``llm.quantization: int8|int4``): loading from native and
original ChatGLM folders, and the fast decode path (fused q/k/v over the int weights) giving
exactly what plain ``generate`` gives on the same quantized model.

On CPU the fast path runs uncaptured with ``FastDecodeOptions(on_cpu=True)`` (as in
tests/test_perf_fast_decode.py); the CUDA test checks that quantized models take it there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llm import ChatGLM
from llm.chatglm_legacy import load_chatglm_legacy
from llm.fast_decode import FUSED_QKV, FastDecodeOptions, fast_decode_state
from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear, quantize_model_
from llm.streaming import run_generate

QUESTION = "曹操是谁？"
ON_CPU = FastDecodeOptions(on_cpu=True)
GROUP = 32  # divides the tiny models' widths (64, 96, 128)
LAYER = {"int8": WeightOnlyInt8Linear, "int4": WeightOnlyInt4Linear}


def quantized_llm(folder: Path, kind: str, **fields: object) -> ChatGLM:
    """float32: the dequantizing forms, whose q/k/v fuse at any size (a CPU default of bfloat16
    takes torch's CPU kernels instead: tests/test_quantized_cpu.py)."""
    return ChatGLM.from_model_path(
        folder, device="cpu", dtype="float32", quantization=kind, quantization_group_size=GROUP, temperature=0.0,
        max_new_tokens=24, **fields,
    )


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_native_folder_loads_quantized(kind: str, tiny_glm_dir: Path) -> None:
    llm_ = quantized_llm(tiny_glm_dir, kind)
    attn = llm_.model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, LAYER[kind]) and isinstance(llm_.model.model.layers[1].mlp.down_proj, LAYER[kind])
    assert type(llm_.model.lm_head) is WeightOnlyInt8Linear  # INT8 in both kinds, never INT4
    assert llm_.model.config.glmkb_weight_only["kind"] == kind


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_original_chatglm_folder_quantizes_per_shard_like_after_loading(
    kind: str, make_chatglm_legacy: Callable[..., Path]
) -> None:
    """Quantizing each shard as it loads (two shards here) == loading in full, then quantizing."""
    folder = make_chatglm_legacy(variant="chatglm3", fmt="bin", shards=2)
    quantized, _ = load_chatglm_legacy(folder, device="cpu", dtype="float32", quantization=kind,
                                       quantization_group_size=GROUP)
    reference, _ = load_chatglm_legacy(folder, device="cpu", dtype="float32")
    quantize_model_(reference, kind, group_size=GROUP)
    assert isinstance(quantized.model.layers[0].self_attn.q_proj, LAYER[kind])
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.inference_mode():
        assert torch.equal(quantized(ids).logits, reference(ids).logits)


def test_original_chatglm_folder_refuses_bitsandbytes_with_the_alternative(
    make_chatglm_legacy: Callable[..., Path],
) -> None:
    from llm import ModelLoadError

    folder = make_chatglm_legacy(variant="chatglm3", fmt="bin", shards=1)
    with pytest.raises(ModelLoadError, match="use int8 or int4"):
        load_chatglm_legacy(folder, device="cpu", quantization="8bit")


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_fast_path_equals_generate_on_quantized_model(kind: str, tiny_glm_dir: Path) -> None:
    """Greedy, token for token: the decode step with fused quantized q/k/v == plain generate."""
    llm_ = quantized_llm(tiny_glm_dir, kind, fast_decode_options=ON_CPU)
    assert llm_.fast_decode_active
    kwargs = llm_._generate_kwargs([QUESTION, "刘备"], {"max_new_tokens": 16})
    eager = run_generate(llm_.model, dict(kwargs))
    fast = run_generate(llm_.model, dict(kwargs), fast_decode=ON_CPU)
    assert torch.equal(eager, fast)
    state = fast_decode_state(llm_.model)
    assert state.fused and FUSED_QKV not in state.off  # the int weights were fused, not skipped
    assert llm_.fast_decode_report[FUSED_QKV] is None
    assert isinstance(state.fused[0].projection, LAYER[kind])


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_streamed_equals_invoked_and_plain(kind: str, tiny_glm_dir: Path) -> None:
    fast = quantized_llm(tiny_glm_dir, kind, fast_decode_options=ON_CPU)
    plain = fast.model_copy(update={"fast_decode": False})
    streamed = "".join(fast.stream(QUESTION))
    assert streamed == fast.invoke(QUESTION) == plain.invoke(QUESTION)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_models_take_the_fast_path_on_cuda(kind: str, tiny_glm_dir: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cuda", dtype="float32", quantization=kind,
                                   quantization_group_size=GROUP, temperature=0.0, max_new_tokens=16)
    assert llm_.fast_decode_active
    text = llm_.invoke(QUESTION)
    report = llm_.fast_decode_report
    assert report["decode_graph"] is None and report[FUSED_QKV] is None, report
    assert fast_decode_state(llm_.model).graphs  # a decode graph was built and used
    plain = llm_.model_copy(update={"fast_decode": False})
    assert text == plain.invoke(QUESTION)


@pytest.mark.parametrize("folder_kind", ["native", "original"])
def test_int4_kernel_setting_reaches_every_int4_layer(
    folder_kind: str, tiny_glm_dir: Path, make_chatglm_legacy: Callable[..., Path]
) -> None:
    """``llm.int4_kernel`` travels from the settings through both loaders to each INT4 layer
    (which takes that form once it is on a device that runs it; on this CPU it never does: it
    takes ``llm.quantized_cpu``'s form or stays "dequant", whatever the setting)."""
    from configs.settings import LLMSettings

    folder = tiny_glm_dir if folder_kind == "native" else make_chatglm_legacy(variant="chatglm3", fmt="bin", shards=1)
    settings = LLMSettings(model_path=str(folder), device="cpu", quantization="int4", quantization_group_size=32,
                           int4_kernel="triton")
    llm_ = ChatGLM.from_settings(settings, max_new_tokens=4)
    layers = [m for m in llm_.model.modules() if isinstance(m, WeightOnlyInt4Linear)]
    assert layers and {m.int4_kernel for m in layers} == {"triton"}
    assert llm_.model.config.glmkb_weight_only["int4_kernel"] == "triton"
