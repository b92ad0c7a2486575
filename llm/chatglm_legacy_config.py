"""An original ChatGLM2/3-6B folder in native terms, before any weight is read (``llm.chatglm_legacy``).

``inspect_checkpoint`` reads ``config.json`` and refuses what transformers' ``GlmForCausalLM``
cannot compute exactly (LayerNorm, post-LN residuals, dense biases, unknown fields,
first-generation ChatGLM-6B); ChatGLM's own INT4/INT8 weights (``quantization_bit``) are
described for ``llm.chatglm_legacy_quantized``. It derives the checked shapes (``Layout``), the
equivalent ``GlmConfig`` (rotary on half of each head; what ``rope_ratio`` means is read from the
folder's ``modeling_chatglm.py`` as text, never run), the P-tuning prefix a ``pre_seq_len`` asks
for, and the weight files in load order. ``load_tokenizer`` and ``native_generation_config`` give
the folder's tokenizer and ChatGLM's stop tokens.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import GenerationConfig, GlmConfig, PreTrainedTokenizerFast

from llm.adapters.ptuning import PrefixShape, read_pre_seq_len
from llm.chatglm_legacy_weights import find_weight_files
from llm.chatglm_tokenizer import Variant, detect_variant, load_chatglm_tokenizer, stop_token_ids
from llm.errors import ModelLoadError
from llm.loading import read_model_config

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
        "attn_implementation",
    }
)
QUANTIZATION_BITS = (0, 4, 8)
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
    quantization_bit: int = 0  # ChatGLM's own INT4/INT8 weights (llm.chatglm_legacy_quantized); 0: none

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


def load_tokenizer(checkpoint: LegacyCheckpoint) -> PreTrainedTokenizerFast:
    """The folder's tokenizer, knowing the model's context length."""
    tokenizer = load_chatglm_tokenizer(checkpoint.path, variant=checkpoint.variant)
    if len(tokenizer) > checkpoint.layout.vocab_size:
        raise ModelLoadError(
            f"{checkpoint.path}: the tokenizer has {len(tokenizer)} tokens but config.json's padded_vocab_size is "
            f"{checkpoint.layout.vocab_size}; tokenizer.model and the weights are from different models"
        )
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
    return PrefixShape(
        pre_seq_len=read_pre_seq_len(values["pre_seq_len"], config_file),
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
    check_quantization_bit(raw.get("quantization_bit", 0), config_file)
    for field, (allowed, meaning) in UNSUPPORTED_VALUES.items():
        value = raw.get(field, CONFIG_DEFAULTS[field])
        if value != allowed:
            raise ModelLoadError(
                f"{config_file}: {field} = {value!r} means {meaning}; transformers' native GLM model "
                f"cannot compute that (it needs {field} = {allowed!r}), so this checkpoint is not supported"
            )


def check_quantization_bit(value: Any, config_file: Path) -> None:
    """ChatGLM's ``quantize()`` writes 4 or 8 (0: full-precision weights); anything else is not its code's."""
    if value not in QUANTIZATION_BITS:  # False and 4.0 count as ChatGLM's code reads them
        raise ModelLoadError(
            f"{config_file}: quantization_bit {value!r} is not one ChatGLM's quantization code writes "
            f"({', '.join(map(str, QUANTIZATION_BITS))}); copy config.json from the model's download again"
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
        quantization_bit=int(values["quantization_bit"]),
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
    """``base`` (ChatGLM3, GLM-4: base *= rope_ratio) or ``positions`` (ChatGLM2-32k: positions /= rope_ratio)."""
    code = path / REMOTE_MODEL_CODE
    if code.is_file():
        text = code.read_text(encoding="utf-8", errors="replace")
        if re.search(r"base\s*=\s*base\s*\*\s*self\.rope_ratio", text):
            return "base"
        if re.search(r"/\s*self\.rope_ratio", text):
            return "positions"
    style = "positions" if variant == "chatglm2" else "base"
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


def native_generation_config(tokenizer: PreTrainedTokenizerFast, checkpoint: LegacyCheckpoint) -> GenerationConfig:
    """Stop on ``</s>`` (and ``<|user|>``/``<|observation|>`` for ChatGLM3); pad with the unk id."""
    return GenerationConfig(
        eos_token_id=stop_token_ids(tokenizer, checkpoint.variant),
        pad_token_id=tokenizer.pad_token_id,
    )
