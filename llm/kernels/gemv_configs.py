"""Which tile sizes the Triton GEMV (``llm.kernels.gemv``) uses for a shape, and how to pick.

No Triton import here: the table and the candidate lists are plain data, so the custom op can
be registered (and its fallback tested) where Triton is missing.

Picking, per ``(weight kind, row bucket, N, K)``, in ``llm.kernels.gemv_op.choose_config``:

0. ``llm.gemv_tiles``: a ``row_tiles.json`` written by ``python -m bench.row_tiles`` on this
   GPU (its one-row winners per shape, INT8 and INT4; ``use_measured_tiles``), for any GPU;
1. ``TUNED``: measured winners (``python -m bench.gemv`` prints them as ``TUNED`` lines);
2. otherwise, on CUDA outside graph capture: ``candidates`` timed once per shape and process
   (a few ms each, plus Triton's compile, cached on disk) and the fastest kept; for float weights
   PyTorch's ``F.linear`` (cuBLAS) competes too, so a shape cuBLAS serves better stays on it;
3. inside a CUDA graph capture, or where timing fails: the first candidate (the heuristic).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

MAX_ROWS = 16  # decode at batch <= 16; past that a GEMM (cuBLAS) is the right kernel
# An int8 weight has no cuBLAS GEMM: past MAX_ROWS PyTorch dequantizes the whole weight per call
# (reads 1 byte, writes and re-reads 2 per weight). Short prompts (<= 64 tokens) read it once
# through the tl.dot tiles instead; run 17, H200, 45-token prompt: INT8 TTFT 28.2 ms against
# bf16's 12.6 ms before.
MAX_INT8_ROWS = 64
# Up to this many rows an int8 weight may take the Triton kernel instead (``int8_row_limit``; tiles of
# ``block_m`` rows, GEMM-like, a shape's ``TUNED`` entry "torch" keeping the cast): prompts past 64
# tokens (RAG prompts), where the cast for cuBLAS cost an INT8 model ~5 ms of its first token
# against bf16 (run 26). Session 22 (H100, ``python -m bench.int8_tiles``): the four 6B GEMMs of a
# layer 401.7 -> 210.2 us at 128 rows, and, without the 256-row tiles found wrong since, by the same
# sweep's figures 433 -> 324 at 256, 550 -> 503 at 512, and the cast at 1024 rows but for o_proj.
# Past 1024 rows the cast stays (not measured there).
# Off in session 23 (run 28 on an H100: the INT8 6B forward of 256 tokens had logits error 0.583
# against bf16, 0.178 with the cast), on again since session 24: run 29 (H100) checked every
# candidate and pinned tile of the 6B shapes at 64-512 rows against the exact product, and only the
# 256-row tile was wrong (``MAX_BLOCK_M_TILE``); the others were all at 1.7e-3, the bf16 rounding.
INT8_GEMM_ROWS = 1024
DOT_MIN_ROWS = 5  # from here on tl.dot on 16-row tiles rather than the broadcast accumulator
MAX_BLOCK_M = 64  # rows per program where a config does not say (``GemvConfig.block_m``)
# The most rows a config may give one program. Run 29 (H100, ``.dev``'s per-tile check, x bf16
# against the exact product): the 256-row tile m256n128k64s1w8p3t had relative error 0.08-0.11 at
# 256 and 512 rows on all five 6B shapes (as a 128-row tile, at 128 rows, 1.7e-3 like the rest),
# and run 27 had pinned it for five shapes on its timings alone.
MAX_BLOCK_M_TILE = 128


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes and launch options of one kernel launch."""

    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    block_m: int = 0  # rows per program; 0: all of them up to MAX_BLOCK_M
    weight_first: bool = False  # tl.dot tiles: W @ x.T (the weight as the A operand) instead of x @ W.T

    def __post_init__(self) -> None:
        if self.block_m > MAX_BLOCK_M_TILE:
            raise ValueError(f"GEMV tiles of {self.block_m} rows computed wrong products on Hopper; "
                             f"at most {MAX_BLOCK_M_TILE} rows per tile")

    def __str__(self) -> str:  # compact, for bench tables and ``TUNED``
        rows = f"m{self.block_m}" if self.block_m else ""
        order = "t" if self.weight_first else ""
        return f"{rows}n{self.block_n}k{self.block_k}s{self.split_k}w{self.num_warps}p{self.num_stages}{order}"

    @classmethod
    def parse(cls, text: str) -> GemvConfig:
        """The inverse of ``str``: ``"n16k512s1w4p3"``, ``"m128n128k64s1w8p3"``, ``"n64k64s4w4p4t"``."""
        m = re.fullmatch(r"(?:m(\d+))?n(\d+)k(\d+)s(\d+)w(\d+)p(\d+)(t?)", text)
        if m is None:
            raise ValueError(f"not a GEMV config: {text!r} (expected like n16k512s1w4p3)")
        *numbers, order = m.groups()
        block_m, *rest = (int(g) if g else 0 for g in numbers)
        return cls(*rest, block_m=block_m, weight_first=order == "t")


TORCH = "torch"  # a choice meaning: PyTorch (cuBLAS) for this shape, it beat every Triton config
Choice = GemvConfig | str  # a config, or TORCH

# Measured winners: (kind "int8" | "float", row bucket, N, K) -> config string or "torch", from a
# sweep on one lent H200 (run 15, docs/bench-results/gemv_sweep_run15*.h200.json):
# the ChatGLM3-6B decode GEMVs at M = 1 (q/k/v fused, o_proj, gate_up, down, LM head). Shapes not
# listed are tuned on first use in each process.
TUNED_CAPABILITY = (9, 0)  # the GPUs TUNED was measured on (H100/H200); others time candidates
TUNED: dict[tuple[str, int, int, int], str] = {
    ("float", 1, 4608, 4096): "n2k4096s1w4p1",  # 11.1 us (cuBLAS 13.8)
    ("float", 1, 4096, 4096): "n4k2048s1w4p1",  # 10.0 us (cuBLAS 13.3)
    ("float", 1, 27392, 4096): "n4k2048s1w4p1",  # 51.8 us (cuBLAS 62.3)
    ("float", 1, 4096, 13696): "n4k2048s1w4p1",  # 28.0 us (cuBLAS 31.7)
    ("float", 1, 65024, 4096): "n4k2048s1w4p1",  # 119.1 us (cuBLAS 131.5)
    # int8 at M = 1: ``_int8_row_kernel`` with compile-time row strides and a masked tail (run 21c,
    # ``python -m bench.row_tiles``, docs/bench-results/row_tiles.run21c.h200.json; the tiles
    # pinned before, and the LM head's timed pick, took 7.73 / 6.29 / 28.97 / 18.22 / 66.95 us there)
    ("int8", 1, 4608, 4096): "n2k2048s1w2p1",  # 6.99 us
    ("int8", 1, 4096, 4096): "n4k4096s1w4p1",  # 6.18 us
    ("int8", 1, 27392, 4096): "n8k2048s1w4p1",  # 28.66 us
    ("int8", 1, 4096, 13696): "n2k2048s1w2p1",  # 15.90 us
    ("int8", 1, 65024, 4096): "n2k1024s1w2p1",  # 63.19 us (the INT8 LM head)
    # int8 prompts of <= 64 tokens (every captured prompt pass: bucket 64), ``tl.dot`` tiles: run 26,
    # ``python -m bench.gemv --rows 64`` on an H200 over 40 candidates, us (the timed pick among the four
    # one-slice tiles before: 23.6 / 18.8 / 70.6 / 59.1; bf16 cuBLAS 12.7 / 11.7 / 64.7 / 35.3)
    ("int8", 64, 4608, 4096): "n64k64s4w4p4",  # 15.75
    ("int8", 64, 4096, 4096): "n64k64s4w4p4",  # 19.43
    ("int8", 64, 27392, 4096): "n64k64s1w4p4",  # 60.12
    ("int8", 64, 4096, 13696): "n64k128s4w4p3",  # 31.16
    # int8 prompts of 65-1024 tokens, tiles of 64-128 rows (``t``: the weight as the A operand): session 22,
    # ``python -m bench.int8_tiles`` on an H100 (no H200 was lent), us against the cast + cuBLAS path;
    # "torch" keeps the cast where no tile beat it. Run 27 had 256-row tiles in five of these; wrong
    # (``MAX_BLOCK_M_TILE``), they gave way in session 24 to the best 64-128-row tile of the same sweep
    ("int8", 128, 4608, 4096): "m64n64k64s1w4p4",  # 31.8 (cast 36.1)
    ("int8", 128, 4096, 4096): "m64n64k64s1w4p4",  # 24.2 (33.3)
    ("int8", 128, 27392, 4096): "m128n128k64s1w8p4",  # 74.0 (218.1)
    ("int8", 128, 4096, 13696): "m64n64k64s1w4p4",  # 80.2 (114.2)
    ("int8", 256, 4608, 4096): "m128n128k64s1w8p4t",  # 41.3 (41.4)
    ("int8", 256, 4096, 4096): "m64n64k64s1w4p4",  # 31.5 (37.3)
    ("int8", 256, 27392, 4096): "m128n128k64s1w8p4",  # 147.1 (232.3)
    ("int8", 256, 4096, 13696): "m64n64k64s1w4p4",  # 104.4 (122.0)
    ("int8", 512, 4608, 4096): "torch",  # cast 52.9 (best tile 65.7)
    ("int8", 512, 4096, 4096): "m128n128k64s1w8p4t",  # 41.1 (47.3)
    ("int8", 512, 27392, 4096): "m128n128k64s1w8p4",  # 277.8 (305.5)
    ("int8", 512, 4096, 13696): "m128n128k64s1w8p4t",  # 131.0 (152.3)
    ("int8", 1024, 4608, 4096): "torch",  # cast 84.8 (best tile 111.5)
    ("int8", 1024, 4096, 4096): "m128n128k64s1w8p4",  # 70.4 (73.4)
    ("int8", 1024, 27392, 4096): "torch",  # cast 501.9 (best tile 527.2)
    ("int8", 1024, 4096, 13696): "torch",  # cast 221.3 (best tile 253.6)
}


def int8_row_limit() -> int:
    """Rows up to which an int8 weight takes the Triton kernel (``INT8_GEMM_ROWS``, at least
    ``MAX_INT8_ROWS``); read at each call, so a bench can raise it for a process."""
    return max(MAX_INT8_ROWS, INT8_GEMM_ROWS)


def row_bucket(rows: int) -> int:
    """Rows rounded up to a power of two (1, 2, 4, 8, 16, and 32, 64 for int8 prompts): the batch
    sizes the decode graph pads to."""
    return 1 << max(0, rows - 1).bit_length()


def weight_kind(int8: bool) -> str:
    return "int8" if int8 else "float"


def candidates(rows: int, n: int, k: int, *, int8: bool) -> list[GemvConfig]:
    """Configs worth timing for this shape, the heuristic first.

    Why these: a decode GEMV is bound by the bytes in flight per SM, so tiles are wide along K
    (16-byte vector loads, 4-16 KiB per program per step) and narrow along N (enough programs to
    fill 132 SMs at N=4096: 4096/16 = 256). Float32 registers of the broadcast accumulator
    (``rows x block_n x block_k / threads``) stay <= 64 per thread. Tall K (down_proj, 13696)
    adds split-K variants, which double the programs at the cost of a small float32 reduction.
    """
    if rows > MAX_INT8_ROWS:  # int8 prompts past 64 tokens (``INT8_GEMM_ROWS``): GEMM tiles, 64-128 rows each;
        # session 22's winners (H100, the 6B shapes at 128-1024 rows), the most robust first
        return [GemvConfig(128, 64, num_warps=8, num_stages=4, block_m=128),
                GemvConfig(64, 64, num_stages=4, block_m=64),
                GemvConfig(128, 64, num_warps=8, num_stages=4, block_m=128, weight_first=True)]
    if rows > MAX_ROWS:  # int8 prompts: tl.dot on 64-row tiles, one read of the weight; run 26 (H200, M = 64):
        # 64 x 64 tiles in 4 K-slices won 3 of 4 shapes, one slice on wide gate_up (N / 64 = 428 programs
        # already); the one-slice 32 x 128 heuristic before filled only N / 32 = 128-144 programs
        first = GemvConfig(64, 64, split_k=4 if n <= 8192 else 1, num_stages=4)
        others = [GemvConfig(64, 64, num_stages=4), GemvConfig(64, 128, split_k=4), GemvConfig(64, 128),
                  GemvConfig(32, 128, split_k=4), GemvConfig(32, 128), GemvConfig(128, 64, split_k=2, num_warps=8)]
        return [first, *(c for c in others if c != first)]
    elif rows >= DOT_MIN_ROWS:  # tl.dot needs block_n, block_k >= 16
        base = [GemvConfig(32, 128), GemvConfig(64, 128), GemvConfig(16, 256), GemvConfig(32, 256, num_stages=4)]
    elif rows == 1 and int8:  # run 21c's sweep (``_int8_row_kernel``): 2-8 rows x 1-4 KiB per step, one stage
        base = [GemvConfig(2, 2048, num_warps=2, num_stages=1), GemvConfig(8, 2048, num_stages=1),
                GemvConfig(4, 4096, num_stages=1), GemvConfig(2, 1024, num_warps=2, num_stages=1),
                GemvConfig(4, 2048, num_stages=1)]
    elif rows == 1:  # run 15's sweep: 2-4 rows x 4-8 KiB per step beat cuBLAS on every 6B shape
        base = [GemvConfig(4, 2048, num_stages=1), GemvConfig(2, 4096, num_stages=1),
                GemvConfig(1, 512, num_stages=1), GemvConfig(8, 1024, num_stages=1)]
    else:
        base = [GemvConfig(8, 256), GemvConfig(16, 128), GemvConfig(4, 512), GemvConfig(16, 256, num_warps=8)]
    if k >= 2 * n and rows > 1:  # tall K: the same tiles with 2 and 4 K-slices (at M = 1 the narrow
        # tiles already give N / block_n >= 1024 programs; split-K lost there in run 14)
        base += [replace(c, split_k=s) for c in base[:2] for s in (2, 4)]
    return base


_measured: dict[tuple[str, int, int], str] = {}  # set by use_measured_tiles for the process
_forget: list[Callable[[], None]] = []  # the ops' caches of tiles already chosen (``on_tiles_changed``)


def on_tiles_changed(forget: Callable[[], None]) -> None:
    """Have ``use_measured_tiles`` call ``forget`` when the table changes: each GEMV op keeps the
    tile it chose per shape for the process, and without this a second model loaded with another
    ``llm.gemv_tiles`` would keep the first one's tiles for every shape already seen."""
    _forget.append(forget)


def use_measured_tiles(path: str | os.PathLike[str] | None) -> None:
    """Take the one-row winners of a ``row_tiles.json`` written by ``python -m bench.row_tiles`` on
    this GPU (``llm.gemv_tiles``) for the rest of the process, or none (None): ``("int8" | "int4",
    N, K)`` -> the tile as that file writes it (``GemvConfig`` text for INT8, ``"(block_n, block_k,
    warps)"`` for INT4). A file that cannot be read is a one-line ValueError, not a silent fallback.
    A table unlike the one before makes the ops choose again (graphs already captured keep theirs)."""
    tiles = _read_tiles(path) if path is not None else {}
    if tiles != _measured:
        _measured.clear()
        _measured.update(tiles)
        for forget in _forget:
            forget()


def _read_tiles(path: str | os.PathLike[str]) -> dict[tuple[str, int, int], str]:
    """``use_measured_tiles``' table from the file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)["results"]
        return {(kind, int(entry["N"]), int(entry["K"])): entry[kind]["best"]["tile"]
                for entry in results.values() for kind in ("int8", "int4")
                if isinstance(entry.get(kind), dict) and entry[kind].get("best")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"llm.gemv_tiles={path}: not a row_tiles.json of bench.row_tiles "
                         f"({type(e).__name__}: {e})") from e


def measured_tiles() -> dict[tuple[str, int, int], str]:
    """The tiles ``use_measured_tiles`` took (empty unless ``llm.gemv_tiles`` is set)."""
    return _measured


def measured_int4_tile(n: int, k: int) -> tuple[int, int, int] | None:
    """``measured_tiles``' INT4 one-row tile for an ``N x K`` weight, if the file has one."""
    text = measured_tiles().get(("int4", n, k))
    return None if text is None else tuple(int(v) for v in text.strip("()").split(","))  # type: ignore[return-value]


def measured(rows: int, n: int, k: int, *, int8: bool) -> Choice | None:
    """``measured_tiles``' winner for this shape (one row, INT8), if any."""
    text = measured_tiles().get(("int8", n, k)) if rows == 1 and int8 else None
    return None if text is None else GemvConfig.parse(text)


def tuned(rows: int, n: int, k: int, *, int8: bool) -> Choice | None:
    """The checked-in winner for this shape, if any."""
    text = TUNED.get((weight_kind(int8), row_bucket(rows), n, k))
    return None if text is None else TORCH if text == TORCH else GemvConfig.parse(text)
