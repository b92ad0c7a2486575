"""Original ChatGLM2-6B / ChatGLM3-6B folders on transformers' native GLM model, no remote code.

THUDM's folders (``model_type: chatglm``, ``pytorch_model-0000N-of-0000M.bin`` or safetensors
shards, sentencepiece ``tokenizer.model``) need their own Python code, which no longer runs on
current transformers. Their architecture is exactly what ``GlmForCausalLM`` implements, so we
map the config onto ``GlmConfig`` and the weights onto its parameter names at load time:

- ``query_key_value`` is split into ``q_proj``/``k_proj``/``v_proj`` (weight and bias): with
  multi-query attention the rows are [all query heads | key groups | value groups], without it
  they are interleaved per head ([q_h, k_h, v_h] for each head h);
- ``dense`` -> ``o_proj``; ``dense_h_to_4h`` -> ``gate_up_proj`` unchanged (ChatGLM's
  ``silu(x[0]) * x[1]`` over ``chunk(2)`` is GLM's ``up * silu(gate)``, gate first);
  ``dense_4h_to_h`` -> ``down_proj``; the RMSNorms and embeddings keep their roles; the untied
  ``output_layer`` -> ``lm_head``; the ``rotary_pos_emb.inv_freq`` buffer is dropped;
- rotary: both rotate the first half of each head in interleaved pairs (x[2i], x[2i+1]) with
  theta_i = base^(-2i / (head_dim/2)), i.e. GLM's ``partial_rotary_factor`` 0.5, so q/k rows need
  no permutation. ``rope_ratio`` is base scaling (base = 10000 * rope_ratio) in ChatGLM3's code
  and position interpolation (positions / rope_ratio) in ChatGLM2-6B-32k's; we read which one the
  folder's ``modeling_chatglm.py`` does (as text, never run), defaulting by model generation.

A P-tuning v2 prefix inside a full checkpoint (``pre_seq_len`` in config.json and
``transformer.prefix_encoder.*`` among the weights) is loaded onto the model by
``llm.adapters.ptuning``; ``convert_checkpoint`` refuses it (a prefix is not a weight of the
native model: convert the base and pass the prefix with ``--adapter``).

Config values the native model cannot express (LayerNorm instead of RMSNorm, post-layernorm
residuals, biases on dense/MLP layers, pre-quantized int4/int8 weights...) are refused with an error instead of loading a model that would silently compute something else.

Shards are streamed one tensor at a time (``torch.load(weights_only=True, mmap=True)`` for
``.bin``, ``safe_open`` for safetensors) into a model built on the meta device, so host memory
stays near one shard. ``convert_checkpoint`` writes the same conversion as a native folder
(safetensors shards, tokenizer.json with the chat template, generation_config.json) that plain
``AutoModelForCausalLM`` / ``AutoTokenizer`` load, e.g. to use bitsandbytes quantization.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast

from llm.adapters.ptuning import PrefixShape, attach_prefix, build_prefix_encoder
from llm.chatglm_legacy_weights import (  # noqa: F401  (re-exported: tests and callers import them from here)
    BIN_INDEX,
    PREFIX_NAME,
    SAFETENSORS_INDEX,
    SINGLE_FILES,
    _LAYER_PARTS,
    _ORIGINAL_KEY,
    convert_shard,
    convert_tensor,
    expected_shapes,
    files_from_index,
    find_weight_files,
    iter_converted_shards,
    iter_shard,
    split_qkv,
)
from llm.chatglm_tokenizer import Variant, detect_variant, load_chatglm_tokenizer, stop_token_ids
from llm.errors import ModelLoadError
from llm.loading import read_model_config, resolve_device, resolve_dtype
from llm.quantization import DEFAULT_GROUP_SIZE, WEIGHT_ONLY, quantize_loaded_

logger = logging.getLogger(__name__)

REMOTE_MODEL_CODE = "modeling_chatglm.py"

# ChatGLMConfig's defaults (configuration_chatglm.py) for fields a config.json may leave out.
CONFIG_DEFAULTS: dict[str, Any] = {
    "kv_channels": 128,
    "seq_length": 2048,
    "layernorm_epsilon": 1e-5,
    "rope_ratio": 1,
    "rmsnorm": True,
    "apply_residual_connection_post_layernorm": False,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "add_qkv_bias": False,
    "multi_query_attention": False,
    "multi_query_group_num": 1,
    "fp32_residual_connection": False,
    "quantization_bit": 0,
    "pre_seq_len": None,
    "prefix_projection": False,
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
REQUIRED_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "padded_vocab_size")
# Fields that change what the network computes, and the only value(s) the native model can express.
UNSUPPORTED_VALUES: dict[str, tuple[Any, str]] = {
    "rmsnorm": (True, "the layers use LayerNorm instead of RMSNorm"),
    "apply_residual_connection_post_layernorm": (False, "residual connections are taken after the layernorm"),
    "post_layer_norm": (True, "there is no final layernorm"),
    "add_bias_linear": (False, "the dense and MLP layers have biases"),
    "fp32_residual_connection": (False, "the residual stream is kept in float32"),
    "quantization_bit": (0, "its weights are pre-quantized by ChatGLM's own int4/int8 code; use the fp16 release"),
}
# Fields that only matter for training, bookkeeping or the remote code's own kernels.
IGNORED_FIELDS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "architectures",
        "auto_map",
        "model_type",
        "transformers_version",
        "_commit_hash",
        "torch_dtype",
        "dtype",
        "use_cache",
        "bos_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "hidden_dropout",
        "attention_dropout",
        "classifier_dropout",
        "bias_dropout_fusion",
        "apply_query_key_layer_scaling",
        "attention_softmax_in_fp32",
        "original_rope",
        "vocab_size",
        "max_length",
        "min_length",
        "do_sample",
        "early_stopping",
        "num_beams",
        "num_beam_groups",
        "diversity_penalty",
        "temperature",
        "top_k",
        "top_p",
        "typical_p",
        "repetition_penalty",
        "length_penalty",
        "no_repeat_ngram_size",
        "encoder_no_repeat_ngram_size",
        "bad_words_ids",
        "num_return_sequences",
        "output_scores",
        "return_dict_in_generate",
        "forced_bos_token_id",
        "forced_eos_token_id",
        "remove_invalid_values",
        "exponential_decay_length_penalty",
        "suppress_tokens",
        "begin_suppress_tokens",
        "return_dict",
        "output_hidden_states",
        "output_attentions",
        "torchscript",
        "use_bfloat16",
        "tf_legacy_loss",
        "pruned_heads",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "is_decoder",
        "cross_attention_hidden_size",
        "add_cross_attention",
        "tie_encoder_decoder",
        "finetuning_task",
        "id2label",
        "label2id",
        "tokenizer_class",
        "prefix",
        "task_specific_params",
        "problem_type",
        "num_labels",
        "_attn_implementation_autoset",
    }
)
ARCHITECTURE_FIELDS = frozenset(REQUIRED_FIELDS) | frozenset(CONFIG_DEFAULTS) | {"num_hidden_layers"}
FIRST_GENERATION_FIELDS = ("position_encoding_2d", "inner_hidden_size", "max_sequence_length")


@dataclass(frozen=True)
class Layout:
    """Shapes of the original checkpoint, derived from its config."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    multi_query: bool
    qkv_bias: bool

    @property
    def qkv_rows(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim


@dataclass(frozen=True)
class LegacyCheckpoint:
    """Everything known about an original folder before any weight is read."""

    path: Path
    variant: Variant
    config: GlmConfig
    layout: Layout
    weight_files: tuple[Path, ...]
    index_file: Path | None
    prefix: PrefixShape | None = None  # a P-tuning v2 prefix the config asks for (pre_seq_len)


# ----- public entry points ------------------------------------------------------------------


def load_chatglm_legacy(
    path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    trust_remote_code: bool = False,
    quantization_group_size: int = DEFAULT_GROUP_SIZE,
) -> tuple[GlmForCausalLM, PreTrainedTokenizerFast]:
    """Load an original ChatGLM2/3 folder as ``(GlmForCausalLM, PreTrainedTokenizerFast)`` on ``device``.

    ``quantization`` int8/int4 (``llm.quantization``): each shard is loaded on the CPU and every
    linear layer it completes is quantized before the next shard is read, so the host holds the
    quantized model plus one shard, and only the quantized model is moved to ``device``.
    ``trust_remote_code`` is accepted for the shared loader signature but never used: the
    folder's own code is not run.
    """
    folder = Path(path).expanduser()
    if quantization not in ("none", *WEIGHT_ONLY):
        raise ModelLoadError(
            f"llm.quantization {quantization} (bitsandbytes) is not available for original ChatGLM folders ({folder}); "
            "use int8 or int4 (glmkb's weight-only layers, loaded from this folder directly), or convert it once "
            f"with `ingest convert {folder} DST` and point llm.model_path at DST"
        )
    if trust_remote_code:
        logger.info("%s: loading natively; the folder's remote code is not used", folder)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    weight_only = quantization in WEIGHT_ONLY
    load_on = torch.device("cpu") if weight_only else target
    checkpoint = inspect_checkpoint(folder)
    tokenizer = load_tokenizer(checkpoint)
    model = build_empty_model(checkpoint.config)
    prefix: dict[str, torch.Tensor] = {}
    for _file, tensors in iter_converted_shards(checkpoint, progress=None, desc="loading ChatGLM weights"):
        for name, tensor in tensors:
            if name.startswith(PREFIX_NAME):
                prefix[name.removeprefix(PREFIX_NAME)] = tensor
            else:
                set_parameter(model, name, tensor.to(device=load_on, dtype=torch_dtype))
        if weight_only:
            quantize_loaded_(model, quantization, group_size=quantization_group_size)
    finish_model(model, checkpoint, tokenizer, device=load_on)
    attach_checkpoint_prefix(model, checkpoint, prefix, device=load_on)
    if weight_only:
        model = model.to(target)
    return model, tokenizer


def attach_checkpoint_prefix(
    model: GlmForCausalLM, checkpoint: LegacyCheckpoint, tensors: dict[str, torch.Tensor], *, device: torch.device
) -> None:
    """The folder's own P-tuning prefix on ``model``; a config asking for one without its weights loads the base."""
    if checkpoint.prefix is None:
        return
    if not tensors:
        logger.warning(
            "%s: config.json sets pre_seq_len %d but the weights hold no transformer.prefix_encoder; loading the "
            "base model without a prefix (pass the P-tuning checkpoint folder with --adapter)",
            checkpoint.path,
            checkpoint.prefix.pre_seq_len,
        )
        return
    missing = sorted(set(checkpoint.prefix.tensor_shapes()) - set(tensors))
    if missing:
        raise ModelLoadError(f"{checkpoint.path}: transformer.prefix_encoder.{missing[0]} is missing; the checkpoint is incomplete")
    attach_prefix(model, build_prefix_encoder(checkpoint.prefix, tensors, device=device))


def convert_checkpoint(src: str | Path, dst: str | Path, *, progress: bool = True) -> Path:
    """Write an original ChatGLM2/3 folder as a native transformers folder at ``dst``; returns ``dst``.

    Streams shard by shard (one output safetensors shard per input shard, dtype kept). Written
    to a hidden sibling folder first and renamed at the end, so a failure leaves nothing behind.
    """
    source = Path(src).expanduser().resolve()
    target = Path(dst).expanduser().resolve()
    check_destination(source, target)
    checkpoint = inspect_checkpoint(source)
    tokenizer = load_tokenizer(checkpoint)
    work = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
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
        if target.exists():
            target.rmdir()  # check_destination made sure it is empty
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


# ----- reading the folder -------------------------------------------------------------------


def load_tokenizer(checkpoint: LegacyCheckpoint) -> PreTrainedTokenizerFast:
    """The folder's tokenizer, knowing the model's context length."""
    tokenizer = load_chatglm_tokenizer(checkpoint.path, variant=checkpoint.variant)
    tokenizer.model_max_length = checkpoint.config.max_position_embeddings
    return tokenizer


def inspect_checkpoint(path: Path) -> LegacyCheckpoint:
    """Validate config and weight files of an original folder; reads no tensors."""
    raw = read_model_config(path)
    check_config_fields(raw, path / "config.json")
    variant = detect_variant(path, raw)
    values = {**CONFIG_DEFAULTS, **raw}
    layout = layout_from_config(values, path / "config.json")
    config = native_config(values, layout, rope=rope_parameters(values, path, variant))
    files, index = find_weight_files(path)
    prefix = prefix_from_config(values, layout, path / "config.json")
    return LegacyCheckpoint(path, variant, config, layout, tuple(files), index, prefix)


def prefix_from_config(values: dict[str, Any], layout: Layout, config_file: Path) -> PrefixShape | None:
    """The P-tuning v2 prefix shape ChatGLM2/3's PrefixEncoder builds for this config, if ``pre_seq_len`` is set."""
    if values.get("pre_seq_len") is None:
        if values.get("prefix_projection"):
            raise ModelLoadError(f"{config_file}: prefix_projection is true but pre_seq_len is missing; set pre_seq_len")
        return None
    if not layout.multi_query:
        raise ModelLoadError(
            f"{config_file}: a P-tuning prefix (pre_seq_len) needs multi_query_attention, as in ChatGLM2/3-6B "
            "(the original PrefixEncoder sizes it by multi_query_group_num)"
        )
    try:
        pre_seq_len = int(values["pre_seq_len"])
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{config_file}: pre_seq_len must be an integer ({e})") from e
    if pre_seq_len <= 0:
        raise ModelLoadError(f"{config_file}: pre_seq_len must be positive (got {pre_seq_len})")
    return PrefixShape(
        pre_seq_len=pre_seq_len,
        projection=bool(values.get("prefix_projection")),
        num_layers=layout.num_layers,
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        hidden_size=layout.hidden_size,
    )


def check_config_fields(raw: dict[str, Any], config_file: Path) -> None:
    """Refuse configs we cannot reproduce exactly: other architectures, unsupported or unknown fields."""
    if raw.get("model_type") != "chatglm":
        raise ModelLoadError(
            f"{config_file}: model_type is {raw.get('model_type')!r}, not 'chatglm'; this is not an "
            "original ChatGLM2/3 folder (a native folder needs no conversion)"
        )
    if any(field in raw for field in FIRST_GENERATION_FIELDS):
        raise ModelLoadError(
            f"{config_file} is a first-generation ChatGLM-6B config (2-D positions, GELU, post-LN); "
            "transformers has no native model for it and glmkb does not support it. Use ChatGLM2-6B, "
            "ChatGLM3-6B or a GLM-4 -hf model"
        )
    missing = [field for field in REQUIRED_FIELDS if field not in raw]
    if missing:
        raise ModelLoadError(
            f"{config_file} lacks {', '.join(missing)}; it is not a complete ChatGLM2/3 config. "
            "Copy config.json from the model's download again"
        )
    if "quantization_config" in raw:
        raise ModelLoadError(
            f"{config_file} describes pre-quantized weights (quantization_config); load the fp16/bf16 "
            "release instead and set llm.quantization after `ingest convert`"
        )
    unknown = sorted(set(raw) - ARCHITECTURE_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise ModelLoadError(
            f"{config_file} has field(s) {', '.join(unknown)} that glmkb does not know for ChatGLM2/3; "
            "refusing to guess how the original code uses them (the result could be silently wrong). "
            "If they are harmless, remove them from config.json"
        )
    for field, (allowed, meaning) in UNSUPPORTED_VALUES.items():
        value = raw.get(field, CONFIG_DEFAULTS[field])
        if value != allowed:
            raise ModelLoadError(
                f"{config_file}: {field} = {value!r} means {meaning}; transformers' native GLM model "
                f"cannot compute that (it needs {field} = {allowed!r}), so this checkpoint is not supported"
            )


def layout_from_config(values: dict[str, Any], config_file: Path) -> Layout:
    """Checked shapes: positive sizes, heads divisible into key/value groups, rotary pairs."""
    try:
        sizes = {
            name: int(values[name]) for name in (*REQUIRED_FIELDS, "kv_channels", "seq_length", "multi_query_group_num")
        }
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{config_file}: a size field is not an integer ({e})") from e
    bad = [name for name, value in sizes.items() if value <= 0]
    if bad:
        raise ModelLoadError(f"{config_file}: {', '.join(bad)} must be positive")
    if "num_hidden_layers" in values and int(values["num_hidden_layers"]) != sizes["num_layers"]:
        raise ModelLoadError(f"{config_file}: num_hidden_layers and num_layers disagree")
    heads = sizes["num_attention_heads"]
    multi_query = bool(values["multi_query_attention"])
    kv_heads = sizes["multi_query_group_num"] if multi_query else heads
    if heads % kv_heads:
        raise ModelLoadError(
            f"{config_file}: num_attention_heads {heads} is not a multiple of multi_query_group_num {kv_heads}"
        )
    head_dim = sizes["kv_channels"]
    if head_dim % 4:
        raise ModelLoadError(
            f"{config_file}: kv_channels {head_dim} must be a multiple of 4 (rotary pairs on half a head)"
        )
    return Layout(
        num_layers=sizes["num_layers"],
        hidden_size=sizes["hidden_size"],
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        ffn_hidden_size=sizes["ffn_hidden_size"],
        vocab_size=sizes["padded_vocab_size"],
        multi_query=multi_query,
        qkv_bias=bool(values["add_qkv_bias"]),
    )


def rope_parameters(values: dict[str, Any], path: Path, variant: Variant) -> dict[str, Any]:
    """GLM rope parameters: half of each head, base 10000, and what ``rope_ratio`` means here."""
    try:
        ratio = float(values["rope_ratio"])
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path / 'config.json'}: rope_ratio {values['rope_ratio']!r} is not a number") from e
    if ratio <= 0:
        raise ModelLoadError(f"{path / 'config.json'}: rope_ratio must be positive")
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    if ratio == 1:
        return params
    if rope_ratio_style(path, variant) == "base":
        params["rope_theta"] = 10000.0 * ratio
    else:
        params.update(rope_type="linear", factor=ratio)
    return params


def rope_ratio_style(path: Path, variant: Variant) -> str:
    """``base`` (ChatGLM3: base *= rope_ratio) or ``positions`` (ChatGLM2-32k: positions /= rope_ratio)."""
    code = path / REMOTE_MODEL_CODE
    if code.is_file():
        text = code.read_text(encoding="utf-8", errors="replace")
        if re.search(r"base\s*=\s*base\s*\*\s*self\.rope_ratio", text):
            return "base"
        if re.search(r"/\s*self\.rope_ratio", text):
            return "positions"
    style = "base" if variant == "chatglm3" else "positions"
    logger.warning(
        "%s: cannot tell from %s how rope_ratio is applied; using the %s default (%s scaling)",
        path,
        REMOTE_MODEL_CODE,
        variant,
        style,
    )
    return style


def native_config(values: dict[str, Any], layout: Layout, *, rope: dict[str, Any]) -> GlmConfig:
    """The ``GlmConfig`` computing the same network as the original config."""
    return GlmConfig(
        vocab_size=layout.vocab_size,
        hidden_size=layout.hidden_size,
        intermediate_size=layout.ffn_hidden_size,
        num_hidden_layers=layout.num_layers,
        num_attention_heads=layout.num_heads,
        num_key_value_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        hidden_act="silu",
        max_position_embeddings=int(values["seq_length"]),
        rms_norm_eps=float(values["layernorm_epsilon"]),
        attention_bias=layout.qkv_bias,
        attention_dropout=0.0,
        rope_parameters=rope,
        tie_word_embeddings=False,  # the original always uses its own output_layer
        pad_token_id=values["pad_token_id"],
        eos_token_id=values["eos_token_id"],
        bos_token_id=None,
    )


def build_empty_model(config: GlmConfig) -> GlmForCausalLM:
    """``GlmForCausalLM`` with every parameter on the meta device (no memory until loaded)."""
    with torch.device("meta"):
        return GlmForCausalLM(config)


def set_parameter(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put one loaded tensor in place of the meta parameter ``name``."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, attr)
    if current.shape != tensor.shape:  # convert_tensor checked the original; this guards the mapping
        raise ModelLoadError(f"internal: {name} has shape {tuple(tensor.shape)}, model wants {tuple(current.shape)}")
    setattr(module, attr, torch.nn.Parameter(tensor.contiguous(), requires_grad=False))


def finish_model(
    model: GlmForCausalLM, checkpoint: LegacyCheckpoint, tokenizer: PreTrainedTokenizerFast, *, device: torch.device
) -> None:
    """Rotary buffers on ``device``, eval mode, ChatGLM's stop tokens; nothing left on meta."""
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    model.model.rotary_emb = GlmRotaryEmbedding(config=model.config).to(device)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ModelLoadError(f"internal: {left[0]} was not loaded from {checkpoint.path}")
    generation = native_generation_config(tokenizer, checkpoint)
    model.generation_config = generation
    model.config.eos_token_id = generation.eos_token_id
    model.config.pad_token_id = generation.pad_token_id
    model.eval()


def native_generation_config(tokenizer: PreTrainedTokenizerFast, checkpoint: LegacyCheckpoint) -> GenerationConfig:
    """Stop on ``</s>`` (and ``<|user|>``/``<|observation|>`` for ChatGLM3); pad with the unk id."""
    return GenerationConfig(
        eos_token_id=stop_token_ids(tokenizer, checkpoint.variant),
        pad_token_id=tokenizer.pad_token_id,
    )


# ----- converting to a native folder --------------------------------------------------------


def check_destination(source: Path, target: Path) -> None:
    """The output folder must be new (or empty) and outside the source folder."""
    if target == source or source in target.parents:
        raise ValueError(f"destination {target} must be outside the source folder {source}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"destination {target} already exists and is not an empty folder; choose a new folder")
    if not source.is_dir():
        raise ModelLoadError(f"source folder {source} does not exist")


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
