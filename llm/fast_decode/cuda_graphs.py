"""CUDA graph helpers shared by the decode step, the prompt pass and ``bench.kernels``."""

from __future__ import annotations

import threading
from collections import defaultdict
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
    """A CUDA graph holding what ``fn`` launches (``pool``: a memory pool shared with other graphs).

    Captured in thread-local mode (as Inductor's CUDA graph trees capture): the model's worker
    captures while request threads may still call CUDA (a query embedded on the GPU, a tensor read
    back). In PyTorch's default global mode any such call from another thread invalidated the capture
    (the shape then ran eagerly for good) and failed that thread."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        fn()
    torch.cuda.synchronize()
    return graph


def raise_recompile_limit(limit: int = 64) -> None:
    """Every decode graph compiles the same forward code for another shape; past torch's default
    of 8 compiles per code object, new shapes would silently run the forward uncompiled."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def adopt_cudagraph_trees_on_this_thread() -> None:
    """Give this thread the thread-local state ``torch.compile``'s CUDA graph trees look up.

    transformers compiles the static-cache ``generate`` with ``mode="reduce-overhead"`` (CUDA
    graph trees). In torch 2.11 (the lent H200's image) the trees' per-thread containers exist
    only on the thread that first imported ``torch._inductor.cudagraph_trees`` (and on autograd's
    threads); any other thread fails a bare ``assert torch._C._is_key_in_tls(...)`` inside
    ``get_obj``. glmkb generates on one worker thread per model, so the second model of a process
    (a test session, or a server that reloads) lost the static-cache path with "AssertionError: ".
    Newer torch (2.13) initialises the state on first use itself; this does the same, only where
    it is missing.
    """
    try:
        from torch._inductor import cudagraph_trees as trees
    except ImportError:  # no Inductor: nothing compiled with CUDA graph trees
        return
    local = getattr(trees, "local", None)
    if local is None or hasattr(local, "tree_manager_containers"):
        return
    if torch._C._is_key_in_tls("tree_manager_containers"):  # an autograd thread: inherits the state
        return
    initialize = getattr(trees, "_initialize_tls", None)
    if initialize is not None:
        initialize(local)
        return
    local.tree_manager_containers = {}
    local.tree_manager_locks = defaultdict(threading.Lock)
