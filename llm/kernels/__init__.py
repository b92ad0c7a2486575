"""Hand-written GPU kernels of the decode path (Triton), each with a PyTorch fallback.

- ``gemv_linear``: ``y = x @ W.T (* scale) (+ bias)`` for batch <= 16, bf16/fp16 or int8 weights read
  once (``llm.kernels.gemv``: the Triton kernel; ``gemv_op``: the torch custom op, tuning and
  fallback; ``gemv_configs``: tile sizes per shape).
- ``flash_decode``: attention of one query token per row against the K/V cache, the grouped
  query heads packed onto their K/V head, flash-decoding in two kernels (``llm.kernels.
  decode_attention``: the Triton kernels; ``decode_attention_op``: the custom op and fallback).
- ``rope_cache_write`` (``llm.kernels.rope_cache_op``): a decode token's rotary of q and k and its
  K/V cache writes in one kernel (``rope_cache``), transformers' own math as the fallback.
- ``rope_decode_attention`` (``llm.kernels.rope_attention_op``): both of the above for one decode token
  per row in one launch (the split kernel rotates q and writes the new token itself:
  ``rope_attention``), those two ops as the fallback; ``FastDecodeOptions.rope_in_attention``.
- ``int4_gemv_op.int4_runs_linear``: INT4 layers in glmkb's "runs" layout (``llm.int4_runs``,
  ``llm.int4_kernel: triton``): W4A16 kernels for 1 and 2-4 rows and a dequantization kernel
  (``int4_gemv``), a W4A16 GEMM for 9-256 rows (``int4_gemm``).

Importing this package never imports Triton; the kernel module does, on first use.
"""

from llm.kernels.decode_attention_op import attention_applies, flash_decode, reference_decode_attention
from llm.kernels.gemv_op import KERNELS, TRITON_AVAILABLE, chosen_configs, gemv_applies, gemv_linear, reference_gemv

__all__ = [
    "KERNELS",
    "TRITON_AVAILABLE",
    "attention_applies",
    "chosen_configs",
    "flash_decode",
    "gemv_applies",
    "gemv_linear",
    "reference_decode_attention",
    "reference_gemv",
]
