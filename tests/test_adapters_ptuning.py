"""P-tuning v2 checkpoints (THUDM's ptuning/ layout) on the native model == ChatGLM2's equations with the prefix.

The reference (tests/fixtures/chatglm_reference.py) is ChatGLM2's forward written from its
equations: get_prompt's per-layer key/value layout, un-rotated prefix entries before the prompt,
real tokens at positions 0.. . It reads the ORIGINAL weights and the checkpoint's prefix tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import llm.adapters.ptuning as ptuning
from llm.loading import load_model_and_tokenizer
from tests.fixtures.chatglm_legacy import load_original_state, write_ptuning_checkpoint
from tests.fixtures.chatglm_reference import ReferenceChatGLM, reference_model

PRE_SEQ_LEN = 8


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def random_ids(config: dict[str, Any], length: int, *, seed: int, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["padded_vocab_size"], (batch, length), generator=gen)


def checkpoint_state(base: Path, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Original base tensors plus the checkpoint's prefix tensors (read directly, not via glmkb)."""
    state = load_original_state(base)
    state.update(torch.load(checkpoint / "pytorch_model.bin", weights_only=True))
    return state


@pytest.fixture(scope="module", params=[False, True], ids=["embedding-only", "prefix-projection"])
def ptuned(
    request: pytest.FixtureRequest, chatglm2_mqa_legacy_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Any, ReferenceChatGLM, dict[str, Any]]:
    """(glmkb model with --adapter, tokenizer, reference, checkpoint config) for a ChatGLM2 P-tuning checkpoint."""
    folder = tmp_path_factory.mktemp("ptuning") / "checkpoint-3000"
    write_ptuning_checkpoint(folder, chatglm2_mqa_legacy_path, pre_seq_len=PRE_SEQ_LEN, projection=request.param)
    model, tokenizer = load_model_and_tokenizer(chatglm2_mqa_legacy_path, device="cpu", dtype="float32", adapter=folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    reference = reference_model(config, checkpoint_state(chatglm2_mqa_legacy_path, folder))
    return model, tokenizer, reference, config


def test_reference_prefix_matters(ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]]) -> None:
    """The reference really depends on the prefix (so matching it is not vacuous)."""
    _model, _tok, reference, config = ptuned
    ids = random_ids(config, 10, seed=1)
    plain = ReferenceChatGLM({**config, "pre_seq_len": None})
    plain.load_state_dict({k: v for k, v in reference.state_dict().items() if "prefix_encoder" not in k})
    with torch.inference_mode():
        assert rel_err(plain(ids), reference(ids)) > 1e-2


@pytest.mark.parametrize("length", [1, 13])
def test_prompt_logits_equal_reference(ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]], length: int) -> None:
    model, _tok, reference, config = ptuned
    ids = random_ids(config, length, seed=length, batch=2)
    with torch.inference_mode():
        got, want = model(input_ids=ids).logits, reference(ids)
    assert rel_err(got, want) < 1e-4


def test_streamed_continuation_equals_reference(ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]]) -> None:
    """generate (prefill + one-token steps on the cache holding the prefix): every step's logits match."""
    model, _tok, reference, config = ptuned
    ids = random_ids(config, 9, seed=7)
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        full = reference(out.sequences)
    steps = torch.stack(out.logits, dim=1)  # [1, 6, vocab]: logits that chose tokens 9..14
    assert rel_err(steps, full[:, 8:14]) < 1e-4
    assert out.sequences[0, 9:].tolist() == full[0, 8:14].argmax(-1).tolist()


def test_wrong_rotary_offset_fails(
    ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation check: numbering real tokens after the prefix (positions P..) must break the match."""
    model, _tok, reference, config = ptuned
    ids = random_ids(config, 12, seed=3)

    def shifted(seen: int, prefix: int, length: int, device: torch.device) -> torch.Tensor:
        return torch.arange(seen, seen + length, device=device).unsqueeze(0)

    monkeypatch.setattr(ptuning, "real_positions", shifted)
    with torch.inference_mode():
        got, want = model(input_ids=ids).logits, reference(ids)
        shifted_reference = reference(ids, position_offset=PRE_SEQ_LEN)
    assert rel_err(got, want) > 1e-2
    assert rel_err(got, shifted_reference) < 1e-4  # ... and it is exactly that error


def test_chat_stream_follows_reference_greedy(ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]]) -> None:
    """ChatGLM's streaming path (worker thread, cache, detokenizer) with a prefix picks the reference's tokens."""
    from llm.chatglm import ChatGLM

    model, tokenizer, reference, _config = ptuned
    llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0, max_new_tokens=6, fast_decode=False)
    prompt_ids = tokenizer(llm.render_prompt("你好"), add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = prompt_ids
    with torch.inference_mode():
        for _ in range(6):
            ids = torch.cat([ids, reference(ids)[:, -1:].argmax(-1)], dim=1)
    new = ids[0, prompt_ids.shape[1] :].tolist()
    eos = set(model.generation_config.eos_token_id)
    if any(t in eos for t in new):
        new = new[: next(i for i, t in enumerate(new) if t in eos)]
    expected = tokenizer.decode(new, skip_special_tokens=True).lstrip()
    assert "".join(llm.stream("你好")) == expected


def test_batched_generation_equals_one_by_one(ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]]) -> None:
    """Left-padded batches: the prefix is prepended to each row's mask, real positions ignore the padding."""
    from llm.chatglm import ChatGLM

    model, tokenizer, _reference, _config = ptuned
    llm = ChatGLM(model=model, tokenizer=tokenizer, temperature=0, max_new_tokens=5, fast_decode=False)
    prompts = ["你好", "曹操率领大军南下，孙权和刘备联合抗曹"]
    batched = [g[0].text for g in llm.generate(prompts).generations]
    assert batched == [llm.invoke(p) for p in prompts]


def test_fast_decode_takes_a_prefixed_model(ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]]) -> None:
    """The fast path holds the prefix in its static cache (tests/test_adapters_ptuning_fast_decode.py):
    attaching one no longer refuses it, and the hook leaves a claimed cache alone."""
    from transformers import DynamicCache

    from llm.fast_decode import cache_kwarg

    model = ptuned[0]
    assert getattr(model, "fast_decode_unsupported", None) is None
    assert "_can_compile_fullgraph" not in model.__dict__
    claimed = ptuning.claim_cache(DynamicCache(config=model.config))
    with torch.inference_mode():
        model(input_ids=random_ids(ptuned[3], 3, seed=2), **{cache_kwarg(model): claimed}, use_cache=True)
    assert claimed.get_seq_length() == 3  # the prompt only: no prefix written by the hook


def test_prefix_inside_full_checkpoint(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    """A full checkpoint holding transformer.prefix_encoder.* with pre_seq_len in config.json loads with its prefix."""
    folder = tmp_path / "full"
    shutil.copytree(chatglm2_mqa_legacy_path, folder)
    side = write_ptuning_checkpoint(tmp_path / "side", chatglm2_mqa_legacy_path, pre_seq_len=4, projection=True, seed=2)
    weights = torch.load(folder / "pytorch_model.bin", weights_only=True)
    weights.update(torch.load(side / "pytorch_model.bin", weights_only=True))
    torch.save(weights, folder / "pytorch_model.bin")
    shutil.copy(side / "config.json", folder / "config.json")
    model, _tok = load_model_and_tokenizer(folder, device="cpu", dtype="float32")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    reference = reference_model(config, checkpoint_state(chatglm2_mqa_legacy_path, side))
    ids = random_ids(config, 7, seed=5)
    with torch.inference_mode():
        assert rel_err(model(input_ids=ids).logits, reference(ids)) < 1e-4


def test_safetensors_checkpoint_loads_the_same(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    """Newer transformers save model.safetensors instead of pytorch_model.bin: same prefix."""
    bin_dir = write_ptuning_checkpoint(tmp_path / "bin", chatglm2_mqa_legacy_path, pre_seq_len=4, seed=3)
    st_dir = write_ptuning_checkpoint(tmp_path / "st", chatglm2_mqa_legacy_path, pre_seq_len=4, seed=3, fmt="safetensors")
    a, _ = load_model_and_tokenizer(chatglm2_mqa_legacy_path, device="cpu", dtype="float32", adapter=bin_dir)
    b, _ = load_model_and_tokenizer(chatglm2_mqa_legacy_path, device="cpu", dtype="float32", adapter=st_dir)
    assert torch.equal(a.prefix_encoder.embedding.weight, b.prefix_encoder.embedding.weight)


def test_prefix_cache_entries_follow_get_prompt(ptuned: tuple[Any, Any, ReferenceChatGLM, dict[str, Any]]) -> None:
    """The seam for a static cache: layer i's (key, value) [batch, groups, P, d] == get_prompt's pair, transposed."""
    model, _tok, reference, config = ptuned
    entries = ptuning.prefix_cache_entries(model, 2)
    with torch.inference_mode():
        prompt = reference.prompt(2)
    assert len(entries) == config["num_layers"] == len(prompt)
    for (key, value), (ref_key, ref_value) in zip(entries, prompt, strict=True):
        torch.testing.assert_close(key, ref_key.permute(1, 2, 0, 3), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(value, ref_value.permute(1, 2, 0, 3), rtol=1e-6, atol=1e-6)
