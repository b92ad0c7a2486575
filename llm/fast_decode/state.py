"""The fast path's options, its one per-model state, and why each of its paths is off.

``FastDecodeOptions`` are fields of ``llm.ChatGLM`` (``fast_decode_options``), handed down to
every call: nothing in ``llm.fast_decode`` is switched by module globals. ``FastDecodeState``
(one per model object, ``fast_decode_state(model)``) holds the reused caches and graphs and,
in ``off``, the reason each path was turned off after a failure; ``fast_decode_report`` says
for every path whether it runs and, if not, why.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from llm.cache_kwarg import cache_kwarg_of
from llm.per_model import PerModel

STATIC_CACHE = "static_cache"  # generate on a reused StaticCache, compiled by transformers
DECODE_GRAPH = "decode_graph"  # one captured CUDA graph per token
PREFILL_GRAPH = "prefill_graph"  # the prompt pass captured per length bucket
PACKED_ATTENTION = "packed_attention"  # decode step: query heads packed onto their K/V head
FUSED_QKV = "fused_qkv"  # decode step: one q/k/v GEMV
PATHS = (STATIC_CACHE, DECODE_GRAPH, PREFILL_GRAPH, PACKED_ATTENTION, FUSED_QKV)


class FastDecodeOptions(BaseModel):
    """What the fast path may use (all on by default; bench and tests switch parts off)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    packed_attention: bool = True
    """Decode step: attention with the query heads packed onto their K/V head (GQA)."""
    fused_qkv: bool = True
    """Decode step: the q/k/v projections as one GEMV over weights fused in place."""
    fused_rope: bool = True
    """Decode step: the rotary of q and k and the K/V cache writes as one kernel, inside the
    attention modules' decode-step forward (``attention_step``; needs packed attention and fused q/k/v)."""
    rope_in_attention: bool = False
    """With ``fused_rope`` and packed attention: a decode token's rotary and K/V cache write inside the
    flash-decoding split kernel, one launch a layer fewer (``llm.kernels.rope_attention``). Off until
    timed on a GPU (``bench.decode --quantization ... --rope-attention-ablation``)."""
    prefill_graphs: bool = True
    """Capture the prompt pass per prompt-length bucket (CUDA)."""
    prompt_kernels: bool = True
    """Prompt passes: each RMSNorm and each SwiGLU as one Triton kernel instead of seven and two eager
    ones (``prompt_steps``; CUDA)."""
    gemv_kernel: Literal["auto", "triton", "torch"] = "auto"
    """Decode step's linear layers at <= 16 rows: "auto" / "triton" = INT8 and bf16 layers on the
    Triton GEMV (``llm.kernels``; per shape cuBLAS where it is faster); "torch" = both in PyTorch
    (``gemv_route``). The bench flips it to compare kernels in the real decode graph."""
    pdl: bool = True
    """CUDA graphs on Hopper and later: programmatic dependent launch, each kernel of a step
    placed on the GPU while the one before it finishes (``llm.kernels.pdl``): glmkb's Triton
    kernels and, where this torch's Inductor has ``triton.enable_pdl``, Inductor's. The bench
    flips it to measure it."""
    rotary_tables: bool = True
    """With ``fused_rope``: the rotary's cos/sin made once per decode graph for every cache position
    and read at each token's position, instead of computed in every step (``rotary_table``)."""
    token_kernel: bool = True
    """Greedy decode steps: the eos suppression, repetition penalty, argmax and the step's state
    updates as two Triton kernels instead of ~15 PyTorch ones (``llm.kernels.token_choice``)."""
    sampling_kernel: bool = True
    """Sampled decode steps: the penalty, temperature, top-k, top-p and the exponential race in
    Triton without sorting the row (``token_choice_op.sampled_choice``: two launches for top-k up to
    128, generate's default 50 included; radix selects for top-p alone on one row). Run 30 (H100,
    ChatGLM3-6B shape, temperature 0.8 / top_p 0.8 / top-k 50): the choice 220.9 -> 35.4 us a step
    (16 rows: 424.5 -> 51.6), sampled tok/s bf16 +3.7 %, INT8 +6.2 %, INT4 +8.0 %."""
    on_cpu: bool = False
    """Run the fast path on CPU too, uncompiled and uncaptured (tests, ``bench.decode --fast-on-cpu``)."""
    bucketed_prefill_on_cpu: bool = False
    """On CPU, run the bucketed prompt pass eagerly (what a captured one computes; tests)."""


DEFAULT_OPTIONS = FastDecodeOptions()


@dataclass
class FastDecodeState:
    """Everything the fast path keeps for one model object, and what it turned off and why."""

    off: dict[str, str] = field(default_factory=dict)
    """Path (``STATIC_CACHE``, ``DECODE_GRAPH``, ``PREFILL_GRAPH``, ``FUSED_QKV``) -> why a
    failure turned it off for this model for good."""
    caches: OrderedDict[tuple[int, int], Any] = field(default_factory=OrderedDict)
    """Static caches of ``generate`` calls by (batch, cache length), least recently used first."""
    warmups: dict[tuple[int, int], float] = field(default_factory=dict)
    """Seconds each static-cache shape took to compile."""
    graphs: OrderedDict[tuple[Any, ...], Any] = field(default_factory=OrderedDict)
    """Decode graphs by (batch, cache length, sampling, packed, fused, GEMV kernel), least recently used first."""
    capture_times: dict[str, float] = field(default_factory=dict)
    """Seconds each decode graph took to build and capture."""
    fused: list[Any] | None = None
    """The fused q/k/v of the model's attention modules (set on the first fast call)."""
    prefill_pool: Any = None
    """The CUDA graph memory pool all captured prompt passes share (they never overlap)."""
    prefill_pool_holder: Any = None
    """A one-tensor CUDA graph in ``prefill_pool`` that keeps the pool alive (``prefill.prefill_pool``)."""


fast_decode_state: PerModel[FastDecodeState] = PerModel(FastDecodeState)
"""The fast-path state of one model object (created on first use)."""


def unsupported_reason(model: Any, options: FastDecodeOptions = DEFAULT_OPTIONS) -> str | None:
    """Why ``model`` cannot take the fast path (None = it can): device, quantization, class, offload."""
    adapter_reason = getattr(model, "fast_decode_unsupported", None)  # set by llm.adapters (unmerged LoRA)
    if adapter_reason:
        return adapter_reason
    device = getattr(model, "device", None)
    if device is None or (torch.device(device).type != "cuda" and not options.on_cpu):
        return f"the model runs on {device}, not a CUDA GPU"
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        return "the model is quantized (bitsandbytes kernels are not compiled)"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not support a compiled static cache"
    devices = set(getattr(model, "hf_device_map", {}).values())
    if len(devices) > 1:
        return "the model is spread over several devices or offloaded"
    return None


def fast_decode_report(model: Any, options: FastDecodeOptions = DEFAULT_OPTIONS) -> dict[str, str | None]:
    """Every path of the fast path -> None where it runs, else why it is off for ``model``.

    The paths past ``STATIC_CACHE`` (decode graph, captured prompt pass, packed attention,
    fused q/k/v) are what a plain greedy or sampled call takes; the static-cache ``generate``
    serves calls with their own logits processors.
    """
    reason = unsupported_reason(model, options)
    if reason is not None:
        return dict.fromkeys(PATHS, reason)
    from llm.fast_decode.prefix import STATIC_CACHE_REASON, prefix_slots

    state = fast_decode_state(model)
    report: dict[str, str | None] = {path: state.off.get(path) for path in PATHS}
    if prefix_slots(model):
        report[STATIC_CACHE] = report[STATIC_CACHE] or STATIC_CACHE_REASON
    cuda = torch.device(model.device).type == "cuda"
    if not options.prefill_graphs:
        report[PREFILL_GRAPH] = "off by option (prefill_graphs=False)"
    elif not cuda and not options.bucketed_prefill_on_cpu:
        report[PREFILL_GRAPH] = "captured only on CUDA (the CPU runs the prompt eagerly)"
    if not options.packed_attention:
        report[PACKED_ATTENTION] = "off by option (packed_attention=False)"
    elif getattr(model.config, "_attn_implementation", None) != "sdpa":
        report[PACKED_ATTENTION] = f"the model uses {model.config._attn_implementation!r} attention, not 'sdpa'"
    if not options.fused_qkv:
        report[FUSED_QKV] = "off by option (fused_qkv=False)"
    elif state.fused is not None and not state.fused and FUSED_QKV not in state.off:
        report[FUSED_QKV] = "no attention module with fusable q/k/v projections"
    if report[DECODE_GRAPH] is not None:  # the decode step is what packs and fuses
        for path in (PREFILL_GRAPH, PACKED_ATTENTION, FUSED_QKV):
            report[path] = report[path] or f"the decode graph is off: {report[DECODE_GRAPH]}"
    return report


def cache_kwarg(model: Any) -> str:
    """The keyword the model's ``forward`` (and ``generate``) take the KV cache by.

    ``cache`` where the forward has it (transformers 5.2x: ``past_key_values`` still works
    there but warns, and GLM's forward drops it in 5.40); ``past_key_values`` before (5.17).
    """
    return cache_kwarg_of(type(model))
