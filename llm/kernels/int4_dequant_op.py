"""``int4pack_dequantized``: a tinygemm-packed INT4 weight as bf16, by ``llm.kernels.int4_dequant``.

For INT4 prompt passes (``llm.quantization``, more than ``MAX_TINYGEMM_ROWS`` rows). Where the
kernel does not apply (no Triton, a kernel that failed once) the caller keeps tinygemm: that
path is slow for long prompts but exact, and tinygemm itself only exists on CUDA.
"""


import torch

from llm.kernels.give_up import TRITON_AVAILABLE, give_up

# Past this many rows dequantizing + cuBLAS beats tinygemm. Run 19 (H200, 6B gate_up): tinygemm 0.50 ms
# at 64 rows, ~0.25 at 32; run 19's gather kernel ~0.3 ms for the weight (91 us per average layer call)
# + cuBLAS 0.06: the break-even is ~48 rows by those numbers (measured: 64 rows gains); the word-wise
# kernel that replaced it should move it lower (not measured, so 48 stays). Decode batches
# (<= 16) stay on tinygemm; captured prompt passes have >= 64 rows (``prefill.MIN_PREFILL_BUCKET``).
MAX_TINYGEMM_ROWS = 48

_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def int4pack_dequant_applies(packed: torch.Tensor, rows: int) -> bool:
    """Whether a tinygemm layer's call of ``rows`` rows should dequantize instead (CUDA, Triton,
    not under ``torch.compile``, past ``MAX_TINYGEMM_ROWS``)."""
    return (TRITON_AVAILABLE and not _broken and rows > MAX_TINYGEMM_ROWS and packed.device.type == "cuda"
            and packed.dtype == torch.int32 and packed.dim() == 4 and not torch.compiler.is_compiling())


def int4pack_dequantized(
    packed: torch.Tensor, scales_and_zeros: torch.Tensor, *, out_features: int, in_features: int, group_size: int,
) -> torch.Tensor | None:
    """The bf16 ``[out_features, in_features]`` weight, or None where the kernel failed (once, with a warning)."""
    try:
        from llm.kernels.int4_dequant import launch_int4pack_dequant

        inner = packed.shape[-1] * 2
        return launch_int4pack_dequant(packed.contiguous(), scales_and_zeros.contiguous(), out_features=out_features,
                                       in_features=in_features, group_size=group_size, inner_k_tiles=inner)
    except Exception as e:  # Triton too old, an odd GPU: tinygemm from now on
        give_up(_broken, e, kernel="INT4 dequantization kernel", instead="INT4 prompts stay on tinygemm")
        return None
