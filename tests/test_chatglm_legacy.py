"""Original ChatGLM2/3 checkpoints on the native GLM model: logits equal ChatGLM's own equations.

The reference below is written from ChatGLM's modeling equations (fused QKV with multi-query
groups or per-head interleaving, rotary on the first half of each head in (x[2i], x[2i+1])
pairs, RMSNorm, SwiGLU over chunk(2), causal attention, untied output layer) and reads the
ORIGINAL state dict; it shares no code with llm.chatglm_legacy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DynamicCache, GlmForCausalLM

from llm.chatglm_legacy import load_chatglm_legacy
from llm.loading import load_model_and_tokenizer
from tests.fixtures.chatglm_legacy import load_original_state

SEQUENCE_LENGTHS = (1, 2, 7, 33, 80)


# ----- the reference: ChatGLM2/3's forward pass, from its equations -----------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def chatglm_rotary(x: torch.Tensor, positions: torch.Tensor, *, rope_ratio: float, style: str) -> torch.Tensor:
    """ChatGLM's RotaryEmbedding(dim=head_dim/2) + apply_rotary_pos_emb; x: [batch, seq, heads, head_dim]."""
    head_dim = x.shape[-1]
    n_elem = head_dim // 2  # RotaryEmbedding(rotary_dim // 2)
    base = 10000.0 * (rope_ratio if style == "base" else 1.0)
    theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float32) / n_elem))
    pos = positions.to(torch.float32) / (rope_ratio if style == "positions" else 1.0)
    angles = torch.outer(pos, theta)  # [seq, n_elem / 2]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    rot_dim = n_elem  # rope_cache.shape[-2] * 2
    rotated, passed = x[..., :rot_dim], x[..., rot_dim:]
    pairs = rotated.reshape(*rotated.shape[:-1], rot_dim // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2)
    return torch.cat([out, passed], dim=-1)


def reference_forward(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    input_ids: torch.Tensor,
    cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    style: str = "base",
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Logits [batch, seq, vocab] and the per-layer (key, value) cache, as ChatGLM computes them."""
    eps = config["layernorm_epsilon"]
    heads, d = config["num_attention_heads"], config["kv_channels"]
    mqa = config["multi_query_attention"]
    groups = config["multi_query_group_num"] if mqa else heads
    rope_ratio = float(config.get("rope_ratio", 1))
    batch, seq = input_ids.shape
    past = 0 if not cache else cache[0][0].shape[1]
    positions = torch.arange(past, past + seq)
    x = state["transformer.embedding.word_embeddings.weight"][input_ids]
    new_cache = []
    for i in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = rms_norm(x, state[p + "input_layernorm.weight"], eps)
        mixed = h @ state[p + "self_attention.query_key_value.weight"].T
        if p + "self_attention.query_key_value.bias" in state:
            mixed = mixed + state[p + "self_attention.query_key_value.bias"]
        if mqa:
            q, k, v = mixed.split([heads * d, groups * d, groups * d], dim=-1)
            q = q.view(batch, seq, heads, d)
            k = k.view(batch, seq, groups, d)
            v = v.view(batch, seq, groups, d)
        else:
            q, k, v = mixed.view(batch, seq, heads, 3 * d).split(d, dim=-1)
        q = chatglm_rotary(q, positions, rope_ratio=rope_ratio, style=style)
        k = chatglm_rotary(k, positions, rope_ratio=rope_ratio, style=style)
        if cache:
            k = torch.cat([cache[i][0], k], dim=1)
            v = torch.cat([cache[i][1], v], dim=1)
        new_cache.append((k, v))
        # Each group serves heads // groups consecutive query heads (unsqueeze + expand).
        k = k.unsqueeze(3).expand(-1, -1, -1, heads // groups, -1).reshape(batch, k.shape[1], heads, d)
        v = v.unsqueeze(3).expand(-1, -1, -1, heads // groups, -1).reshape(batch, v.shape[1], heads, d)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / d**0.5
        total = k.shape[1]
        allowed = torch.arange(total)[None, :] <= (torch.arange(seq)[:, None] + past)
        scores = scores.masked_fill(~allowed, float("-inf"))
        context = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, seq, heads * d)
        x = x + context @ state[p + "self_attention.dense.weight"].T
        h = rms_norm(x, state[p + "post_attention_layernorm.weight"], eps)
        gate, up = (h @ state[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ state[p + "mlp.dense_4h_to_h.weight"].T
    x = rms_norm(x, state["transformer.encoder.final_layernorm.weight"], eps)
    return x @ state["transformer.output_layer.weight"].T, new_cache


# ----- helpers --------------------------------------------------------------------------


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def random_ids(config: dict[str, Any], length: int, *, seed: int, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["padded_vocab_size"], (batch, length), generator=gen)


@pytest.fixture(scope="module")
def chatglm3_loaded(chatglm3_legacy_path: Path) -> tuple[GlmForCausalLM, Any]:
    return load_chatglm_legacy(chatglm3_legacy_path, device="cpu", dtype="float32")


# ----- the key correctness tests ----------------------------------------------------------


def test_reference_cache_matches_full_recompute(chatglm3_legacy_path: Path) -> None:
    """The reference itself: incremental decoding equals recomputing the whole sequence."""
    state, config = load_original_state(chatglm3_legacy_path), read_config(chatglm3_legacy_path)
    ids = random_ids(config, 12, seed=3)
    full, _ = reference_forward(state, config, ids)
    logits, cache = reference_forward(state, config, ids[:, :8])
    steps = [logits]
    for t in range(8, 12):
        logits, cache = reference_forward(state, config, ids[:, t : t + 1], cache)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length", SEQUENCE_LENGTHS)
def test_native_logits_equal_chatglm_reference(
    chatglm3_legacy_path: Path, chatglm3_loaded: tuple[GlmForCausalLM, Any], length: int
) -> None:
    """Converted GlmForCausalLM == ChatGLM's equations on the original weights (MQA, qkv bias)."""
    model, _ = chatglm3_loaded
    state, config = load_original_state(chatglm3_legacy_path), read_config(chatglm3_legacy_path)
    ids = random_ids(config, length, seed=length, batch=2)
    expected, _ = reference_forward(state, config, ids)
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_native_kv_cache_equals_full_recompute(
    chatglm3_legacy_path: Path, chatglm3_loaded: tuple[GlmForCausalLM, Any]
) -> None:
    """Prefill + one-token steps with the native cache give the reference's full-sequence logits."""
    model, _ = chatglm3_loaded
    state, config = load_original_state(chatglm3_legacy_path), read_config(chatglm3_legacy_path)
    ids = random_ids(config, 20, seed=11)
    expected, _ = reference_forward(state, config, ids)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        steps = [model(input_ids=ids[:, :13], past_key_values=cache, use_cache=True).logits]
        for t in range(13, 20):
            steps.append(model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-4, rtol=1e-4)


def test_greedy_generation_follows_reference(
    chatglm3_legacy_path: Path, chatglm3_loaded: tuple[GlmForCausalLM, Any]
) -> None:
    """``generate`` (cache, positions) picks the tokens the reference's argmax picks."""
    model, _ = chatglm3_loaded
    state, config = load_original_state(chatglm3_legacy_path), read_config(chatglm3_legacy_path)
    ids = random_ids(config, 6, seed=5)
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    expected = ids
    for _ in range(8):
        logits, _ = reference_forward(state, config, expected)
        expected = torch.cat([expected, logits[:, -1:].argmax(-1)], dim=1)
    assert out.tolist() == expected.tolist()


def test_safetensors_shards_load_the_same_model(
    chatglm3_legacy_safetensors_path: Path, chatglm3_loaded: tuple[GlmForCausalLM, Any]
) -> None:
    """Safetensors shards + model.safetensors.index.json load to the same weights as .bin shards."""
    model, _ = load_chatglm_legacy(chatglm3_legacy_safetensors_path, device="cpu", dtype="float32")
    reference, _ = chatglm3_loaded
    other = reference.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, other[name]), name


def test_old_non_zip_bin_shards_still_load(make_chatglm_legacy: Callable[..., Path], tmp_path: Path) -> None:
    """Checkpoints saved in torch's pre-1.6 format cannot be memory-mapped; they load without mmap."""
    folder = make_chatglm_legacy(variant="chatglm3", seed=6)
    for shard in folder.glob("pytorch_model-*.bin"):
        state = torch.load(shard, weights_only=True)
        torch.save(state, shard, _use_new_zipfile_serialization=False)
    model, _ = load_chatglm_legacy(folder, device="cpu", dtype="float32")
    state, config = load_original_state(folder), read_config(folder)
    ids = random_ids(config, 9, seed=1)
    expected, _ = reference_forward(state, config, ids)
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_chatglm2_interleaved_qkv_without_multi_query(chatglm2_legacy_path: Path) -> None:
    """multi_query_attention false: the fused QKV is per head [q_h, k_h, v_h], not [Q | K | V]."""
    model, _ = load_chatglm_legacy(chatglm2_legacy_path, device="cpu", dtype="float32")
    state, config = load_original_state(chatglm2_legacy_path), read_config(chatglm2_legacy_path)
    assert not config["multi_query_attention"]
    assert model.config.num_key_value_heads == config["num_attention_heads"]
    ids = random_ids(config, 25, seed=2)
    expected, _ = reference_forward(state, config, ids)
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("variant", "style"), [("chatglm3", "base"), ("chatglm2", "positions")])
def test_rope_ratio(make_chatglm_legacy: Callable[..., Path], variant: str, style: str) -> None:
    """rope_ratio 50: base scaling in ChatGLM3(-32k)'s code, position interpolation in ChatGLM2-32k's."""
    folder = make_chatglm_legacy(variant=variant, rope_ratio=50, rope_style=style, seed=7)
    model, _ = load_chatglm_legacy(folder, device="cpu", dtype="float32")
    state, config = load_original_state(folder), read_config(folder)
    ids = random_ids(config, 60, seed=9)
    expected, _ = reference_forward(state, config, ids, style=style)
    wrong, _ = reference_forward(state, config, ids, style="positions" if style == "base" else "base")
    with torch.inference_mode():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - wrong).abs().max() > 1e-2  # the two readings of rope_ratio really differ


def test_load_through_shared_loader_and_dtype(chatglm3_legacy_path: Path) -> None:
    """llm.loading dispatches model_type chatglm here; dtype is applied to every weight."""
    model, tokenizer = load_model_and_tokenizer(chatglm3_legacy_path, device="cpu", dtype="bfloat16")
    assert isinstance(model, GlmForCausalLM)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert not model.training
    assert tokenizer.chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids["input_ids"]])).logits
    assert torch.isfinite(logits).all()


def test_generation_config_stops_like_the_original(chatglm3_loaded: tuple[GlmForCausalLM, Any]) -> None:
    """ChatGLM3's chat() stops on </s>, <|user|> and <|observation|>, and pads with the unk id 0."""
    model, tokenizer = chatglm3_loaded
    ids = tokenizer.convert_tokens_to_ids(["</s>", "<|user|>", "<|observation|>"])
    assert ids[0] == 2
    assert model.generation_config.eos_token_id == ids
    assert model.generation_config.pad_token_id == 0


def test_chatglm2_generation_config(chatglm2_legacy_path: Path) -> None:
    model, tokenizer = load_chatglm_legacy(chatglm2_legacy_path, device="cpu", dtype="float32")
    assert model.generation_config.eos_token_id == [2]
    assert "<|user|>" not in tokenizer.get_vocab()
