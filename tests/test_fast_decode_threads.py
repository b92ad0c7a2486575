"""The fast path on threads other than the one that imported Inductor's CUDA graph trees."""

from __future__ import annotations

import threading

from llm.fast_decode.cuda_graphs import adopt_cudagraph_trees_on_this_thread


def test_a_new_worker_thread_gets_cudagraph_tree_state() -> None:
    """Regression: on torch 2.11 the static-cache path failed with a bare ``AssertionError`` for the
    second model of a process, whose worker thread lacked CUDA graph trees' thread-local state
    (``get_obj`` asserts it is there); the shim gives each worker thread its own."""
    from torch._inductor import cudagraph_trees as trees

    seen: dict[str, bool] = {}

    def worker() -> None:
        seen["before"] = hasattr(trees.local, "tree_manager_containers")
        adopt_cudagraph_trees_on_this_thread()
        seen["after"] = hasattr(trees.local, "tree_manager_containers")
        adopt_cudagraph_trees_on_this_thread()  # idempotent
        seen["container"] = isinstance(trees.get_obj(trees.local, "tree_manager_containers"), dict)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"before": False, "after": True, "container": True}
