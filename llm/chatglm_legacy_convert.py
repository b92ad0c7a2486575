"""``convert_checkpoint``: an original ChatGLM2/3 folder written once as a native transformers folder.

Safetensors shards (one per source shard, dtype kept, q/k/v split as ``llm.chatglm_legacy``
describes), ``tokenizer.json`` with the chat template and ``generation_config.json``: plain
``AutoModelForCausalLM`` / ``AutoTokenizer`` load the result, e.g. to use bitsandbytes
quantization. A P-tuning prefix inside the checkpoint is refused (convert the base and pass the
prefix with ``--adapter``), and so is a folder of ChatGLM's own INT4/INT8 weights (glmkb loads
those directly).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llm.chatglm_legacy_config import LegacyCheckpoint, inspect_checkpoint, load_tokenizer, native_generation_config
from llm.chatglm_legacy_weights import PREFIX_NAME, SAFETENSORS_INDEX, iter_converted_shards
from llm.errors import ModelLoadError
from llm.output_folder import check_destination, staged_folder

__all__ = ["convert_checkpoint", "write_shards"]


def convert_checkpoint(src: str | Path, dst: str | Path, *, progress: bool = True) -> Path:
    """Write an original ChatGLM2/3 folder as a native transformers folder at ``dst``; returns ``dst``.

    Streams shard by shard (one output safetensors shard per input shard, dtype kept). Written
    to a hidden sibling folder first and renamed at the end, so a failure leaves nothing behind.
    """
    source = Path(src).expanduser().resolve()
    target = Path(dst).expanduser().resolve()
    check_destination(source, target)
    checkpoint = inspect_checkpoint(source)
    if checkpoint.layout.quantization_bit:
        raise ModelLoadError(
            f"{source} holds ChatGLM's own INT{checkpoint.layout.quantization_bit} weights (quantization_bit in "
            "config.json), which a native transformers folder cannot store; glmkb loads this folder directly "
            "(point llm.model_path at it), or convert the full-precision release"
        )
    tokenizer = load_tokenizer(checkpoint)
    with staged_folder(target) as work:
        source_dtype = write_shards(checkpoint, work, progress=progress)
        generation = native_generation_config(tokenizer, checkpoint)
        config = checkpoint.config
        config.architectures = ["GlmForCausalLM"]
        config.dtype = source_dtype
        config.eos_token_id = generation.eos_token_id
        config.pad_token_id = generation.pad_token_id
        config.save_pretrained(work)
        generation.save_pretrained(work)
        tokenizer.save_pretrained(work, save_jinja_files=False)
    return target


def write_shards(checkpoint: LegacyCheckpoint, work: Path, *, progress: bool) -> torch.dtype:
    """One safetensors shard per source shard (plus the index); returns the weights' main dtype."""
    from safetensors.torch import save_file

    count = len(checkpoint.weight_files)
    names = (
        ["model.safetensors"]
        if count == 1
        else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    )
    weight_map: dict[str, str] = {}
    bytes_by_dtype: dict[torch.dtype, int] = {}
    shards = iter_converted_shards(checkpoint, progress=progress, desc="converting ChatGLM shards")
    for name, (_file, tensors) in zip(names, shards, strict=False):
        # Clone: q/k/v are views of one fused tensor, and safetensors stores no shared memory.
        shard = {key: tensor.contiguous().clone() for key, tensor in tensors}
        if any(key.startswith(PREFIX_NAME) for key in shard):
            raise ModelLoadError(
                f"{checkpoint.path} holds a P-tuning v2 prefix, which is not a weight of the native model; "
                "convert the base model without it and pass the prefix folder with --adapter"
            )
        save_file(shard, str(work / name), metadata={"format": "pt"})
        for key, tensor in shard.items():
            weight_map[key] = name
            size = tensor.numel() * tensor.element_size()
            bytes_by_dtype[tensor.dtype] = bytes_by_dtype.get(tensor.dtype, 0) + size
        del shard
    for _rest in shards:  # runs the completeness check after the last shard
        pass
    if count > 1:
        index = {
            "metadata": {"total_size": sum(bytes_by_dtype.values())},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (work / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2), encoding="utf-8")
    return max(bytes_by_dtype, key=bytes_by_dtype.__getitem__)
