"""The host work before a decode graph's prompt pass: the prompt's inputs staged on the host and
moved in one copy, the cache emptied in one multi-tensor zero, the eos ids copied only when they
change (run 36: the GPU idled ~3.6 ms before every stream's prompt pass on an H100)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache, GlmConfig, StaticCache

import llm.fast_decode as fd
import llm.fast_decode.prefill as prefill_module
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.fast_decode.prefill import PromptInputs, empty_cache, prompt_positions
from llm.fast_decode.prefix import prompt_mask
from llm.streaming import run_generate

QUESTION = "曹操是谁？"
BUCKETED = FastDecodeOptions(on_cpu=True, bucketed_prefill_on_cpu=True)


def test_one_copy_of_the_buffer_moves_every_input() -> None:
    """Every input of a prompt pass is a view of one buffer: copying the buffer (what the GPU's one
    asynchronous copy does) reproduces ids, positions, mask, keep and length exactly."""
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 9]])
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    staged = PromptInputs.allocate(batch=2, bucket=64, span=67, device=torch.device("cpu"))
    prefill_module._stage_prompt(staged, ids, attention, prefix=3)
    copy = PromptInputs.allocate(batch=2, bucket=64, span=67, device=torch.device("cpu"))
    copy.buffer.copy_(staged.buffer)
    for name in PromptInputs._fields[1:]:
        view = getattr(copy, name)
        assert view.untyped_storage().data_ptr() == copy.buffer.untyped_storage().data_ptr(), name
        assert torch.equal(view, getattr(staged, name)), name
    assert torch.equal(copy.ids[:, :5], ids) and not copy.ids[:, 5:].any()
    assert torch.equal(copy.attention[:, :5], attention) and not copy.attention[:, 5:].any()
    positions = prompt_positions(attention)
    assert torch.equal(copy.positions[:, :5], positions) and copy.positions[0].tolist()[:7] == [0, 0, 0, 1, 2, 3, 4]
    assert torch.equal(copy.positions[:, 5:], positions[:, -1:] + torch.arange(1, 60))
    assert torch.equal(copy.mask, prompt_mask(attention, prefix=3, rows=64, length=67))
    assert copy.keep.tolist() == [4] and int(copy.length) == 3 + 5


def static_cache(layers: int = 3) -> StaticCache:
    config = GlmConfig(num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                       head_dim=8, intermediate_size=64, vocab_size=64)
    cache = StaticCache(config=config, max_cache_len=16)
    for i in range(layers):
        cache.update(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), i)
    return cache


def test_empty_cache_is_transformers_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: ``cache.reset()`` zeroed each layer's keys, values and length in kernels of their
    own, 84 launches for a 28-layer model before every prompt pass while the GPU idled (~0.8 ms on
    the H100 machine), and one multi-tensor zero over mixed dtypes took PyTorch's per-tensor route
    (as slow). One multi-tensor zero per dtype leaves the cache as ``reset`` does."""
    cache, reference = static_cache(), static_cache()
    reference.reset()
    assert any(layer.keys.any() for layer in cache.layers)
    resets: list[Any] = []
    monkeypatch.setattr(type(cache.layers[0]), "reset", lambda layer: resets.append(layer))
    groups: list[set[torch.dtype]] = []
    zero = torch._foreach_zero_
    monkeypatch.setattr(torch, "_foreach_zero_", lambda ts: groups.append({t.dtype for t in ts}) or zero(ts))
    empty_cache(cache)
    assert resets == [] and sorted(map(len, groups)) == [1, 1] and len(groups) == 2
    for layer, ref in zip(cache.layers, reference.layers, strict=True):
        assert torch.equal(layer.keys, ref.keys) and torch.equal(layer.values, ref.values)
        assert int(layer.cumulative_length) == int(ref.cumulative_length) == 0


def test_other_caches_keep_their_own_reset() -> None:
    """A cache of other layer kinds is left as its own ``reset`` leaves it (transformers' versions differ)."""
    caches = [DynamicCache(), DynamicCache()]
    for cache in caches:
        cache.update(torch.ones(1, 2, 5, 8), torch.ones(1, 2, 5, 8), 0)
    empty_cache(caches[0])
    caches[1].reset()
    assert caches[0].get_seq_length() == caches[1].get_seq_length()
    left, right = caches[0].layers[0].keys, caches[1].layers[0].keys  # dropped (5.24) or zeroed (5.17)
    assert (left is None and right is None) or torch.equal(left, right)


def test_the_decode_graph_takes_the_prompt_from_the_host(fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode graph moves the prompt itself (with its prompt pass's inputs); only the paths through
    ``generate`` copy the request's tensors to the device first (``on_model_device``)."""
    moved: list[str] = []
    real = fd.on_model_device
    monkeypatch.setattr(fd, "on_model_device", lambda model, kwargs: moved.append("generate") or real(model, kwargs))
    generate_kwargs = fresh_llm._generate_kwargs([QUESTION], {"max_new_tokens": 6})
    eager = run_generate(fresh_llm.model, dict(generate_kwargs))
    fast = run_generate(fresh_llm.model, dict(generate_kwargs), fast_decode=BUCKETED)
    assert torch.equal(eager, fast) and moved == []
    (g,) = fd.fast_decode_state(fresh_llm.model).graphs.values()
    assert list(g.prefills) == [fd.MIN_PREFILL_BUCKET]


def test_eos_ids_are_copied_when_they_change(fresh_llm: ChatGLM) -> None:
    """The graph's eos buffer is copied (a synchronizing copy) only when a call's eos ids differ
    from the last call's, and then it stops on the new ones."""
    generate_kwargs = fresh_llm._generate_kwargs([QUESTION], {"max_new_tokens": 12})
    first = run_generate(fresh_llm.model, dict(generate_kwargs), fast_decode=BUCKETED)
    (g,) = fd.fast_decode_state(fresh_llm.model).graphs.values()
    listed = g.eos_ids
    assert torch.equal(g.eos, torch.tensor(listed))
    run_generate(fresh_llm.model, dict(generate_kwargs), fast_decode=BUCKETED)
    assert g.eos_ids == listed
    prompt = generate_kwargs["input_ids"].shape[1]
    stop_at = int(first[0, prompt + 2])  # the third new token becomes an eos id
    again = run_generate(fresh_llm.model, {**generate_kwargs, "eos_token_id": [stop_at]}, fast_decode=BUCKETED)
    assert g.eos_ids[0] == stop_at and torch.equal(g.eos, torch.tensor(g.eos_ids))
    new = again[0, prompt:].tolist()
    end = new.index(stop_at) + 1  # greedy: the same tokens up to the new eos id, then padding
    assert new[:end] == first[0, prompt : prompt + end].tolist() and len(set(new[end:])) <= 1
