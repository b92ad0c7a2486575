"""CUDA graph helpers shared by the decode step, the prompt pass and ``bench.kernels``."""

from __future__ import annotations

from typing import Any

import torch


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


def raise_recompile_limit(limit: int = 64) -> None:
    """Every decode graph compiles the same forward code for another shape; past torch's default
    of 8 compiles per code object, new shapes would silently run the forward uncompiled."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))
