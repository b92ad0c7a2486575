"""P-tuning v2 prefixes (THUDM's ChatGLM2/3 ``ptuning/`` checkpoints) on transformers' native GLM model.

Layout, as ChatGLM2's ``PrefixEncoder``/``get_prompt`` define it: an embedding of ``pre_seq_len``
rows of ``num_layers * 2 * kv_groups * head_dim`` values (``transformer.prefix_encoder.embedding``),
with ``prefix_projection`` followed by Linear(kv -> hidden), tanh, Linear(hidden -> kv)
(``trans.0``/``trans.2``). Row ``t`` viewed as ``[num_layers * 2, kv_groups, head_dim]`` holds
layer ``i``'s key for prefix position ``t`` at index ``2i`` and its value at ``2i + 1``.

Those keys/values enter every layer's cache before the prompt exactly as computed: no rotary
embedding is applied to them. Every real token attends to all of them, and real tokens keep the
rotary positions 0, 1, ... they have without a prefix (ChatGLM2 numbers positions from the input
ids, never from the cache length). ``attach_prefix`` implements that as a forward pre-hook on the
decoder, so ``generate``, streaming and batching run unchanged: on a fresh (empty) cache the hook
writes the prefix into it, extends a 2-D attention mask by ``pre_seq_len`` ones, and supplies
position ids that ignore the prefix when the caller gave none.

The fast decode path (``llm.fast_decode``) keeps its own static cache: it claims that cache
(``claim_cache``), so the hook leaves it alone, and writes ``prefix_cache_entries(model, batch)``
into its slots ``[0, pre_seq_len)`` itself (``llm.fast_decode.prefix``), with masks and positions
built the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llm.adapters.errors import AdapterError
from llm.cache_kwarg import cache_kwarg_of

KEY_PREFIX = "transformer.prefix_encoder."
CLAIMED_CACHE = "glmkb_prefix_placed_by_caller"  # a cache attribute: its owner writes the prefix, not the hook
PREFIX_DROPOUT = 0.1  # ChatGLM2's get_prompt applies Dropout(0.1) to the prefix while training


@dataclass(frozen=True)
class PrefixShape:
    """Sizes of a prefix encoder, from the base model it belongs to."""

    pre_seq_len: int
    projection: bool
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def kv_size(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Encoder tensor name (without ``transformer.prefix_encoder.``) -> shape."""
        shapes: dict[str, tuple[int, ...]] = {"embedding.weight": (self.pre_seq_len, self.kv_size)}
        if self.projection:
            shapes.update(
                {
                    "trans.0.weight": (self.hidden_size, self.kv_size),
                    "trans.0.bias": (self.hidden_size,),
                    "trans.2.weight": (self.kv_size, self.hidden_size),
                    "trans.2.bias": (self.kv_size,),
                }
            )
        return shapes


class PrefixEncoder(nn.Module):
    """Per-layer key/value prefixes from ``pre_seq_len`` learned rows (optionally through a 2-layer MLP)."""

    def __init__(self, shape: PrefixShape) -> None:
        super().__init__()
        self.shape = shape
        self.embedding = nn.Embedding(shape.pre_seq_len, shape.kv_size)
        self.trans = (
            nn.Sequential(nn.Linear(shape.kv_size, shape.hidden_size), nn.Tanh(), nn.Linear(shape.hidden_size, shape.kv_size))
            if shape.projection
            else None
        )
        self.dropout = nn.Dropout(PREFIX_DROPOUT)

    def forward(self, batch_size: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Layer i's ``(key, value)``, each ``[batch, kv_heads, pre_seq_len, head_dim]`` in ``dtype``."""
        s = self.shape
        rows = self.embedding.weight
        if self.trans is not None:
            rows = self.trans(rows)
        prefix = rows.to(dtype).view(1, s.pre_seq_len, s.num_layers * 2, s.num_kv_heads, s.head_dim)
        prefix = self.dropout(prefix.expand(batch_size, -1, -1, -1, -1))
        # [batch, P, layers * 2, kv_heads, head_dim] -> [layers * 2, batch, kv_heads, P, head_dim]
        per_layer = prefix.permute(2, 0, 3, 1, 4)
        return [(per_layer[2 * i], per_layer[2 * i + 1]) for i in range(s.num_layers)]


# ----- reading a checkpoint -------------------------------------------------------------------


def is_ptuning_folder(folder: Path) -> bool:
    """A P-tuning checkpoint: config.json with ``pre_seq_len``, or weights holding prefix-encoder tensors."""
    config = _read_json(folder / "config.json")
    if config.get("pre_seq_len") is not None:
        return True
    return any(name.startswith(KEY_PREFIX) for name, _ in _iter_weight_names(folder))


def read_ptuning_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, prefix encoder tensors without the key prefix)`` of a THUDM ``ptuning/`` output folder.

    Only the prefix-encoder tensors are read; a full checkpoint's other tensors are skipped.
    ``training_args.bin`` (a pickle of Python objects) is never opened.
    """
    from llm.chatglm_legacy import find_weight_files, iter_shard

    config = _read_json(folder / "config.json")
    files, _index = find_weight_files(folder)
    tensors = {
        name.removeprefix(KEY_PREFIX): tensor
        for file in files
        for name, tensor in iter_shard(file)
        if name.startswith(KEY_PREFIX)
    }
    if not tensors:
        raise AdapterError(
            f"{folder} holds no {KEY_PREFIX}* tensors: not a P-tuning v2 checkpoint "
            "(point --adapter at the checkpoint-N folder THUDM's ptuning/main.py wrote)"
        )
    if config.get("pre_seq_len") is None:
        raise AdapterError(
            f"{folder / 'config.json'} has no pre_seq_len, so the P-tuning prefix length is unknown; "
            "copy config.json from the training output (it sets pre_seq_len and prefix_projection)"
        )
    return config, tensors


def read_pre_seq_len(value: Any, config_file: Path) -> int:
    """A config.json's ``pre_seq_len`` (the prefix length) as a positive integer."""
    try:
        pre_seq_len = int(value)
    except (TypeError, ValueError) as e:
        raise AdapterError(f"{config_file}: pre_seq_len must be an integer ({e})") from e
    if pre_seq_len <= 0:
        raise AdapterError(f"{config_file}: pre_seq_len must be positive (got {pre_seq_len})")
    return pre_seq_len


def prefix_shape_for(model: Any, config: dict[str, Any], folder: Path) -> PrefixShape:
    """The encoder shape this checkpoint must have on ``model`` (checked against the checkpoint's own config)."""
    mc = model.config
    pre_seq_len = read_pre_seq_len(config["pre_seq_len"], folder / "config.json")
    shape = PrefixShape(
        pre_seq_len=pre_seq_len,
        projection=bool(config.get("prefix_projection", False)),
        num_layers=int(mc.num_hidden_layers),
        num_kv_heads=int(mc.num_key_value_heads),
        head_dim=int(getattr(mc, "head_dim", None) or mc.hidden_size // mc.num_attention_heads),
        hidden_size=int(mc.hidden_size),
    )
    check_base_fields(config, shape, folder)
    return shape


def check_base_fields(config: dict[str, Any], shape: PrefixShape, folder: Path) -> None:
    """ChatGLM fields in the checkpoint's config.json must describe the model it is applied to."""
    expected = {
        "num_layers": shape.num_layers,
        "multi_query_group_num": shape.num_kv_heads,
        "kv_channels": shape.head_dim,
        "hidden_size": shape.hidden_size,
    }
    for field, value in expected.items():
        if field in config and config[field] is not None and int(config[field]) != value:
            raise AdapterError(
                f"the P-tuning checkpoint {folder} was trained for another base model: its config.json has "
                f"{field} = {config[field]}, this model has {value}; use the base model it was trained on"
            )


def check_tensor_shapes(tensors: dict[str, torch.Tensor], shape: PrefixShape, folder: Path) -> None:
    """Every expected encoder tensor present with the base model's shape; nothing else."""
    wanted = shape.tensor_shapes()
    unknown = sorted(set(tensors) - set(wanted))
    if unknown:
        hint = " (prefix_projection is false in config.json but the weights have a projection)" if any(
            name.startswith("trans.") for name in unknown
        ) else ""
        raise AdapterError(f"{folder}: unexpected prefix-encoder tensor {KEY_PREFIX}{unknown[0]}{hint}")
    for name, size in wanted.items():
        if name not in tensors:
            raise AdapterError(
                f"{folder}: {KEY_PREFIX}{name} is missing (config.json says prefix_projection = "
                f"{shape.projection}); the checkpoint is incomplete"
            )
        if tuple(tensors[name].shape) != size:
            raise AdapterError(
                f"the P-tuning checkpoint {folder} does not fit this base model: {KEY_PREFIX}{name} has shape "
                f"{tuple(tensors[name].shape)}, this model needs {size} ({shape.num_layers} layers x 2 x "
                f"{shape.num_kv_heads} kv groups x {shape.head_dim}); use the base model it was trained on"
            )


def build_prefix_encoder(shape: PrefixShape, tensors: dict[str, torch.Tensor], *, device: Any) -> PrefixEncoder:
    """A float32 encoder holding ``tensors`` (the prefix is cast to the model's dtype when used)."""
    encoder = PrefixEncoder(shape)
    encoder.load_state_dict({name: t.to(torch.float32) for name, t in tensors.items()}, strict=False)
    return encoder.to(device).eval().requires_grad_(False)


def load_ptuning(model: Any, folder: Path) -> Any:
    """Attach the prefix of the P-tuning checkpoint in ``folder`` to ``model``; returns ``model``."""
    config, tensors = read_ptuning_checkpoint(folder)
    shape = prefix_shape_for(model, config, folder)
    check_tensor_shapes(tensors, shape, folder)
    attach_prefix(model, build_prefix_encoder(shape, tensors, device=model.device))
    return model


# ----- running with a prefix ------------------------------------------------------------------


def attach_prefix(model: Any, encoder: PrefixEncoder) -> None:
    """Make ``model`` run every forward pass after ``encoder``'s prefix (see the module docstring)."""
    if getattr(model, "prefix_encoder", None) is not None:
        raise AdapterError("the model already has a P-tuning prefix; load one prefix adapter only")
    decoder = getattr(model, model.base_model_prefix)
    model.prefix_encoder = encoder  # a submodule: moves with .to(), trains, saves with the model
    handle = decoder.register_forward_pre_hook(_PrefixHook(model), with_kwargs=True)
    model._prefix_hook_handle = handle


def detach_prefix(model: Any) -> None:
    """Remove an attached prefix (the model computes as its base again)."""
    handle = getattr(model, "_prefix_hook_handle", None)
    if handle is not None:
        handle.remove()
    for name in ("prefix_encoder", "_prefix_hook_handle"):
        if name in model.__dict__ or name in getattr(model, "_modules", {}):
            delattr(model, name)


def prefix_length(model: Any) -> int:
    """``pre_seq_len`` of the attached prefix, 0 without one."""
    encoder = getattr(model, "prefix_encoder", None)
    return 0 if encoder is None else encoder.shape.pre_seq_len


def prefix_cache_entries(model: Any, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer ``(key, value)`` ``[batch, kv_heads, pre_seq_len, head_dim]`` (for a static cache's first slots)."""
    encoder: PrefixEncoder = model.prefix_encoder
    return encoder(batch_size, model.dtype)


def claim_cache(cache: Any) -> Any:
    """Mark ``cache`` as one whose owner places the prefix and passes 4-D masks and positions itself
    (the fast path's static cache): the hook leaves calls on it unchanged. Returns ``cache``."""
    setattr(cache, CLAIMED_CACHE, True)
    return cache


def real_positions(seen: int, prefix: int, length: int, device: torch.device) -> torch.Tensor:
    """Rotary positions of ``length`` new tokens after ``seen`` cached entries, ``prefix`` of them the prefix.

    Real tokens are numbered as if there were no prefix (ChatGLM2's ``get_position_ids``).
    """
    start = seen - prefix
    return torch.arange(start, start + length, device=device).unsqueeze(0)


class _PrefixHook:
    """Forward pre-hook of the decoder: prefix into a fresh cache, mask and positions around it."""

    def __init__(self, model: Any) -> None:
        self._model_ref = [model]  # a list, so nn.Module bookkeeping never sees a module cycle

    def __call__(self, decoder: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        cache_key = cache_kwarg_of(type(decoder))  # "past_key_values" under transformers 5.17
        if args:  # called positionally: decoder(input_ids, attention_mask, ...)
            names = ("input_ids", "attention_mask", "position_ids", cache_key, "inputs_embeds")
            kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
            args = ()
        cache_key = next((k for k in ("cache", "past_key_values") if kwargs.get(k) is not None), cache_key)
        if getattr(kwargs.get(cache_key), CLAIMED_CACHE, False):
            return args, kwargs  # the fast path's own cache: the prefix is already in place
        model = self._model_ref[0]
        encoder: PrefixEncoder = model.prefix_encoder
        prefix = encoder.shape.pre_seq_len
        tokens = kwargs.get("input_ids")
        reference = tokens if tokens is not None else kwargs["inputs_embeds"]
        batch, length = reference.shape[0], reference.shape[1]
        cache = kwargs.get(cache_key)
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=decoder.config)
            kwargs[cache_key] = cache
        if cache.get_seq_length() == 0:
            for layer, (key, value) in enumerate(encoder(batch, _compute_dtype(decoder))):
                cache.update(key, value, layer)
        seen = cache.get_seq_length()
        if kwargs.get("position_ids") is None:
            kwargs["position_ids"] = real_positions(seen, prefix, length, reference.device)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[-1] == seen - prefix + length:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], prefix), mask], dim=-1)
        return args, kwargs


def _compute_dtype(decoder: nn.Module) -> torch.dtype:
    return decoder.get_input_embeddings().weight.dtype


# ----- saving (fine-tuning writes THUDM's layout) ---------------------------------------------


def save_ptuning(model: Any, folder: Path, *, base_config: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` (pre_seq_len, prefix_projection, base sizes) and ``model.safetensors``
    holding ``transformer.prefix_encoder.*``, the layout THUDM's scripts save and ``load_ptuning`` reads."""
    from safetensors.torch import save_file

    encoder: PrefixEncoder = model.prefix_encoder
    s = encoder.shape
    config = {
        **(base_config or {}),
        "model_type": "chatglm",
        "pre_seq_len": s.pre_seq_len,
        "prefix_projection": s.projection,
        "num_layers": s.num_layers,
        "multi_query_group_num": s.num_kv_heads,
        "kv_channels": s.head_dim,
        "hidden_size": s.hidden_size,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state = {KEY_PREFIX + name: t.detach().to("cpu").contiguous() for name, t in encoder.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{file} is not valid JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def _iter_weight_names(folder: Path) -> list[tuple[str, None]]:
    """Tensor names of a folder's weights, from the index json or safetensors headers (no tensors read)."""
    names: list[str] = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        data = _read_json(folder / index)
        names += list((data.get("weight_map") or {}).keys())
    if not names and (folder / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            names = list(handle.keys())
    if not names and (folder / "pytorch_model.bin").is_file():
        from llm.chatglm_legacy import iter_shard

        names = [name for name, _ in iter_shard(folder / "pytorch_model.bin")]
    return [(name, None) for name in names]
