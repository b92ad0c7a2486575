"""The int8 -> bf16/fp16 weight cast of INT8 prompt passes (``llm.kernels.int8_cast_op``).

Regression: past 64 rows an INT8 layer dequantizes its whole weight and PyTorch's
``weight.to(torch.bfloat16)`` ran that as an unvectorised copy, 15.5 of the 25.6 ms of a captured
128-token INT8 prompt pass on the H200 (run 19). The kernel must give exactly ``Tensor.to``'s
values (an int8 is exact in 16 bits), so the layer's output is unchanged bit for bit. Kernel checks
(``test_interpreted_*``) run in a pytest subprocess with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

import llm.kernels.int8_cast_op as cast_op
from llm.kernels.int8_cast_op import int8_cast_applies, int8_weight_as
from llm.quantization import WeightOnlyInt8Linear
from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, interpreted_marker

interpreted = interpreted_marker()


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__)


def check_cast(device: str, dtype: torch.dtype) -> None:
    """Every int8 value, sizes below, at and past one program's block: ``Tensor.to`` bit for bit."""
    for shape in [(256,), (3, 5), (64, 4096 + 8), (4096 + 1,)]:
        g = torch.Generator().manual_seed(len(shape))
        q = (torch.arange(-128, 128, dtype=torch.int8) if shape == (256,)
             else torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)).to(device)
        assert int8_cast_applies(q, dtype)
        out = int8_weight_as(q, dtype)
        assert out.dtype == dtype and out.shape == q.shape and torch.equal(out, q.to(dtype))


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_interpreted_cast_is_tensor_to(dtype: torch.dtype) -> None:
    """fp16 and fp32 here: Triton's interpreter converts int8 to bf16 wrongly (-128 -> -inf), bf16
    is checked on the GPU (``test_cast_on_the_gpu_is_tensor_to``)."""
    check_cast("cpu", dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_on_the_gpu_is_tensor_to(dtype: torch.dtype) -> None:
    if not torch.cuda.is_available() or find_spec("triton") is None:
        pytest.skip("needs a CUDA GPU and Triton")
    check_cast("cuda", dtype)


@interpreted
def test_interpreted_a_long_prompt_through_an_int8_layer_takes_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the rows the GEMV kernel takes (``int8_row_limit``: 1024 since session 22, 64 before):
    the layer casts its weight with the kernel once and returns what the ``Tensor.to`` path
    returns, bit for bit."""
    import llm.kernels.int8_cast as kernel_module
    from llm.kernels.gemv_configs import int8_row_limit

    launches = count_calls(monkeypatch, kernel_module, "launch_int8_cast")
    g = torch.Generator().manual_seed(0)
    layer = WeightOnlyInt8Linear(torch.randn(24, 40, generator=g), torch.randn(24, generator=g))
    x = torch.randn(int8_row_limit() + 6, 40, generator=g)
    ours = layer(x)
    assert len(launches) == 1
    layer.kernel = "torch"
    assert torch.equal(ours, layer(x))


def test_without_the_kernel_it_is_tensor_to() -> None:
    """On CPU without the interpreter (and for non-int8, non-contiguous or compiled calls) the
    cast is ``Tensor.to`` itself."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernel here")
    q = torch.randint(-128, 128, (8, 8), dtype=torch.int8)
    assert not int8_cast_applies(q, torch.bfloat16)
    assert not int8_cast_applies(q.t(), torch.bfloat16)
    assert torch.equal(int8_weight_as(q, torch.bfloat16), q.to(torch.bfloat16))


def test_a_failing_kernel_falls_back_to_tensor_to_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that cannot launch (old Triton, odd GPU) is given up once, with the same values."""
    monkeypatch.setattr(cast_op, "_broken", [])
    monkeypatch.setattr(cast_op, "int8_cast_applies", lambda w, d: not cast_op._broken)
    import llm.kernels.int8_cast as kernel_module

    def broken(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise RuntimeError("no kernel here")

    monkeypatch.setattr(kernel_module, "launch_int8_cast", broken)
    q = torch.randint(-128, 128, (4, 4), dtype=torch.int8)
    assert torch.equal(int8_weight_as(q, torch.bfloat16), q.to(torch.bfloat16))
    assert cast_op._broken and torch.equal(int8_weight_as(q, torch.bfloat16), q.to(torch.bfloat16))
