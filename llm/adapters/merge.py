"""``write_merged_checkpoint``: a model folder plus a LoRA adapter written as one native folder.

The result has the adapter folded into the weights (peft's ``merge_and_unload``), so it loads
without peft, quantizes with bitsandbytes and takes the CUDA fast path like any base model. The
weights keep the source's dtype; the model is loaded on the CPU once (about 2 bytes per parameter
for fp16/bf16 sources). Written to a hidden sibling folder first and renamed at the end.
"""

from __future__ import annotations

from pathlib import Path

from llm.adapters import adapter_kind
from llm.adapters.errors import AdapterError

DTYPE_NAMES = {"float16", "bfloat16", "float32"}


def source_dtype(folder: Path) -> str:
    """The dtype the source weights are stored in (config.json's torch_dtype/dtype), float32 if unknown."""
    from llm.loading import read_model_config

    config = read_model_config(folder)
    name = str(config.get("torch_dtype") or config.get("dtype") or "float32").removeprefix("torch.")
    return name if name in DTYPE_NAMES else "float32"


def write_merged_checkpoint(src: str | Path, adapter: str | Path, dst: str | Path) -> Path:
    """Load ``src`` (original ChatGLM2/3 or native folder) with the LoRA ``adapter`` merged; write it to ``dst``."""
    from llm.loading import find_model_folder, load_model_and_tokenizer
    from llm.output_folder import check_destination, staged_folder

    source = find_model_folder(src).resolve()
    target = Path(dst).expanduser().resolve()
    check_destination(source, target)
    if adapter_kind(adapter) != "lora":
        raise AdapterError(
            f"{adapter} is a P-tuning v2 prefix, which cannot be merged into weights; convert the base model "
            "without --adapter and pass the prefix with --adapter when serving"
        )
    model, tokenizer = load_model_and_tokenizer(
        source, device="cpu", dtype=source_dtype(source), adapter=adapter, merge_adapter=True
    )
    with staged_folder(target) as work:
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
    return target
