"""``int8_weight_as``: an int8 weight as bf16/fp16, through ``llm.kernels.int8_cast`` where it applies.

Not a custom op: under ``torch.compile`` (the decode step with ``gemv_kernel="torch"``) Inductor
fuses the dequantization into the matmul itself, so there the plain ``Tensor.to`` stays; the
kernel is for eager and captured calls (INT8 prompt passes of more than 64 tokens). A kernel that
fails to compile or launch falls back to ``Tensor.to`` for good, with one warning.
"""


import torch

from llm.kernels.give_up import INTERPRET, TRITON_AVAILABLE, give_up

_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def int8_cast_applies(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``int8_weight_as`` runs the kernel: a contiguous int8 tensor on CUDA cast to 16 bits
    (any float dtype on CPU under Triton's interpreter), outside ``torch.compile``, no gradient."""
    if not TRITON_AVAILABLE or _broken or weight.dtype != torch.int8 or not weight.is_contiguous():
        return False
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and weight.requires_grad):
        return False
    if weight.device.type == "cuda":
        return dtype in (torch.float16, torch.bfloat16)
    return INTERPRET and weight.device.type == "cpu" and dtype.is_floating_point


def int8_weight_as(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight.to(dtype)`` for an int8 weight (the same values), by the vectorised kernel where it applies."""
    if int8_cast_applies(weight, dtype):
        try:
            from llm.kernels.int8_cast import launch_int8_cast

            return launch_int8_cast(weight, dtype)
        except Exception as e:  # Triton too old, an odd GPU: Tensor.to from now on
            give_up(_broken, e, kernel="int8 cast kernel", instead="using Tensor.to")
    return weight.to(dtype)
