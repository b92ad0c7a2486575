"""A P-tuning v2 prefix on the fast decode path (llm.fast_decode.prefix), on CPU (``on_cpu``).

The prefix sits in the static cache's slots [0, P), real tokens follow at P, P+1, ... with
rotary positions 0, 1, ...; left padding (between the prefix and a row's tokens) stays masked.
Checked differentially: the fast path's greedy tokens equal the eager path's (itself verified
against ChatGLM2's equations in test_adapters_ptuning.py), and its per-step logits equal the
reference (tests/fixtures/chatglm_reference.py) run on each row alone, for the eager and the
bucketed prompt pass. The mutation test shows a wrong rotary offset (positions counted from
slot P, i.e. from the cache slot instead of the row's real tokens) fails that comparison.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import llm.fast_decode as fd
import llm.fast_decode.decode_graph as decode_graph
import llm.fast_decode.prefill as prefill_module
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.loading import load_model_and_tokenizer
from llm.streaming import run_generate
from tests.fixtures.chatglm_legacy import load_original_state, write_ptuning_checkpoint
from tests.fixtures.chatglm_reference import ReferenceChatGLM, reference_model

PRE_SEQ_LEN = 8
NEW_TOKENS = 6
EAGER_PROMPT = FastDecodeOptions(on_cpu=True)
BUCKETED_PROMPT = FastDecodeOptions(on_cpu=True, bucketed_prefill_on_cpu=True)
PROMPTS = {"one": ["曹操是谁？"], "left-padded": ["曹操是谁？", "话说天下大势，分久必合，合久必分。"]}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.fixture(scope="module", params=[False, True], ids=["embedding-only", "prefix-projection"])
def ptuned(
    request: pytest.FixtureRequest, chatglm2_mqa_legacy_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ChatGLM, ReferenceChatGLM]:
    """(ChatGLM over the tiny ChatGLM2 model with a P-tuning checkpoint, the reference with that prefix)."""
    folder = tmp_path_factory.mktemp("ptuning-fast") / "checkpoint-3000"
    write_ptuning_checkpoint(folder, chatglm2_mqa_legacy_path, pre_seq_len=PRE_SEQ_LEN, projection=request.param)
    model, tokenizer = load_model_and_tokenizer(chatglm2_mqa_legacy_path, device="cpu", dtype="float32", adapter=folder)
    llm_ = ChatGLM(model=model, tokenizer=tokenizer, temperature=0.0, max_new_tokens=NEW_TOKENS)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    state = load_original_state(chatglm2_mqa_legacy_path)
    state.update(torch.load(folder / "pytorch_model.bin", weights_only=True))
    return llm_, reference_model(config, state)


def generate_kwargs(llm_: ChatGLM, prompts: list[str]) -> dict[str, Any]:
    return llm_._generate_kwargs(prompts, {"min_new_tokens": NEW_TOKENS, "max_new_tokens": NEW_TOKENS})


def fast_with_logits(llm_: ChatGLM, kwargs: dict[str, Any], options: FastDecodeOptions,
                     monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequences, per-step float logits ``(B, steps, V)``) of one call through the decode graph."""
    seen: list[torch.Tensor] = []
    choose = decode_graph.choose_tokens

    def recording(logits: torch.Tensor, g: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(logits.clone())
        return choose(logits, g, **kwargs)

    monkeypatch.setattr(decode_graph, "choose_tokens", recording)
    fd.fast_decode_state(llm_.model).graphs.clear()
    out = run_generate(llm_.model, dict(kwargs), fast_decode=options)
    monkeypatch.setattr(decode_graph, "choose_tokens", choose)
    assert fd.fast_decode_state(llm_.model).graphs, "the call must have taken the decode graph"
    return out, torch.stack(seen, dim=1)


def assert_rows_follow_reference(reference: ReferenceChatGLM, kwargs: dict[str, Any], out: torch.Tensor,
                                 logits: torch.Tensor, *, position_offset: int = 0) -> None:
    """Each row, without its left padding, run through the reference: same logits at every step."""
    prompt = kwargs["input_ids"].shape[1]
    for row, mask in enumerate(kwargs["attention_mask"]):
        real = out[row : row + 1, prompt - int(mask.sum()) :]
        with torch.inference_mode():
            want = reference(real, position_offset=position_offset)[:, -NEW_TOKENS - 1 : -1]
        assert rel_err(logits[row : row + 1, :NEW_TOKENS], want) < 1e-4


@pytest.mark.parametrize("options", [EAGER_PROMPT, BUCKETED_PROMPT], ids=["eager-prompt", "bucketed-prompt"])
@pytest.mark.parametrize("prompts", PROMPTS.values(), ids=PROMPTS.keys())
def test_fast_path_equals_eager_and_reference(
    ptuned: tuple[ChatGLM, ReferenceChatGLM], prompts: list[str], options: FastDecodeOptions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    llm_, reference = ptuned
    kwargs = generate_kwargs(llm_, prompts)
    eager = run_generate(llm_.model, dict(kwargs))
    fast, logits = fast_with_logits(llm_, kwargs, options, monkeypatch)
    assert torch.equal(eager, fast)
    (g,) = fd.fast_decode_state(llm_.model).graphs.values()
    assert g.prefix == PRE_SEQ_LEN and bool(g.prefills) == options.bucketed_prefill_on_cpu
    assert_rows_follow_reference(reference, kwargs, fast, logits)


@pytest.mark.parametrize("offset", [PRE_SEQ_LEN, -1])
def test_a_wrong_rotary_offset_fails(
    ptuned: tuple[ChatGLM, ReferenceChatGLM], offset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation check: real tokens numbered from their cache slot (offset P: ``pads`` without the
    prefix) or off by one must break the match with the reference, which the same shift restores."""
    llm_, reference = ptuned
    make_forward, positions = decode_graph.make_forward, prefill_module.prompt_positions

    def shifted_forward(model: Any, cache: Any) -> Any:
        forward = make_forward(model, cache)
        return lambda token, position_ids, mask: forward(token, position_ids + offset, mask)

    monkeypatch.setattr(decode_graph, "make_forward", shifted_forward)
    monkeypatch.setattr(prefill_module, "prompt_positions", lambda mask: positions(mask) + offset)
    kwargs = generate_kwargs(llm_, PROMPTS["left-padded"])
    out, logits = fast_with_logits(llm_, kwargs, EAGER_PROMPT, monkeypatch)
    with pytest.raises(AssertionError):
        assert_rows_follow_reference(reference, kwargs, out, logits)
    if offset > 0:
        assert_rows_follow_reference(reference, kwargs, out, logits, position_offset=offset)


def test_stream_on_the_fast_path_equals_eager(ptuned: tuple[ChatGLM, ReferenceChatGLM]) -> None:
    """ChatGLM.stream (worker thread, detokenizer) with the prefix: same text on both paths."""
    llm_, _reference = ptuned
    fast = llm_.model_copy(update={"fast_decode_options": BUCKETED_PROMPT})
    eager = llm_.model_copy(update={"fast_decode": False})
    fd.fast_decode_state(llm_.model).graphs.clear()
    assert fast.fast_decode_active
    text = "".join(fast.stream("你好", min_new_tokens=NEW_TOKENS))
    assert fd.fast_decode_state(llm_.model).graphs
    assert text == "".join(eager.stream("你好", min_new_tokens=NEW_TOKENS))


def test_concurrent_streams_batch_with_the_prefix(ptuned: tuple[ChatGLM, ReferenceChatGLM]) -> None:
    """llm.batching: three waiting requests run as one left-padded batch of four (a filler row)
    through the decode graph with the prefix, each row's text the same as its solo stream."""
    from tests.test_batching_fast_decode import check_batched_equals_solo

    llm_, _reference = ptuned
    fast = llm_.model_copy(update={"fast_decode_options": BUCKETED_PROMPT})
    fd.fast_decode_state(llm_.model).graphs.clear()
    check_batched_equals_solo(fast)
    assert all(g.prefix == PRE_SEQ_LEN for g in fd.fast_decode_state(llm_.model).graphs.values())


def test_fast_decode_report_names_no_prefix_reason_for_the_decode_graph(ptuned: tuple[ChatGLM, ReferenceChatGLM]) -> None:
    """Regression: a P-tuned model was refused by the whole fast path (~30 tok/s instead of ~240
    on a GPU). Now only the static-cache ``generate`` (calls with their own logits processors)
    stays eager for it, and says so."""
    llm_, _reference = ptuned
    fast = llm_.model_copy(update={"fast_decode_options": BUCKETED_PROMPT})
    assert fd.unsupported_reason(llm_.model, BUCKETED_PROMPT) is None
    assert getattr(llm_.model, "fast_decode_unsupported", None) is None
    report = fast.fast_decode_report
    assert "P-tuning" in report.pop(fd.STATIC_CACHE)
    assert report == dict.fromkeys(report), report


def test_calls_with_logits_processors_run_eagerly_with_the_prefix(ptuned: tuple[ChatGLM, ReferenceChatGLM]) -> None:
    """The static-cache generate path would number the cache from generate's own input, without
    the prefix; such calls keep the eager hook (their kwargs come back unchanged)."""
    llm_, _reference = ptuned
    kwargs = generate_kwargs(llm_, PROMPTS["one"])
    assert fd.with_fast_decode(llm_.model, kwargs) is kwargs


def test_from_model_path_applies_the_adapter(chatglm2_mqa_legacy_path: Path, tmp_path: Path) -> None:
    """Regression: ``ChatGLM.from_model_path(..., adapter=...)`` dropped ``adapter`` silently (an
    unknown pydantic field) and served the base model."""
    folder = write_ptuning_checkpoint(tmp_path / "checkpoint-3000", chatglm2_mqa_legacy_path, pre_seq_len=4)
    llm_ = ChatGLM.from_model_path(chatglm2_mqa_legacy_path, device="cpu", dtype="float32", adapter=folder)
    assert llm_.model.prefix_encoder.shape.pre_seq_len == 4


def prefixed_glm(folder: Path, *, device: str) -> ChatGLM:
    """The tiny native GLM with a random P-tuning prefix (with projection) attached, as ChatGLM."""
    from llm.adapters.ptuning import PrefixEncoder, PrefixShape, attach_prefix

    llm_ = ChatGLM.from_model_path(folder, device=device, dtype="float32", temperature=0.0, max_new_tokens=NEW_TOKENS)
    c = llm_.model.config
    shape = PrefixShape(pre_seq_len=PRE_SEQ_LEN, projection=True, num_layers=c.num_hidden_layers,
                        num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_size=c.hidden_size)
    torch.manual_seed(0)
    attach_prefix(llm_.model, PrefixEncoder(shape).to(llm_.model.device).eval().requires_grad_(False))
    return llm_


def check_prefixed_decode_graph(llm_: ChatGLM, options: FastDecodeOptions, *, tolerance: float) -> None:
    """Greedy output of the decode graph == eager (on CUDA: the first new tokens), one prompt and a
    left-padded batch, and every layer's keys/values in its static cache (prefix slots, then each
    row's tokens after its padding) == those the eager path computes for the row alone. A tiny
    random model's tokens hardly depend on attention (positions shifted by P in the decode steps
    leave them unchanged), but cached keys carry each token's rotary position and, from layer 1 on,
    what the masks let it attend to: that shift, or unmasked padding, fails here."""
    for prompts in PROMPTS.values():
        kwargs = generate_kwargs(llm_, prompts)
        eager = run_generate(llm_.model, dict(kwargs))
        fast = run_generate(llm_.model, dict(kwargs), fast_decode=options)
        if tolerance <= 1e-5:
            assert torch.equal(eager, fast)
        else:  # compiled kernels may round differently late in a random model's output
            assert torch.equal(eager[:, : -NEW_TOKENS + 2], fast[:, : -NEW_TOKENS + 2])
        (g,) = [g for key, g in fd.fast_decode_state(llm_.model).graphs.items() if key[0] == len(prompts)]
        assert_cache_matches_eager(llm_.model, g, kwargs["attention_mask"], fast, tolerance=tolerance)
    state = fd.fast_decode_state(llm_.model)
    assert len(state.graphs) == 2 and all(g.prefix == PRE_SEQ_LEN for g in state.graphs.values())
    assert "".join(llm_.stream("你好"))  # streams through the batch-1 graph built above
    assert len(state.graphs) == 2


def assert_cache_matches_eager(model: Any, g: Any, attention_mask: torch.Tensor, out: torch.Tensor, *,
                               tolerance: float) -> None:
    from transformers import DynamicCache

    prompt = attention_mask.shape[1]
    for row, mask in enumerate(attention_mask.tolist()):
        pad = prompt - sum(mask)
        fed = out[row : row + 1, pad:-1]  # the last new token is chosen, never fed
        eager = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=fed, **{fd.cache_kwarg(model): eager}, use_cache=True)
        for fast_layer, eager_layer in zip(g.cache.layers, eager.layers, strict=True):
            for fast_t, eager_t in ((fast_layer.keys, eager_layer.keys), (fast_layer.values, eager_layer.values)):
                cached = torch.cat([fast_t[row : row + 1, :, :PRE_SEQ_LEN],
                                    fast_t[row : row + 1, :, PRE_SEQ_LEN + pad : PRE_SEQ_LEN + pad + fed.shape[1]]], dim=2)
                assert rel_err(cached.float(), eager_t.float()) < tolerance


def test_native_glm_with_a_prefix_on_the_fast_path_matches_eager(tiny_glm_dir: Path) -> None:
    """The CUDA test's checks on CPU (on_cpu, bucketed prompt pass): a GLM-4-style native model too."""
    llm_ = prefixed_glm(tiny_glm_dir, device="cpu").model_copy(update={"fast_decode_options": BUCKETED_PROMPT})
    check_prefixed_decode_graph(llm_, BUCKETED_PROMPT, tolerance=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_captured_decode_graph_with_a_prefix_matches_eager_on_cuda(tiny_glm_dir: Path) -> None:
    """On CUDA: the compiled, captured decode graph and prompt passes hold the prefix; greedy output
    matches eager. (The tiny native GLM: no sentencepiece needed on the GPU machine.)"""
    llm_ = prefixed_glm(tiny_glm_dir, device="cuda")
    assert llm_.fast_decode_active
    check_prefixed_decode_graph(llm_, FastDecodeOptions(), tolerance=1e-3)
    report = llm_.fast_decode_report
    assert report[fd.DECODE_GRAPH] is None and report[fd.PREFILL_GRAPH] is None, report
    assert report[fd.PACKED_ATTENTION] is None and report[fd.FUSED_QKV] is None, report
    state = fd.fast_decode_state(llm_.model)
    assert all(g.graph is not None and g.prefills for g in state.graphs.values())
