"""Weight-only INT8 and INT4 linear layers in pure PyTorch (the gpt-fast approach).

Decoding one token at batch 1 reads every weight once and does almost no arithmetic per byte,
so its speed is set by the bytes read: INT8 weights halve them and INT4 quarter them against
bf16. The activations stay in the compute dtype (W8A16 / W4A16): each layer dequantizes its
weight in ``forward``, which ``torch.compile`` (the fast decode path) fuses into the matrix-
vector product, so the full-precision weight is never written to memory there. Eager runs
(CPU, ``fast_decode=False``) pay a dequantization per call and are correct but not faster.

- INT8: symmetric, one scale per output channel (``w ≈ q * scale``, q in [-127, 127]).
- INT4: asymmetric, one scale and integer zero point per group of ``group_size`` input
  columns (``w ≈ (q - zero) * scale``, q in [0, 15]), two values packed per byte. On a CUDA GPU
  (sm80+, bf16) the layer runs torch's tinygemm INT4 kernel (``llm.int4_tinygemm``) instead.

``quantize_model_(model, "int8" | "int4")`` swaps every ``nn.Linear`` for the quantized layer,
in place, one layer at a time so the host peak grows by one layer only. The LM head becomes INT8
per channel in both kinds (``head="int8"``; ``None`` keeps it as it is): its error shows directly
in the logits, so never INT4 (llama.cpp's 4-bit types keep ``output.weight`` at 6-8 bits too),
but it is the largest single read of a decode step (65,024 x 4,096: 0.53 GB in bf16, 119 us on
an H200, 5 % of an INT8 step). A head tied to the input embeddings is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from configs.errors import BadInput
from llm import int4_runs
from llm import int4_tinygemm as tinygemm
from llm import quantized_cpu
from llm.kernels import KERNELS, gemv_linear
from llm.kernels.int4_dequant_op import int4pack_dequant_applies, int4pack_dequantized
from llm.kernels.int4_gemv_op import int4_runs_linear

WEIGHT_ONLY = ("int8", "int4")
# INT4 GEMV on CUDA: glmkb's Triton kernels over the "runs" layout (llm.kernels.int4_gemv; run 20
# on an H200: 511 tok/s, 1.70x bf16) or torch's tinygemm (397 tok/s, 1.32x), each the other's
# fallback where it does not run. "auto" (the default) takes the Triton kernels on Hopper and
# newer, where they were measured, and tinygemm on older GPUs (sm80-89: consumer cards), where
# only tinygemm has been (docs/PERFORMANCE.md, run 20).
INT4_KERNELS = ("auto", "triton", "tinygemm")
CUDA_INT4_FORMS = ("triton", "tinygemm")
DEFAULT_INT4_KERNEL = "auto"
TRITON_INT4_FROM = (9, 0)  # compute capability where "auto" prefers the Triton kernels
DEFAULT_GROUP_SIZE = 128


class WeightOnlyInt8Linear(nn.Module):
    """``y = x @ (q * scale).T + b`` with int8 ``q`` and a per-output-channel ``scale``.

    ``kernel``: "triton" (default) runs batches of <= 16 rows on CUDA through the Triton GEMV
    (``llm.kernels.gemv``), which reads the int8 weight once; "torch" dequantizes in PyTorch and
    leaves fusing to ``torch.compile``, which on an H200 decoded at 0.94x bf16, not faster
    (docs/PERFORMANCE.md, run 13). The decode step sets it per ``FastDecodeOptions.gemv_kernel``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, kernel: str = "triton") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise BadInput(f"GEMV kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
        self.kernel = kernel
        q, scale = quantize_int8(weight)
        self._hold(q, scale.to(weight.dtype), bias)

    @classmethod
    def from_quantized(
        cls, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, *, kernel: str = "triton"
    ) -> WeightOnlyInt8Linear:
        """The layer over already quantized ``q`` (int8 ``[N, K]``) and ``scales`` (``[N]``, the compute
        dtype), e.g. a checkpoint's own (``llm.chatglm_legacy_quantized``)."""
        if q.dtype != torch.int8 or q.dim() != 2 or scales.shape != (q.shape[0],):
            raise BadInput(f"INT8 weights need int8 q [N, K] and scales [N], not {q.dtype} {tuple(q.shape)} "
                           f"and {tuple(scales.shape)}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.kernel = kernel
        layer._hold(q, scales, bias)
        return layer

    def _hold(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if quantized_cpu.cpu_kernels_run(x):  # bfloat16 on the CPU: torch's int8 kernel (llm.quantized_cpu)
            return quantized_cpu.int8_linear(x, self.weight, self.scales, self.bias)
        if self.kernel == "triton":  # the Triton GEMV, or past its rows reference_gemv's cast + cuBLAS
            return gemv_linear(x, self.weight, scales=self.scales, bias=self.bias)
        # Scaling the output rather than the weight: one multiply per output, not per weight.
        y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


class WeightOnlyInt4Linear(nn.Module):
    """``y = x @ ((q - zero) * scale).T + b`` with int4 ``q`` packed two per byte, grouped along inputs.

    Four forms of the same numbers (``kernel``): "dequant" (glmkb's buffers ``weight`` uint8
    ``[N, K/2]``, ``scales``, ``zeros``; ``forward`` dequantizes, correct everywhere) and, once the
    layer is on a device that runs it with bf16 scales and a shape it takes, the form
    ``int4_kernel`` names: "tinygemm" (CUDA sm80+: ``weight`` int32 in ``aten._weight_int4pack_mm``'s
    layout plus ``scales_and_zeros``; ``llm.int4_tinygemm``) or "triton" (``weight`` uint8 in the
    "runs" layout plus ``scales_zeros`` int32; ``llm.int4_runs``, read by ``llm.kernels.int4_gemv``);
    on the CPU, once placed there (``.to("cpu")``, as the loaders end), "cpu" (``weight`` in
    ``_weight_int4pack_mm_for_cpu``'s layout, ``scales``/``zeros`` kept, bf16 ``scales_and_zeros``;
    ``llm.quantized_cpu``). Only one weight form is held at a time; moving off the device or to
    another dtype converts back exactly, and ``state_dict`` always has the "dequant" buffers.
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, *, group_size: int = DEFAULT_GROUP_SIZE,
        int4_kernel: str = DEFAULT_INT4_KERNEL,
    ) -> None:
        super().__init__()
        _check_int4_options(in_features=weight.shape[1], group_size=group_size, int4_kernel=int4_kernel)
        q, scale, zero = quantize_int4(weight, group_size=group_size)
        self._hold(pack_int4(q), scale.to(weight.dtype), zero.to(weight.dtype), bias, group_size=group_size,
                   int4_kernel=int4_kernel)

    @classmethod
    def from_quantized(
        cls, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None, *,
        group_size: int, int4_kernel: str = DEFAULT_INT4_KERNEL,
    ) -> WeightOnlyInt4Linear:
        """The layer over already quantized buffers in the "dequant" form (``pack_int4``'s uint8 ``[N, K/2]``,
        ``scales``/``zeros`` ``[N, K/group]`` in the compute dtype), e.g. a checkpoint's own
        (``llm.chatglm_legacy_quantized``)."""
        out_features, in_features = packed.shape[0], packed.shape[1] * 2
        _check_int4_options(in_features=in_features, group_size=group_size, int4_kernel=int4_kernel)
        groups = (out_features, in_features // group_size)
        if packed.dtype != torch.uint8 or scales.shape != groups or zeros.shape != groups:
            raise BadInput(f"INT4 weights need uint8 packed [N, K/2] and scales/zeros {groups}, not {packed.dtype} "
                           f"{tuple(packed.shape)}, {tuple(scales.shape)} and {tuple(zeros.shape)}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._hold(packed, scales, zeros, bias, group_size=group_size, int4_kernel=int4_kernel)
        return layer

    def _hold(
        self, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None, *,
        group_size: int, int4_kernel: str,
    ) -> None:
        """Register the "dequant" buffers, then take ``int4_kernel``'s form where it runs."""
        self.in_features, self.out_features, self.group_size = packed.shape[1] * 2, packed.shape[0], group_size
        self.int4_kernel = int4_kernel
        self.kernel = "dequant"
        self.register_buffer("weight", packed)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("scales_and_zeros", None, persistent=False)
        self.register_buffer("scales_zeros", None, persistent=False)
        self._use_fast_form_if_fits()

    @property
    def fuse_axes(self) -> dict[str, int]:
        """Each tensor's output-feature axis (``llm.fast_decode.attention`` fuses q/k/v along it)."""
        if self.kernel == "tinygemm":
            return {"weight": 0, "bias": 0, "scales_and_zeros": 1}
        if self.kernel == "cpu":
            return {"weight": 0, "bias": 0, "scales": 0, "zeros": 0, "scales_and_zeros": 1}
        if self.kernel == "triton":
            return {"weight": 0, "bias": 0, "scales_zeros": 0}
        return {"weight": 0, "bias": 0, "scales": 0, "zeros": 0}

    @property
    def rows_concatenate(self) -> bool:
        """Whether this layer's weight rows can be joined with another's (fused q/k/v): the CPU
        form packs 64-row blocks; the other forms' rows are independent."""
        return self.kernel != "cpu" or quantized_cpu.int4_rows_concatenate(self.out_features)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The full-precision weight these buffers stand for (fused away under ``torch.compile``)."""
        q, scales, zeros = self.canonical_buffers()
        return _dequantize(unpack_int4(q), scales, zeros, group_size=self.group_size, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.kernel == "cpu" and quantized_cpu.cpu_kernels_run(x):
            return quantized_cpu.int4_linear(x, self.weight, self.scales_and_zeros, bias, group_size=self.group_size)
        if self.kernel == "triton":
            return int4_runs_linear(x, self.weight, self.scales_zeros, bias, group_size=self.group_size)
        if self.kernel == "tinygemm":
            weight = self._dequantized_for_rows(x.numel() // self.in_features)
            if weight is not None:  # a prompt: one GEMM at bf16 speed instead of tinygemm's row-linear time
                return F.linear(x, weight.to(x.dtype), bias)
            y = self._tinygemm(x)
            return y if bias is None else y + bias
        return F.linear(x, self.dequantized(x.dtype), bias)

    def _dequantized_for_rows(self, rows: int) -> torch.Tensor | None:
        """The bf16 weight, by one kernel from tinygemm's layout, for calls of more than
        ``MAX_TINYGEMM_ROWS`` rows (``llm.kernels.int4_dequant``); None: tinygemm serves them."""
        if not int4pack_dequant_applies(self.weight, rows):
            return None
        return int4pack_dequantized(self.weight, self.scales_and_zeros, out_features=self.out_features,
                                    in_features=self.in_features, group_size=self.group_size)

    def _tinygemm(self, x: torch.Tensor) -> torch.Tensor:
        """One ``_weight_int4pack_mm`` over all rows of ``x`` (the kernel takes 2-D bf16)."""
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        # contiguous(): q/k/v's parts of a fused scales_and_zeros are column slices (no-op otherwise)
        y = tinygemm.int4pack_mm(rows, self.weight, self.group_size, self.scales_and_zeros.contiguous())
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    def canonical_buffers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight, scales, zeros)`` in the "dequant" form, whichever form the layer holds."""
        if self.kernel == "triton":
            scales, zeros = int4_runs.unpack_scales_zeros(self.scales_zeros)
            return pack_int4(int4_runs.unpack_runs(self.weight)), scales, zeros
        if self.kernel == "cpu":
            q = quantized_cpu.unpack_int4(self.weight, out_features=self.out_features, in_features=self.in_features,
                                          group_size=self.group_size)
            return pack_int4(q), self.scales, self.zeros
        if self.kernel != "tinygemm":
            return self.weight, self.scales, self.zeros
        scales, zeros = tinygemm.split_scales_and_zeros(self.scales_and_zeros)
        q = tinygemm.unpack_weight(self.weight, out_features=scales.shape[0], in_features=self.in_features,
                                   group_size=self.group_size)
        dtype = self.scales_and_zeros.dtype
        return pack_int4(q), scales.to(dtype), zeros.to(dtype)

    def _form_runs_on(self, device: torch.device) -> bool:
        """Whether the form held runs on ``device`` for this layer's shape."""
        if self.kernel == "cpu":
            return device.type == "cpu"
        return self._runs(self.kernel, device)

    def _runs(self, kernel: str, device: torch.device) -> bool:
        """Whether CUDA form ``kernel`` ("triton" or "tinygemm") runs on ``device`` for this shape."""
        if kernel == "triton":
            return int4_runs.runs_available(device) and int4_runs.runs_fit(in_features=self.in_features,
                                                                           group_size=self.group_size)
        return tinygemm.tinygemm_available(device) and tinygemm.tinygemm_fits(
            in_features=self.in_features, out_features=self.out_features, group_size=self.group_size)

    def _cuda_form(self, device: torch.device) -> str | None:
        """``int4_kernel``'s form where it runs on ``device``, else the other INT4 kernel's, else None."""
        first = self.int4_kernel if self.int4_kernel != "auto" else _auto_int4_form(device)
        order = (first, *(k for k in CUDA_INT4_FORMS if k != first))
        return next((kernel for kernel in order if self._runs(kernel, device)), None)

    def _use_fast_form_if_fits(self, *, placed: bool = False) -> None:
        """Switch to ``int4_kernel``'s form when the device, dtype and shape allow it; on the CPU to
        the "cpu" form, but only once ``placed`` there (``.to()``): loaders quantize on the CPU
        before moving to a GPU, and leaving the "cpu" form again costs an unpacking pass."""
        if self.kernel != "dequant" or self.scales.dtype != torch.bfloat16:
            return
        form = self._cuda_form(self.weight.device)
        if form is None:
            if placed and self.weight.device.type == "cpu" and quantized_cpu.int4_fits(
                out_features=self.out_features, in_features=self.in_features, group_size=self.group_size
            ):
                self.weight = quantized_cpu.pack_int4(unpack_int4(self.weight))
                self.scales_and_zeros = quantized_cpu.scales_and_zeros(self.scales, self.zeros)
                self.kernel = "cpu"
            return
        q = unpack_int4(self.weight)
        if form == "triton":
            packed, self.scales_zeros = int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(self.scales, self.zeros)
        else:
            packed = tinygemm.pack_weight(q, inner_tiles=tinygemm.inner_k_tiles(self.in_features))
            self.scales_and_zeros = tinygemm.scales_and_zeros(self.scales, self.zeros, dtype=torch.bfloat16)
        self.weight, self.scales, self.zeros = packed, None, None
        self.kernel = form

    def _use_dequant(self) -> None:
        """Back to the "dequant" form, exactly: q and scales are kept, integer zeros re-derived."""
        if self.kernel == "dequant":
            return
        weight, scales, zeros = self.canonical_buffers()
        self.weight, self.scales, self.zeros = weight, scales, zeros
        self.scales_and_zeros = self.scales_zeros = None
        self.kernel = "dequant"

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """``.to()``, ``.cuda()``, ``.float()``...: leave the fast form only when the move needs it."""
        if self.kernel != "dequant":
            probe = fn(torch.empty(0, dtype=torch.bfloat16, device=self.weight.device))
            if probe.dtype != torch.bfloat16 or not self._form_runs_on(probe.device):
                self._use_dequant()
        result = super()._apply(fn, recurse)
        self._use_fast_form_if_fits(placed=True)
        return result

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        weight, scales, zeros = self.canonical_buffers()
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        destination[prefix + "scales"] = scales if keep_vars else scales.detach()
        destination[prefix + "zeros"] = zeros if keep_vars else zeros.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        fast_form = self.kernel != "dequant"
        self._use_dequant()
        super()._load_from_state_dict(*args, **kwargs)
        if fast_form:
            self._use_fast_form_if_fits(placed=True)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 group={self.group_size}, "
                f"kernel={self.kernel}")


def _auto_int4_form(device: torch.device) -> str:
    """"triton" on a CUDA GPU of compute capability TRITON_INT4_FROM or newer, else "tinygemm"."""
    if device.type == "cuda" and torch.cuda.is_available():
        return "triton" if torch.cuda.get_device_capability(device) >= TRITON_INT4_FROM else "tinygemm"
    return "triton"  # the CPU under Triton's interpreter (tests): tinygemm does not run there anyway


def _check_int4_options(*, in_features: int, group_size: int, int4_kernel: str) -> None:
    """One-line errors for a group size that does not divide the inputs and an unknown kernel."""
    if in_features % group_size or group_size % 2:
        raise BadInput(
            f"INT4 needs in_features ({in_features}) to be a multiple of the group size ({group_size}); "
            "choose llm.quantization_group_size among 32, 64, 128 dividing it"
        )
    if int4_kernel not in INT4_KERNELS:
        raise BadInput(f"the INT4 kernel must be one of {', '.join(INT4_KERNELS)}, not {int4_kernel!r}")


def _dequantize(
    q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """``(q - zero) * scale`` per group of unpacked ``q``, as an ``[N, K]`` tensor of ``dtype``."""
    out_features = q.shape[0]
    q = q.to(dtype).view(out_features, -1, group_size)
    w = (q - zeros.to(dtype).unsqueeze(-1)) * scales.to(dtype).unsqueeze(-1)
    return w.reshape(out_features, -1)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row INT8: ``(q, scale)`` with ``weight ≈ q * scale[:, None]``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(weight: torch.Tensor, *, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise INT4: ``(q, scale, zero)``, q in [0, 15] as uint8, one scale and one
    integer zero point per group (``w ≈ (q - zero) * scale``).

    The zero point is rounded but not clamped to [0, 15]: clamped, a group that does not straddle
    0 (all positive or all negative, e.g. a shifted row) had every value clipped to one end of the
    range. Unclamped, its 16 levels still span [min, max] (off by at most half a step), and an
    integer zero stays exact in bf16 and through tinygemm's form and back (``|8 - zero| < 128``).
    """
    out_features, in_features = weight.shape
    w = weight.detach().float().view(out_features, in_features // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp(min=1e-8)
    zero = torch.round(-low / scale)
    q = torch.round(w / scale.unsqueeze(-1) + zero.unsqueeze(-1)).clamp(0, 15).to(torch.uint8)
    return q.view(out_features, in_features), scale, zero


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit values per byte along the last axis (even column in the low nibble)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``."""
    return torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2)


HEAD_NAME = "lm_head"
HEAD_KINDS = ("int8",)


def quantize_model_(
    model: nn.Module,
    kind: str,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    skip: Iterable[str] = (),
    head: str | None = "int8",
    int4_kernel: str = DEFAULT_INT4_KERNEL,
) -> nn.Module:
    """Replace ``model``'s linear layers by weight-only ``kind`` ("int8"/"int4") layers, in place;
    the LM head by ``head`` ("int8", or None: left as it is). ``skip``: names (or name suffixes)
    of linear layers to leave; ``int4_kernel``: ``INT4_KERNELS``, the INT4 layers' CUDA form."""
    if kind not in WEIGHT_ONLY:
        raise BadInput(f"weight-only quantization must be one of {', '.join(WEIGHT_ONLY)}, not {kind!r}")
    if head is not None and head not in HEAD_KINDS:
        raise BadInput(f"the LM head is quantized to one of {', '.join(HEAD_KINDS)} or not at all, not {head!r}")
    targets = _linear_layers(model, skip=tuple(skip), head=head)
    targets.reverse()
    while targets:  # popped one by one: a replaced layer is referenced by nothing and freed at once
        name, linear = targets.pop()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if kind == "int8" or _is_head(name):
            layer: nn.Module = WeightOnlyInt8Linear(linear.weight, linear.bias)
        else:
            layer = WeightOnlyInt4Linear(linear.weight, linear.bias, group_size=group_size, int4_kernel=int4_kernel)
        setattr(parent, child, layer)  # built on the weight's device; no .to(): that would pack for the CPU now
        del linear  # the full-precision weight goes as soon as its replacement exists
    model.config.glmkb_weight_only = {"kind": kind, "group_size": group_size if kind == "int4" else None,
                                      "int4_kernel": int4_kernel if kind == "int4" else None, "lm_head": head}
    return model


def _is_head(name: str) -> bool:
    return _named(name, HEAD_NAME)


def _named(name: str, short: str) -> bool:
    """Whether module ``name`` is ``short`` or ends in ``.short`` (``lm_head``, ``model.lm_head``)."""
    return name == short or name.endswith("." + short)


def _linear_layers(model: nn.Module, *, skip: tuple[str, ...], head: str | None) -> list[tuple[str, nn.Linear]]:
    """``(name, layer)`` of the ``nn.Linear`` layers to quantize: not skipped, and the LM head only
    when ``head`` is set and its weight is not the input embeddings' (tied)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = getattr(embeddings, "weight", None)
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(_named(name, s) for s in skip):
            continue
        if _is_head(name) and (head is None or (tied is not None and module.weight is tied)):
            continue
        layers.append((name, module))
    return layers


def quantize_loaded_(
    model: nn.Module, kind: str, *, group_size: int = DEFAULT_GROUP_SIZE, int4_kernel: str = DEFAULT_INT4_KERNEL
) -> nn.Module:
    """``quantize_model_`` on the linear layers whose weights are loaded (not on the meta device).

    Called after each shard of a streamed load, so a layer is quantized as soon as it is complete
    and the host never holds more than one shard in full precision.
    """
    pending = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(t is not None and t.device.type == "meta" for t in (module.weight, module.bias))
    ]
    return quantize_model_(model, kind, group_size=group_size, skip=tuple(pending), int4_kernel=int4_kernel)


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers: what decoding one token reads, roughly."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
