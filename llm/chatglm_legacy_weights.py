"""Reading and converting the weights of original ChatGLM2/3-6B checkpoints (``llm.chatglm_legacy``).

Shards are read lazily and never unpickled beyond plain tensors (``iter_shard``); each original
tensor is checked against the shape its layout implies and renamed, and the fused
``query_key_value`` split into q/k/v, for transformers' native ``GlmForCausalLM``
(``convert_tensor``, ``iter_converted_shards``). The config mapping is
``llm.chatglm_legacy_config``, the loader ``llm.chatglm_legacy``.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from llm.errors import ModelLoadError

if TYPE_CHECKING:
    from llm.chatglm_legacy_config import Layout, LegacyCheckpoint

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
PREFIX_NAME = "prefix_encoder."


def find_weight_files(path: Path) -> tuple[list[Path], Path | None]:
    """Weight files in load order: from the index (safetensors preferred), else the single file."""
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = path / index_name
        if index.is_file():
            return files_from_index(index), index
    for name in SINGLE_FILES:
        if (path / name).is_file():
            return [path / name], None
    found = sorted(p.name for p in [*path.glob("*.safetensors"), *path.glob("*.bin")])
    raise ModelLoadError(
        f"no weight index ({SAFETENSORS_INDEX} or {BIN_INDEX}) and no single weight file "
        f"({' or '.join(SINGLE_FILES)}) in {path}"
        + (f"; found {', '.join(found)} but nothing says which tensors they hold" if found else "")
        + ". Download the model folder again"
    )


def files_from_index(index: Path) -> list[Path]:
    """Shard files named by an index json, each checked to exist."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{index} is not a valid weight index (needs a weight_map): {e}") from e
    files = [index.parent / name for name in names]
    missing = [file for file in files if not file.is_file()]
    if missing:
        raise ModelLoadError(
            f"shard {missing[0]} named in {index} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; the download is incomplete, download the missing files again"
        )
    return files


# ----- reading and converting tensors -------------------------------------------------------


def iter_shard(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of one shard, read lazily (mmap / safe_open) and never unpickled."""
    from llm.loading import is_lfs_pointer

    if is_lfs_pointer(file):  # else a .bin pointer read as "more than plain tensors ... could run code"
        raise ModelLoadError(
            f"{file} is a git-lfs pointer, not the weights; run `git lfs pull` in {file.parent}, "
            "or download the model again"
        )
    if file.suffix == ".safetensors":
        yield from _iter_safetensors(file)
    else:
        yield from _iter_torch_bin(file)


def _iter_safetensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                yield name, handle.get_tensor(name)
    except SafetensorError as e:
        raise ModelLoadError(f"{file} is not a readable safetensors file ({e}); download it again") from e


def _iter_torch_bin(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(file, map_location="cpu", weights_only=True)  # old (non-zip) format
    except pickle.UnpicklingError as e:
        raise ModelLoadError(
            f"{file} holds more than plain tensors; refusing to unpickle it (it could run code): {e}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelLoadError(f"{file} is not a readable PyTorch weight file ({e}); download it again") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{file} is not a state dict of tensors")
    try:
        while state:
            name = next(iter(state))
            yield name, state.pop(name)
    finally:
        del state


_ORIGINAL_KEY = re.compile(
    r"^(?:transformer\.)?(?:"
    r"(?P<embed>embedding\.word_embeddings\.weight)"
    r"|encoder\.layers\.(?P<layer>\d+)\.(?P<part>"
    r"input_layernorm\.weight|post_attention_layernorm\.weight"
    r"|self_attention\.query_key_value\.(?:weight|weight_scale|bias)"
    r"|(?:self_attention\.dense|mlp\.dense_h_to_4h|mlp\.dense_4h_to_h)\.(?:weight|weight_scale))"
    r"|(?P<final>encoder\.final_layernorm\.weight)"
    r"|(?P<head>output_layer\.weight)"
    r"|(?P<rotary>rotary_pos_emb\.inv_freq)"
    r"|(?P<prefix>prefix_encoder\.(?:embedding\.weight|trans\.[02]\.(?:weight|bias)))"
    r")$"
)
_LAYER_PARTS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
    "self_attention.dense.weight_scale": "self_attn.o_proj.weight_scale",
    "mlp.dense_h_to_4h.weight_scale": "mlp.gate_up_proj.weight_scale",
    "mlp.dense_4h_to_h.weight_scale": "mlp.down_proj.weight_scale",
}
# The linear weights ChatGLM's quantize() replaces by int8 ``weight`` + ``weight_scale`` (llm.chatglm_legacy_quantized).
QUANTIZED_LINEARS = ("self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")


def expected_shapes(layout: Layout) -> dict[str, tuple[int, ...]]:
    """Original tensor name (without ``transformer.``) -> shape, for every tensor that must be present."""
    h, attn = layout.hidden_size, layout.num_heads * layout.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "embedding.word_embeddings.weight": (layout.vocab_size, h),
        "encoder.final_layernorm.weight": (h,),
        "output_layer.weight": (layout.vocab_size, h),
    }
    for i in range(layout.num_layers):
        prefix = f"encoder.layers.{i}."
        shapes[prefix + "input_layernorm.weight"] = (h,)
        shapes[prefix + "post_attention_layernorm.weight"] = (h,)
        shapes[prefix + "self_attention.query_key_value.weight"] = (layout.qkv_rows, h)
        if layout.qkv_bias:
            shapes[prefix + "self_attention.query_key_value.bias"] = (layout.qkv_rows,)
        shapes[prefix + "self_attention.dense.weight"] = (h, attn)
        shapes[prefix + "mlp.dense_h_to_4h.weight"] = (2 * layout.ffn_hidden_size, h)
        shapes[prefix + "mlp.dense_4h_to_h.weight"] = (h, layout.ffn_hidden_size)
        if layout.quantization_bit:
            for linear in QUANTIZED_LINEARS:
                rows, columns = shapes[f"{prefix}{linear}.weight"]
                shapes[f"{prefix}{linear}.weight"] = (rows, columns * layout.quantization_bit // 8)
                shapes[f"{prefix}{linear}.weight_scale"] = (rows,)
    return shapes


def convert_tensor(
    name: str, tensor: torch.Tensor, layout: Layout, shapes: dict[str, tuple[int, ...]], file: Path
) -> list[tuple[str, torch.Tensor]]:
    """Native ``(name, tensor)`` pairs for one original tensor (none for the rotary buffer)."""
    match = _ORIGINAL_KEY.match(name)
    if match is None:
        raise ModelLoadError(
            f"{file} holds tensor {name!r}, which is not part of a ChatGLM2/3 model (adapter or "
            "p-tuning weights, or another architecture?); remove it or use the original release"
        )
    if match["rotary"]:
        return []
    short = name.removeprefix("transformer.")
    if match["prefix"] and short not in shapes:
        raise ModelLoadError(
            f"{file} holds the P-tuning prefix tensor {name!r}, but config.json has no pre_seq_len (or "
            "prefix_projection disagrees); copy config.json from the P-tuning training output"
        )
    if short not in shapes:
        raise ModelLoadError(
            f"{file} holds {name!r}, which config.json does not call for "
            f"(num_layers {layout.num_layers}, add_qkv_bias {layout.qkv_bias}); config and weights do not match"
        )
    if tuple(tensor.shape) != shapes[short]:
        raise ModelLoadError(
            f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, but config.json implies "
            f"{shapes[short]}; config and weights do not match (wrong or corrupt file?)"
        )
    check_quantized_dtype(short, tensor, layout, file)
    if match["prefix"]:
        return [(short, tensor)]  # "prefix_encoder.…": kept apart by the loader
    if match["embed"]:
        return [("model.embed_tokens.weight", tensor)]
    if match["final"]:
        return [("model.norm.weight", tensor)]
    if match["head"]:
        return [("lm_head.weight", tensor)]
    prefix = f"model.layers.{match['layer']}."
    part = match["part"]
    if part.startswith("self_attention.query_key_value."):
        kind = part.rsplit(".", 1)[1]
        q, k, v = split_qkv(tensor, layout)
        return [(f"{prefix}self_attn.{proj}.{kind}", t) for proj, t in (("q_proj", q), ("k_proj", k), ("v_proj", v))]
    return [(prefix + _LAYER_PARTS[part], tensor)]


def check_quantized_dtype(short: str, tensor: torch.Tensor, layout: Layout, file: Path) -> None:
    """ChatGLM's quantized linear weights are int8 (two nibbles per byte at 4 bits); anything else is not."""
    linear_weight = short.endswith(".weight") and short.removesuffix(".weight").endswith(QUANTIZED_LINEARS)
    quantized = bool(layout.quantization_bit) and linear_weight
    if quantized and tensor.dtype != torch.int8:
        raise ModelLoadError(
            f"{file}: tensor 'transformer.{short}' is {str(tensor.dtype).removeprefix('torch.')}, but config.json "
            f"(quantization_bit {layout.quantization_bit}) says it holds ChatGLM's int8-stored quantized weights; "
            "config and weights do not match"
        )
    if not quantized and tensor.dtype in (torch.int8, torch.uint8):
        raise ModelLoadError(
            f"{file}: tensor 'transformer.{short}' holds integers, but config.json has no quantization_bit for them "
            "(a quantized checkpoint's config.json sets quantization_bit 4 or 8); config and weights do not match"
        )


def split_qkv(fused: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value rows of ``query_key_value`` (weight or bias), in GLM's head order."""
    d = layout.head_dim
    if layout.multi_query:
        q_rows, kv_rows = layout.num_heads * d, layout.num_kv_heads * d
        q, k, v = fused.split([q_rows, kv_rows, kv_rows], dim=0)
        return q, k, v
    # Without multi-query attention the original views the output as [heads, 3 * head_dim].
    per_head = fused.reshape(layout.num_heads, 3, d, *fused.shape[1:])
    q, k, v = (per_head[:, i].reshape(layout.num_heads * d, *fused.shape[1:]) for i in range(3))
    return q, k, v


def iter_converted_shards(
    checkpoint: LegacyCheckpoint, *, progress: bool | None, desc: str
) -> Iterator[tuple[Path, Iterator[tuple[str, torch.Tensor]]]]:
    """Per shard: its file and its native tensors (consume them before the next shard).

    After the last shard, checks that the checkpoint held every tensor exactly once.
    ``progress=None`` shows a bar only on a terminal.
    """
    from tqdm.auto import tqdm

    shapes = expected_shapes(checkpoint.layout)
    if checkpoint.prefix is not None:
        shapes.update({PREFIX_NAME + name: size for name, size in checkpoint.prefix.tensor_shapes().items()})
    seen: dict[str, Path] = {}
    disable = None if progress is None else not progress
    for file in tqdm(checkpoint.weight_files, desc=desc, unit="shard", disable=disable):
        yield file, convert_shard(file, checkpoint.layout, shapes, seen)
    missing = [name for name in shapes if name not in seen and not name.startswith(PREFIX_NAME)]
    if missing:
        where = checkpoint.index_file or checkpoint.weight_files[0]
        raise ModelLoadError(
            f"{len(missing)} tensor(s) missing from the weights of {checkpoint.path} (per {where.name}), "
            f"e.g. transformer.{missing[0]}; the shards are incomplete or from another model"
        )


def convert_shard(
    file: Path, layout: Layout, shapes: dict[str, tuple[int, ...]], seen: dict[str, Path]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Native tensors of one shard, recording each original name in ``seen``."""
    for name, tensor in iter_shard(file):
        short = name.removeprefix("transformer.")
        if short in seen:
            raise ModelLoadError(f"tensor {name!r} appears twice: in {seen[short]} and {file}")
        seen[short] = file
        yield from convert_tensor(name, tensor, layout, shapes, file)
