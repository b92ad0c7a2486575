"""Kernels one captured prompt pass launches, counted on CPU: glmkb's prompt-pass swaps on vs off.

    python -m bench.prompt_ops --out DIR      # CPU, ~1 min (Triton's interpreter runs glmkb's kernels)

The captured prompt pass is CUDA-only, but what it launches is decided in Python: each aten
operation that computes (not a view or other metadata) is one kernel or more on CUDA, each
glmkb Triton launch one. This runs the bucketed prompt pass (what a captured one computes) of the
tiny GLM shape (2 layers, ChatGLM's layout) under ``TRITON_INTERPRET=1`` and counts both, with
``FastDecodeOptions`` as they are by default (packed attention narrowed to the bucket, fused
q/k/v, the attention step's rotary + cache kernel, the RMSNorm and SwiGLU kernels) and with all off (the
model's own forward over the whole static cache, as before session 11). Both runs choose the same
token as ``generate``. The counts say which kernels go, not how long they took: that is
``bench.prefill`` on a GPU.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # read when Triton is imported: before anything imports it

from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from bench.common import char_tokenizer, glm_model, parser, print_table, write_result  # noqa: E402

METADATA = {"view", "_unsafe_view", "t", "transpose", "unsqueeze", "expand", "slice", "select", "detach", "alias",
            "split", "split_with_sizes", "unbind", "permute", "reshape", "squeeze", "as_strided", "empty",
            "empty_strided", "lift_fresh", "chunk", "unflatten", "_reshape_alias", "new_empty", "empty_like",
            "result_type", "sym_size", "is_same_size", "_local_scalar_dense", "item", "resolve_conj", "resolve_neg",
            "contiguous", "set_"}
TRITON_LAUNCHES = (("llm.kernels.rms_norm", "launch_rms_norm"), ("llm.kernels.rope_cache", "launch_rope_cache_write"),
                   ("llm.kernels.swiglu", "launch_swiglu"))


class Counting(TorchDispatchMode):
    """aten operations that compute, by name; paused inside a Triton launch (the interpreter's own copies)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.paused = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.__name__.split(".")[0]
        if not self.paused and name not in METADATA and getattr(func, "namespace", "") != "glmkb":  # glmkb's: counted as launches
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def counted_pass(model: Any, tokenizer: Any, options: Any) -> tuple[Counter[str], torch.Tensor]:
    """Counts of one bucketed prompt pass (the second: the first initialises the static cache)."""
    import importlib

    import llm.fast_decode.prefill as prefill_module
    from llm.streaming import run_generate

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "曹操是谁？"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    kwargs = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], "max_new_tokens": 1,
              "do_sample": False}
    run_generate(model, dict(kwargs), fast_decode=options)
    mode, counts = Counting(), Counter()
    body, patched = prefill_module._prefill_body, []
    for module_name, name in TRITON_LAUNCHES:
        module = importlib.import_module(module_name)
        real = getattr(module, name)

        def launch(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            counts[f"triton:{_name}"] += 1
            mode.paused = True
            try:
                return _real(*args, **kw)
            finally:
                mode.paused = False

        patched.append((module, name, real))
        setattr(module, name, launch)

    def body_counted(*args: Any) -> None:
        with mode:
            body(*args)

    prefill_module._prefill_body = body_counted
    try:
        tokens = run_generate(model, dict(kwargs), fast_decode=options)
    finally:
        prefill_module._prefill_body = body
        for module, name, real in patched:
            setattr(module, name, real)
    counts.update(mode.ops)
    return counts, tokens


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    from llm.fast_decode import FastDecodeOptions

    tokenizer = char_tokenizer(30000)
    model = glm_model("tiny", device="cpu", dtype=torch.float32, tokenizer=tokenizer)
    on = FastDecodeOptions(on_cpu=True, bucketed_prefill_on_cpu=True)
    off = on.model_copy(update={"packed_attention": False, "fused_qkv": False, "fused_rope": False,
                                "prompt_kernels": False})
    result: dict[str, Any] = {"layers": model.config.num_hidden_layers}
    tokens = {}
    for label, options in (("swaps off (before session 11)", off), ("default", on)):
        counts, tokens[label] = counted_pass(model, tokenizer, options)
        result[label] = {"total": sum(counts.values()), "by_op": dict(counts.most_common())}
    if not torch.equal(*tokens.values()):
        raise SystemExit("the two prompt passes chose different tokens")
    rows = [(label, r["total"], round(r["total"] / result["layers"], 1), ", ".join(f"{k} {v}" for k, v in
             list(r["by_op"].items())[:8])) for label, r in result.items() if isinstance(r, dict)]
    print_table("kernels of one prompt pass (tiny GLM, 2 layers)", rows, ("options", "kernels", "per layer", "most"))
    write_result(args.out, "prompt_ops", result)


if __name__ == "__main__":
    main()
