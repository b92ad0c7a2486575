"""Fast decode path on CUDA: a reused static KV cache and one captured CUDA graph per token.

Plain ``generate`` with its growing ``DynamicCache`` launches hundreds of small kernels per
token from Python and waits for the GPU between steps, so a 6B model on one H100 runs at about a
tenth of the memory-bandwidth limit (measurements: docs/PERFORMANCE.md). Two faster paths:

- ``graph_generate`` (plain greedy or sampled calls, one prompt or a batch): the prompt runs
  into a ``StaticCache`` as one replay of a graph captured per prompt-length bucket; then each
  token is one replay of a CUDA graph holding the ``torch.compile``d one-token forward (with
  packed grouped-query attention and one q/k/v GEMV), the next-token choice and every buffer
  update, and the host reads tokens one step late while the next step already runs;
- ``with_fast_decode`` (calls with their own logits processors or stopping criteria):
  ``generate`` on a reused ``StaticCache``, which transformers compiles itself
  (``mode="reduce-overhead"``).

Both reuse one cache per model and shape key ``(batch, cache length)``, the length bucketed to a
power of two (at least ``MIN_CACHE_LENGTH``): CUDA graphs see stable addresses (a fresh cache per
call would make them re-record, and after 128 re-records torch silently stops using graphs) and
prompts of any length share a handful of compiled shapes. The first call of a shape compiles and
captures it (tens of seconds for a 6B model); if that fails, the path is turned off for that
model with one logged warning and the call runs on the next slower path.

Everything here runs on the model's worker thread (``llm.streaming.model_worker``), one
generation at a time, under ``torch.inference_mode``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from llm.per_model import PerModel

logger = logging.getLogger(__name__)

MIN_CACHE_LENGTH = 1024
MAX_CACHES_PER_MODEL = 4
WARMUP_NEW_TOKENS = 4  # prefill + 3 decode steps: compile, record the CUDA graph, replay it
# Per-call generate options that the fast path cannot honour (they bring their own cache or
# change the batch shape); a call using one of them runs eagerly.
EAGER_ONLY_OPTIONS = ("past_key_values", "cache_implementation", "assistant_model", "prompt_lookup_num_tokens")


def cache_length_bucket(length: int, *, minimum: int = MIN_CACHE_LENGTH, limit: int | None = None) -> int:
    """The static cache length for ``length`` tokens: the next power of two, at least ``minimum``.

    ``limit`` (the model's context length) caps the bucket, but never below ``length`` itself.
    """
    if length < 1:
        raise ValueError(f"cache length must be positive (got {length})")
    bucket = max(minimum, 1 << (length - 1).bit_length())
    if limit is not None and bucket > limit:
        bucket = max(limit, length)
    return bucket


def unsupported_reason(model: Any) -> str | None:
    """Why ``model`` cannot take the fast path (None = it can): device, quantization, class, offload."""
    device = getattr(model, "device", None)
    if device is None or torch.device(device).type != "cuda":
        return f"the model runs on {device}, not a CUDA GPU"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        return "the model is quantized (bitsandbytes kernels are not compiled)"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not support a compiled static cache"
    devices = set(getattr(model, "hf_device_map", {}).values())
    if len(devices) > 1:
        return "the model is spread over several devices or offloaded"
    return None


def call_supports_fast_decode(generate_kwargs: dict[str, Any]) -> bool:
    """Whether one call's generate options allow the fast path (no own cache, no beams)."""
    if any(generate_kwargs.get(name) is not None for name in EAGER_ONLY_OPTIONS):
        return False
    return int(generate_kwargs.get("num_beams") or 1) == 1 and int(generate_kwargs.get("num_return_sequences") or 1) == 1


@dataclass
class FastDecodeState:
    """Per-model fast-path state: caches by shape key, warm-up times, and whether it was given up."""

    caches: OrderedDict[tuple[int, int], Any] = field(default_factory=OrderedDict)
    warmups: dict[tuple[int, int], float] = field(default_factory=dict)
    disabled_reason: str | None = None


fast_decode_state: PerModel[FastDecodeState] = PerModel(FastDecodeState)
"""The fast-path state of one model object (created on first use)."""


def compile_config() -> Any:
    """The compile settings of the decode step (transformers' defaults: Inductor, CUDA graphs)."""
    from transformers import CompileConfig

    return CompileConfig(mode="reduce-overhead", fullgraph=False)


def shape_key(model: Any, generate_kwargs: dict[str, Any]) -> tuple[int, int]:
    """``(batch, bucketed cache length)`` of a call: prompt plus every token it may generate."""
    input_ids = generate_kwargs["input_ids"]
    max_new = int(generate_kwargs.get("max_new_tokens") or getattr(model.generation_config, "max_new_tokens", None) or 20)
    limit = getattr(model.config, "max_position_embeddings", None)
    return int(input_ids.shape[0]), cache_length_bucket(int(input_ids.shape[1]) + max_new, limit=limit)


def static_cache(model: Any, state: FastDecodeState, key: tuple[int, int]) -> Any:
    """The reusable cache of ``key``, emptied; the least recently used one beyond the limit is freed."""
    from transformers import StaticCache

    cache = state.caches.pop(key, None)
    if cache is None:
        cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=key[1])
    else:
        cache.reset()
    state.caches[key] = cache
    while len(state.caches) > MAX_CACHES_PER_MODEL:
        old_key, _ = state.caches.popitem(last=False)
        state.warmups.pop(old_key, None)
    return cache


def with_fast_decode(model: Any, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate_kwargs`` for the fast path (warming the shape up first), or unchanged if it is off.

    Call on the model's worker thread, right before ``model.generate``. A failed warm-up turns
    the fast path off for this model, with one warning, and the call runs eagerly.
    """
    state = fast_decode_state(model)
    if state.disabled_reason is not None or not call_supports_fast_decode(generate_kwargs):
        return generate_kwargs
    key = shape_key(model, generate_kwargs)
    if key not in state.warmups:
        try:
            state.warmups[key] = warm_up(model, state, key, generate_kwargs)
        except Exception as e:  # compile / CUDA graph failure: fall back once, for good
            state.disabled_reason = f"{type(e).__name__}: {e}"
            state.caches.clear()
            logger.warning(
                "fast decode (static cache + torch.compile) failed for %s, using plain generate from now on: %s",
                type(model).__name__,
                state.disabled_reason,
            )
            return generate_kwargs
    return {**generate_kwargs, "past_key_values": static_cache(model, state, key), "compile_config": compile_config()}


def warm_up(model: Any, state: FastDecodeState, key: tuple[int, int], generate_kwargs: dict[str, Any]) -> float:
    """Compile and record the decode step for ``key`` with a few greedy tokens; returns seconds."""
    input_ids = generate_kwargs["input_ids"][:, -8:]
    attention_mask = generate_kwargs.get("attention_mask")
    started = time.perf_counter()
    model.generate(
        input_ids=input_ids,
        attention_mask=None if attention_mask is None else attention_mask[:, -8:],
        past_key_values=static_cache(model, state, key),
        compile_config=compile_config(),
        max_new_tokens=WARMUP_NEW_TOKENS,
        min_new_tokens=WARMUP_NEW_TOKENS,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=generate_kwargs.get("eos_token_id"),
        pad_token_id=generate_kwargs.get("pad_token_id"),
    )
    if input_ids.device.type == "cuda":
        torch.cuda.synchronize(input_ids.device)
    seconds = time.perf_counter() - started
    logger.info("fast decode ready for batch %d, cache length %d (warm-up %.1f s)", key[0], key[1], seconds)
    return seconds


# ----- the decode loop: one CUDA graph per step -----------------------------------------------
#
# ``generate`` spends several milliseconds of Python per token (input preparation, masks,
# processors, criteria) and waits for the GPU at every step, so the GPU idles in between.
# ``graph_generate`` runs the prompt eagerly, then replays one captured CUDA graph per token
# (the compiled forward, the next-token choice and every state update on the GPU), and reads
# each token back one step late, while the next step already runs.

MAX_EOS_IDS = 8  # the graph's eos buffer; ids are repeated to fill it
GRAPH_OPTIONS = frozenset(
    {"input_ids", "attention_mask", "max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_p",
     "top_k", "repetition_penalty", "eos_token_id", "pad_token_id", "streamer", "stopping_criteria",
     "logits_processor"}
)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: the part of a call that shapes the decode graph."""

    do_sample: bool
    top_k: int | None
    penalty: bool


@dataclass
class DecodeGraph:
    """Static buffers of one shape key and the CUDA graph that advances them by one token."""

    cache: Any
    token: torch.Tensor  # (B, 1) the last chosen token, input of the next step
    cur: torch.Tensor  # (1,) cache position of the next token
    pads: torch.Tensor  # (B, 1) left padding of each row
    mask: torch.Tensor  # (B, 1, 1, L) positions each row may attend to
    eos: torch.Tensor  # (E,) eos ids
    allow_eos: torch.Tensor  # () False while min_new_tokens is not reached
    temperature: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor
    seen: torch.Tensor | None  # (B, V) tokens seen, for the repetition penalty
    forward: Any
    sampling: Sampling
    config: Any = None  # the model's config: decode_step switches its attention implementation
    fused: list[FusedQKV] = field(default_factory=list)  # fused q/k/v of the model's attention modules
    prefills: dict[int, Any] = field(default_factory=dict)  # PrefillGraph by prompt-length bucket
    graph: Any = None
    capture_s: float = 0.0


def graph_call_supported(kwargs: dict[str, Any], stopping_types: tuple[type, ...]) -> bool:
    """Whether ``generate`` keyword arguments are all ones the graph loop implements."""
    if set(kwargs) - GRAPH_OPTIONS or kwargs.get("logits_processor"):
        return False
    eos = kwargs.get("eos_token_id")
    if isinstance(eos, list) and len(eos) > MAX_EOS_IDS:
        return False
    criteria = kwargs.get("stopping_criteria") or []
    return all(isinstance(c, stopping_types) for c in criteria)


def resolve_sampling(model: Any, kwargs: dict[str, Any]) -> tuple[Sampling, dict[str, float]]:
    """The sampling settings of a call, with ``generation_config`` filling what the call leaves out."""
    config = model.generation_config

    def value(name: str, default: Any) -> Any:
        given = kwargs.get(name, None)
        if given is None:
            given = getattr(config, name, None)
        return default if given is None else given

    do_sample = bool(value("do_sample", False))
    top_k = int(value("top_k", 0)) if do_sample else 0
    penalty = float(value("repetition_penalty", 1.0))
    scalars = {"temperature": float(value("temperature", 1.0)) or 1.0, "top_p": float(value("top_p", 1.0)),
               "penalty": penalty}
    return Sampling(do_sample, top_k or None, penalty != 1.0), scalars


def choose_tokens(logits: torch.Tensor, g: DecodeGraph) -> torch.Tensor:
    """Next token per row from ``(B, V)`` float logits: penalty, eos suppression, then argmax or
    temperature / top-k / top-p sampling (the order of transformers' processors)."""
    if g.seen is not None:
        penalised = torch.where(logits > 0, logits / g.penalty, logits * g.penalty)
        logits = torch.where(g.seen, penalised, logits)
    eos_logits = logits.index_select(1, g.eos)
    logits = logits.index_copy(1, g.eos, torch.where(g.allow_eos, eos_logits, torch.full_like(eos_logits, -torch.inf)))
    if not g.sampling.do_sample:
        return logits.argmax(dim=-1)
    logits = logits / g.temperature
    if g.sampling.top_k:
        kth = torch.topk(logits, min(g.sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - g.top_p)
    remove[:, -1] = False  # keep at least the best token
    logits = logits.masked_fill(remove.scatter(1, order, remove), -torch.inf)
    probs = logits.softmax(dim=-1)
    # Exponential-race sampling (argmax of p / E, E ~ Exp(1)) needs no host sync, unlike multinomial.
    noise = torch.empty_like(probs).exponential_().clamp_(min=1e-10)
    return (probs / noise).argmax(dim=-1)


# ----- the decode step's forward: packed attention, one q/k/v GEMV ------------------------------
#
# Two costs of the model's own forward, measured per layer of a ChatGLM3-6B-shaped model on an
# H100 (``python -m bench.kernels``, docs/PERFORMANCE.md), that the decode step avoids:
#
# - Attention of one new token. ChatGLM3-6B has 32 query heads sharing 2 K/V heads; compiled,
#   transformers repeats K/V per query head and runs SDPA with a mask over the whole static cache.
#   Here the query heads of a token are packed onto their K/V head, ``(B, H, 1, D)`` ->
#   ``(B, KV, H/KV, D)``, and attention is two small batched matmuls around a masked float32
#   softmax, which Inductor compiles into a few kernels: K/V are read once, never copied.
# - q/k/v projections. Three GEMVs over the same input, two of them tiny (256 rows), cost nearly
#   twice one GEMV over the concatenated weights. ``fuse_qkv_weights`` lays the three weights out
#   as row blocks of one tensor, in place (same values, no extra memory); during the decode step the
#   attention module's q_proj computes all three at once and k_proj / v_proj hand on their parts.

DECODE_ATTENTION = "glmkb_packed_attention"
PACK_GQA = True  # bench.decode --ablate switches these off to measure what each gains
FUSE_QKV = True
_registered = threading.Lock()


def packed_gqa_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for one query token per row: then the query heads
    attend packed onto their K/V head, ``(B, KV, H/KV, D)`` against K/V as they are (same result)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    batch, heads, q_length, dim = query.shape
    packable = (
        q_length == 1
        and key.shape[1] * groups == heads
        and dropout == 0.0
        and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1))
        and all(kwargs.get(name) is None for name in ("position_bias", "softcap", "sliding_window", "s_aux"))
    )
    if not packable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = dim**-0.5 if scaling is None else scaling
    packed = query.reshape(batch, key.shape[1], groups, dim)
    scores = torch.matmul(packed, key.transpose(-1, -2)).float() * scale  # (B, KV, H/KV, L)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[2]]
        scores = scores.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(scores.softmax(dim=-1).to(value.dtype), value)  # (B, KV, H/KV, D)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    with _registered:
        if DECODE_ATTENTION not in AttentionInterface._global_mapping:
            AttentionInterface.register(DECODE_ATTENTION, packed_gqa_attention)
            AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


class FusedQKV:
    """One attention module's q/k/v weights as row blocks of one tensor, and the three stand-in
    projections that compute them with one GEMV during the decode step."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.originals = (module.q_proj, module.k_proj, module.v_proj)
        self.sizes = [p.out_features for p in self.originals]
        with torch.inference_mode(False), torch.no_grad():
            self.weight = torch.cat([p.weight for p in self.originals])
            self.bias = None if self.originals[0].bias is None else torch.cat([p.bias for p in self.originals])
            for p, part in zip(self.originals, self.weight.split(self.sizes), strict=True):
                p.weight.data = part
            if self.bias is not None:
                for p, part in zip(self.originals, self.bias.split(self.sizes), strict=True):
                    p.bias.data = part
        self.pending: list[torch.Tensor] = []
        self.stand_ins = tuple(_ProjectionPart(self, i) for i in range(3))

    def swap(self, *, fused: bool) -> None:
        """Put the stand-ins (``fused=True``) or the original projections on the module."""
        if fused and not self.intact():
            raise RuntimeError("fused q/k/v: the model's q/k/v weights were replaced after they were fused")
        for name, proj in zip(("q_proj", "k_proj", "v_proj"), self.stand_ins if fused else self.originals,
                              strict=True):
            setattr(self.module, name, proj)
        self.pending.clear()

    def intact(self) -> bool:
        """Whether the projections still read the fused tensor (``model.to(...)`` replaces them)."""
        offsets = [0, self.sizes[0], self.sizes[0] + self.sizes[1]]
        stride = self.weight.stride(0) * self.weight.element_size()
        return all(
            p.weight.data_ptr() == self.weight.data_ptr() + offset * stride
            and (self.bias is None or p.bias.data_ptr() == self.bias.data_ptr() + offset * self.bias.element_size())
            for p, offset in zip(self.originals, offsets, strict=True)
        )


class _ProjectionPart(torch.nn.Module):
    """Stands in for q_proj (``index`` 0: computes q, k and v at once), k_proj or v_proj (1, 2:
    hand on what q_proj computed from the same input). Any other call order raises, so a model
    whose attention calls them differently falls back instead of computing something else."""

    def __init__(self, fused: FusedQKV, index: int) -> None:
        super().__init__()
        self.fused = fused
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused
        if self.index == 0:
            q, k, v = F.linear(x, fused.weight, fused.bias).split(fused.sizes, dim=-1)
            fused.pending[:] = [x, k, v]
            return q
        if len(fused.pending) != 4 - self.index or fused.pending[0] is not x:
            raise RuntimeError("fused q/k/v: the attention did not call q_proj, k_proj, v_proj in order on one input")
        part = fused.pending.pop(1)
        if self.index == 2:
            fused.pending.clear()
        return part


def fusable_qkv(module: torch.nn.Module) -> bool:
    """Whether ``module`` has plain Linear q/k/v projections of one input, dtype and device."""
    projections = [getattr(module, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    if not all(type(p) is torch.nn.Linear for p in projections):
        return False
    first = projections[0]
    return all(
        p.in_features == first.in_features
        and p.weight.dtype == first.weight.dtype
        and p.weight.device == first.weight.device
        and (p.bias is None) == (first.bias is None)
        and not torch.nn.utils.parametrize.is_parametrized(p)
        for p in projections
    )


def fuse_qkv_weights(model: torch.nn.Module) -> list[FusedQKV]:
    """Fuse the q/k/v weights of every attention module that allows it (in place, same values)."""
    return [FusedQKV(m) for m in model.modules() if fusable_qkv(m)]


@contextmanager
def decode_forward(config: Any, fused: list[FusedQKV]) -> Iterator[None]:
    """Run the block with packed attention where the model uses "sdpa" and with the fused q/k/v
    stand-ins in place; everything is put back after. Python-only: a CUDA graph keeps the
    kernels it captured inside the block."""
    pack = PACK_GQA and getattr(config, "_attn_implementation", None) == "sdpa"
    if pack:
        _register_decode_attention()
        config._attn_implementation = DECODE_ATTENTION
    for f in fused:
        f.swap(fused=True)
    try:
        yield
    finally:
        for f in fused:
            f.swap(fused=False)
        if pack:
            config._attn_implementation = "sdpa"


def decode_step(g: DecodeGraph) -> None:
    """Advance every buffer by one token (this is what the CUDA graph holds)."""
    g.mask.index_fill_(3, g.cur, True)
    with decode_forward(g.config, g.fused):
        logits = g.forward(g.token, g.cur - g.pads, g.mask)
    chosen = choose_tokens(logits, g)
    g.token.copy_(chosen.unsqueeze(1))
    if g.seen is not None:
        g.seen.scatter_(1, g.token, True)
    g.cur.add_(1)


def make_forward(model: Any, cache: Any) -> Any:
    """The model's one-token forward on ``cache``, returning float logits of the last position."""

    def forward(token: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=token, position_ids=position_ids, attention_mask=mask, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    return forward


def build_decode_graph(
    model: Any, key: tuple[int, int], sampling: Sampling, *, capture: bool, fused: list[FusedQKV] | None = None
) -> DecodeGraph:
    """Buffers for ``key`` = (batch, cache length); on CUDA also compile the forward and capture the
    step (compile errors fall back to the eager forward; capture errors propagate)."""
    from transformers import StaticCache

    batch, length = key
    device = model.device
    cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=length)
    vocab = model.get_output_embeddings().weight.shape[0]
    g = DecodeGraph(
        cache=cache,
        token=torch.zeros((batch, 1), dtype=torch.long, device=device),
        cur=torch.zeros(1, dtype=torch.long, device=device),
        pads=torch.zeros((batch, 1), dtype=torch.long, device=device),
        mask=torch.zeros((batch, 1, 1, length), dtype=torch.bool, device=device),
        eos=torch.zeros(MAX_EOS_IDS, dtype=torch.long, device=device),
        allow_eos=torch.ones((), dtype=torch.bool, device=device),
        temperature=torch.ones((), dtype=torch.float32, device=device),
        top_p=torch.ones((), dtype=torch.float32, device=device),
        penalty=torch.ones((), dtype=torch.float32, device=device),
        seen=torch.zeros((batch, vocab), dtype=torch.bool, device=device) if sampling.penalty else None,
        forward=make_forward(model, cache),
        sampling=sampling,
        config=model.config,
        fused=list(fused or []),
    )
    if not capture:
        return g
    # Prefill the cache once so the forward sees its real (lazily allocated) tensors.
    started = time.perf_counter()
    dummy = torch.zeros((batch, 1), dtype=torch.long, device=device)
    model(input_ids=dummy, past_key_values=cache, use_cache=True, logits_to_keep=1)
    g.cur.fill_(1)
    _raise_recompile_limit()
    try:
        compiled = torch.compile(g.forward, dynamic=False)
        g.forward = compiled
        _warm_steps(g)
    except Exception as e:  # Inductor unavailable or failing: capture the eager forward instead
        logger.warning("torch.compile of the decode step failed, capturing it uncompiled: %s", e)
        g.forward = make_forward(model, cache)
        _reset_graph_state(g, cur=1)
        _warm_steps(g)
    _reset_graph_state(g, cur=1)
    try:
        g.graph = _capture(g)
    except Exception as e:  # e.g. a host sync inside the compiled code: capture the eager forward
        logger.warning("capturing the compiled decode step failed, capturing it uncompiled: %s", e)
        g.forward = make_forward(model, cache)
        _reset_graph_state(g, cur=1)
        _warm_steps(g)
        _reset_graph_state(g, cur=1)
        g.graph = _capture(g)
    g.capture_s = time.perf_counter() - started
    return g


def warm_up_on_side_stream(fn: Any, *, times: int = 1) -> None:
    """Run ``fn`` ``times`` times on a side stream, as code must run before CUDA graph capture
    (lazy allocations, cuBLAS workspaces, compilation, autotuning)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(times):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()


def capture_graph(fn: Any, *, pool: Any = None) -> Any:
    """A CUDA graph holding what ``fn`` launches (``pool``: a memory pool shared with other graphs)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    torch.cuda.synchronize()
    return graph


def _capture(g: DecodeGraph) -> Any:
    return capture_graph(lambda: decode_step(g))


def _raise_recompile_limit(limit: int = 64) -> None:
    """Every decode graph compiles the same forward code for another shape; past torch's default
    of 8 compiles per code object, new shapes would silently run the forward uncompiled."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def _warm_steps(g: DecodeGraph) -> None:
    warm_up_on_side_stream(lambda: decode_step(g), times=3)


def _reset_graph_state(g: DecodeGraph, *, cur: int) -> None:
    g.cur.fill_(cur)
    g.mask.zero_()
    for layer in g.cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.cumulative_length.fill_(cur)


class GraphUnavailable(RuntimeError):
    """Building or capturing the decode graph failed; ``generate`` must do this call."""


class _GraphStates:
    """Per-model decode graphs by (batch, length, sampling), least recently used first."""

    def __init__(self) -> None:
        self.graphs: OrderedDict[tuple[Any, ...], DecodeGraph] = OrderedDict()
        self.disabled_reason: str | None = None
        self.capture_times: dict[str, float] = {}
        self.fused: list[FusedQKV] | None = None  # set on the first fast call (before anything compiles)
        self.prefill_disabled_reason: str | None = None
        self.prefill_pool: Any = None


graph_states: PerModel[_GraphStates] = PerModel(_GraphStates)


def decode_graph(model: Any, key: tuple[int, int], sampling: Sampling) -> DecodeGraph:
    """The decode graph of a shape and sampling kind, built (and on CUDA captured) on first use."""
    states = graph_states(model)
    full_key = (*key, sampling)
    g = states.graphs.pop(full_key, None)
    if g is None:
        fused = states.fused if FUSE_QKV else []
        g = build_decode_graph(model, key, sampling, capture=model.device.type == "cuda", fused=fused)
        if g.graph is not None:
            states.capture_times[f"{key[0]}x{key[1]}"] = g.capture_s
            logger.info("decode graph ready for batch %d, cache length %d (%.1f s)", key[0], key[1], g.capture_s)
    states.graphs[full_key] = g
    while len(states.graphs) > MAX_CACHES_PER_MODEL:
        states.graphs.popitem(last=False)
    return g


# ----- the prompt pass: one CUDA graph per prompt-length bucket ----------------------------------
#
# Run eagerly, the prompt pass of a 6B model launches its kernels from Python for ~30 ms however
# short the prompt (the GPU needs ~5 ms for 64 tokens): most of the time to first token, and
# its run-to-run noise. Prompts of up to ``PREFILL_GRAPH_MAX_TOKENS`` (batch x bucket) therefore
# run as a replay of the model's own (uncompiled) forward captured for a bucket of padded length:
# the prompt is padded on the right to the next power of two (at least ``MIN_PREFILL_BUCKET``),
# the padding rows only write cache positions that the first decode steps overwrite before any
# token attends to them, and the logits are taken at the last real position. Longer prompts
# are compute-bound, so they keep the eager pass.

MIN_PREFILL_BUCKET = 64
PREFILL_GRAPH_MAX_TOKENS = 4096
PREFILL_GRAPHS_ON_CPU = False  # tests: run the bucketed prompt pass eagerly on CPU


@dataclass
class PrefillGraph:
    """Static inputs of one prompt-length bucket and the graph of the prompt pass over them."""

    ids: torch.Tensor  # (B, T) the prompt, right-padded to the bucket
    positions: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, 1, T, L) which cache positions each prompt position attends to
    causal: torch.Tensor  # (T, L) j <= i
    diagonal: torch.Tensor  # (T, L) j == i: left padding attends to itself (no all-masked rows)
    keep: torch.Tensor  # (1,) index of the last real prompt position
    length: torch.Tensor  # () real prompt length: where the cache continues writing
    logits: torch.Tensor | None = None  # (B, V) float, output of the last replay
    graph: Any = None


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded prompt: 0 at each row's first real token (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefill_bucket(batch: int, prompt: int, cache_length: int) -> int | None:
    """The padded length of a captured prompt pass, or None: eager (too long for a graph)."""
    bucket = max(MIN_PREFILL_BUCKET, 1 << (prompt - 1).bit_length())
    if bucket > cache_length or batch * bucket > PREFILL_GRAPH_MAX_TOKENS:
        return None
    return bucket


def _prefill_body(model: Any, g: DecodeGraph, p: PrefillGraph) -> None:
    layers = g.cache.layers
    for layer in layers:
        layer.cumulative_length.zero_()
    out = model(input_ids=p.ids, position_ids=p.positions, attention_mask=p.mask, past_key_values=g.cache,
                use_cache=True, logits_to_keep=p.keep)
    p.logits = out.logits[:, -1, :].float()
    for layer in layers:
        layer.cumulative_length.copy_(p.length)


def _build_prefill(model: Any, g: DecodeGraph, batch: int, bucket: int) -> PrefillGraph:
    device, length = g.mask.device, g.mask.shape[-1]
    rows = torch.arange(bucket, device=device)[:, None]
    cols = torch.arange(length, device=device)[None, :]
    return PrefillGraph(
        ids=torch.zeros((batch, bucket), dtype=torch.long, device=device),
        positions=torch.zeros((batch, bucket), dtype=torch.long, device=device),
        mask=torch.zeros((batch, 1, bucket, length), dtype=torch.bool, device=device),
        causal=cols <= rows,
        diagonal=cols == rows,
        keep=torch.zeros(1, dtype=torch.long, device=device),
        length=torch.zeros((), dtype=torch.long, device=device),
    )


def _fill_prefill(p: PrefillGraph, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    batch, prompt = input_ids.shape
    bucket = p.ids.shape[1]
    p.ids.zero_()
    p.ids[:, :prompt] = input_ids
    positions = prompt_positions(attention_mask)
    p.positions[:, :prompt] = positions
    p.positions[:, prompt:] = positions[:, -1:] + torch.arange(1, bucket - prompt + 1, device=p.ids.device)
    visible = torch.ones((batch, p.mask.shape[-1]), dtype=torch.bool, device=p.ids.device)
    visible[:, :prompt] = attention_mask.bool()
    torch.logical_and(visible[:, None, None, :] | p.diagonal, p.causal, out=p.mask)
    p.keep.fill_(prompt - 1)
    p.length.fill_(prompt)


def prefill(model: Any, g: DecodeGraph, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run the prompt into ``g.cache`` (emptied first); returns the last position's float logits
    ``(B, V)``. Captured per bucket on CUDA; a capture failure turns captured prompt passes off
    for this model, with one warning, and the pass runs eagerly."""
    batch, prompt = input_ids.shape
    g.cache.reset()
    states = graph_states(model)
    bucket = prefill_bucket(batch, prompt, g.mask.shape[-1])
    bucketed = bucket is not None and states.prefill_disabled_reason is None and (
        g.graph is not None or PREFILL_GRAPHS_ON_CPU
    ) and all(hasattr(layer, "cumulative_length") for layer in g.cache.layers)
    if bucketed:
        p = g.prefills.get(bucket)
        try:
            if p is None:
                p = _build_prefill(model, g, batch, bucket)
                _fill_prefill(p, input_ids, attention_mask)
                if g.graph is not None:
                    p.graph = _capture_prefill(model, g, p, states)
                g.prefills[bucket] = p
            else:
                _fill_prefill(p, input_ids, attention_mask)
            if p.graph is not None:
                p.graph.replay()
            else:
                _prefill_body(model, g, p)
            return p.logits
        except Exception as e:  # capture failed (e.g. a host sync in the model's forward): eager from now on
            states.prefill_disabled_reason = f"{type(e).__name__}: {e}"
            logger.warning("capturing the prompt pass failed for %s, running prompts eagerly: %s",
                           type(model).__name__, states.prefill_disabled_reason)
            g.prefills.clear()
            g.cache.reset()
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=prompt_positions(attention_mask),
                past_key_values=g.cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def _capture_prefill(model: Any, g: DecodeGraph, p: PrefillGraph, states: Any) -> Any:
    warm_up_on_side_stream(lambda: _prefill_body(model, g, p))
    if states.prefill_pool is None:
        states.prefill_pool = torch.cuda.graph_pool_handle()  # one pool: prompt passes never overlap
    return capture_graph(lambda: _prefill_body(model, g, p), pool=states.prefill_pool)


def graph_generate(model: Any, kwargs: dict[str, Any], *, cancel_events: list[threading.Event]) -> torch.Tensor:
    """What ``model.generate(**kwargs)`` returns (prompt + new ids, pad after eos), through the
    decode graph. ``kwargs["streamer"]`` (if any) gets each new token as generate would give it;
    generation stops early once every row produced an eos id or any ``cancel_events`` is set."""
    input_ids = kwargs["input_ids"]
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    batch, prompt = input_ids.shape
    max_new = int(kwargs.get("max_new_tokens") or 20)
    min_new = int(kwargs.get("min_new_tokens") or 0)
    eos = kwargs.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    pad = kwargs.get("pad_token_id")
    pad = eos_ids[0] if pad is None and eos_ids else (pad or 0)
    streamer = kwargs.get("streamer")
    sampling, scalars = resolve_sampling(model, kwargs)
    key = shape_key(model, kwargs)
    try:
        g = decode_graph(model, key, sampling)
    except Exception as e:  # compile/capture failed: the caller falls back to generate
        raise GraphUnavailable(f"{type(e).__name__}: {e}") from e

    if streamer is not None:
        streamer.put(input_ids.cpu())
    # The prompt pass, then every buffer the decode graph reads.
    logits = prefill(model, g, input_ids, attention_mask)
    g.mask.zero_()
    g.mask[:, 0, 0, :prompt] = attention_mask.bool()
    g.pads.copy_((prompt - attention_mask.long().sum(-1, keepdim=True)))
    g.cur.fill_(prompt)
    listed = (eos_ids or [pad]) * MAX_EOS_IDS
    g.eos.copy_(torch.tensor(listed[:MAX_EOS_IDS], dtype=torch.long))
    g.allow_eos.fill_(min_new <= 0 or not eos_ids)
    g.temperature.fill_(scalars["temperature"])
    g.top_p.fill_(scalars["top_p"])
    g.penalty.fill_(scalars["penalty"])
    if g.seen is not None:
        g.seen.zero_()
        g.seen.scatter_(1, input_ids, True)
    first = choose_tokens(logits, g)
    g.token.copy_(first.unsqueeze(1))
    if g.seen is not None:
        g.seen.scatter_(1, g.token, True)
    return _decode_loop(g, input_ids, batch=batch, max_new=max_new, min_new=min_new, eos_ids=set(eos_ids), pad=pad,
                        streamer=streamer, cancel_events=cancel_events)


def _decode_loop(
    g: DecodeGraph, input_ids: torch.Tensor, *, batch: int, max_new: int, min_new: int, eos_ids: set[int], pad: int,
    streamer: Any, cancel_events: list[threading.Event],
) -> torch.Tensor:
    cuda = g.graph is not None
    slots = [torch.empty((batch, 1), dtype=torch.long, pin_memory=cuda) for _ in range(2)]
    events = [torch.cuda.Event() if cuda else None for _ in range(2)]
    new_ids: list[list[int]] = []
    finished = [False] * batch

    def fetch(step: int) -> None:
        slot = step % 2
        slots[slot].copy_(g.token, non_blocking=cuda)
        if cuda:
            events[slot].record()

    def take(step: int) -> bool:
        """Hand token ``step`` on; True when generation should stop after it."""
        slot = step % 2
        if cuda:
            events[slot].synchronize()
        row_ids = slots[slot].view(-1).tolist()
        row_ids = [pad if done else t for t, done in zip(row_ids, finished, strict=True)]
        new_ids.append(row_ids)
        if streamer is not None:
            streamer.put(torch.tensor(row_ids))
        for i, t in enumerate(row_ids):
            if t in eos_ids:
                finished[i] = True
        return all(finished) or any(e.is_set() for e in cancel_events)

    fetch(0)
    launched, taken, stop = 1, 0, False
    if streamer is not None:
        # Hand the first token on before queueing the next step: time to first token.
        stop = take(0)
        taken = 1
        if hasattr(streamer, "yield_gil"):
            streamer.yield_gil = False  # from here on take() waits on CUDA events, releasing the GIL
    while not stop:
        if launched < max_new and not any(e.is_set() for e in cancel_events):
            if launched == min_new:
                g.allow_eos.fill_(True)
            if cuda:
                g.graph.replay()
            else:
                decode_step(g)
            fetch(launched)
            launched += 1
        if taken >= launched:
            break
        stop = take(taken)
        taken += 1
    if streamer is not None:
        streamer.end()
    new = torch.tensor(new_ids, dtype=torch.long, device=input_ids.device).T.reshape(batch, -1)
    return torch.cat([input_ids, new], dim=1)


def fuse_once(model: Any) -> list[FusedQKV]:
    """Fuse the model's q/k/v weights (before any compiled code has seen its parameters); on
    failure, e.g. no GPU memory for one layer's fused copy, the decode step keeps three GEMVs."""
    if not FUSE_QKV:
        return []
    try:
        return fuse_qkv_weights(model)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
        logger.warning("could not fuse the q/k/v weights of %s, decoding with three projections: %s",
                       type(model).__name__, e)
        return []


def fast_generate(model: Any, kwargs: dict[str, Any], *, cancel_types: tuple[type, ...]) -> Any:
    """``model.generate(**kwargs)`` on the fastest path the call allows: the decode graph for plain
    greedy/sampled calls, else generate with the reused static cache and compiled step
    (``with_fast_decode``). A graph that cannot be built turns the graph loop off for this model,
    with one warning. Run on the model's worker thread, under ``torch.inference_mode``."""
    states = graph_states(model)
    if states.fused is None:
        states.fused = fuse_once(model)
    if (
        states.disabled_reason is None
        and call_supports_fast_decode(kwargs)
        and graph_call_supported(kwargs, cancel_types)
    ):
        events = [c.event for c in kwargs.get("stopping_criteria") or []]
        try:
            return graph_generate(model, kwargs, cancel_events=events)
        except GraphUnavailable as e:
            states.disabled_reason = str(e)
            states.graphs.clear()
            logger.warning("decode graph unavailable for %s, using generate with a static cache: %s",
                           type(model).__name__, e)
    return model.generate(**with_fast_decode(model, kwargs))
