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
residuals, biases on dense/MLP layers...) are refused with an error instead of loading a model
that would silently compute something else. Folders holding ChatGLM's own INT4/INT8 weights
(``quantization_bit``, e.g. THUDM/chatglm2-6b-int4) load onto glmkb's weight-only layers
(``llm.chatglm_legacy_quantized``), exactly.

Shards are streamed one tensor at a time (``torch.load(weights_only=True, mmap=True)`` for
``.bin``, ``safe_open`` for safetensors) into a model built on the meta device, so host memory
stays near one shard. ``convert_checkpoint`` writes the same conversion as a native folder
(safetensors shards, tokenizer.json with the chat template, generation_config.json) that plain
``AutoModelForCausalLM`` / ``AutoTokenizer`` load, e.g. to use bitsandbytes quantization.

This module loads. The config mapping is ``llm.chatglm_legacy_config``, reading and renaming
tensors ``llm.chatglm_legacy_weights``, the native folder ``llm.chatglm_legacy_convert``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast

from llm.adapters.ptuning import attach_prefix, build_prefix_encoder
from llm.chatglm_legacy_config import (
    Layout,
    LegacyCheckpoint,
    inspect_checkpoint,
    load_tokenizer,
    native_generation_config,
)
from llm.chatglm_legacy_convert import convert_checkpoint
from llm.chatglm_legacy_quantized import QuantizedLinears, stored_kind
from llm.chatglm_legacy_weights import PREFIX_NAME, find_weight_files, iter_converted_shards, iter_shard, split_qkv
from llm.errors import ModelLoadError
from llm.loading import resolve_device, resolve_dtype
from llm.output_folder import check_destination
from llm.quantization import DEFAULT_GROUP_SIZE, DEFAULT_INT4_KERNEL, WEIGHT_ONLY, quantize_loaded_

logger = logging.getLogger(__name__)

# The loader, plus the names the adapters and ``ingest convert`` import from here.
__all__ = [
    "Layout",
    "LegacyCheckpoint",
    "check_destination",
    "convert_checkpoint",
    "find_weight_files",
    "inspect_checkpoint",
    "iter_shard",
    "load_chatglm_legacy",
    "split_qkv",
]


def load_chatglm_legacy(
    path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    trust_remote_code: bool = False,
    quantization_group_size: int = DEFAULT_GROUP_SIZE,
    int4_kernel: str = DEFAULT_INT4_KERNEL,
) -> tuple[GlmForCausalLM, PreTrainedTokenizerFast]:
    """Load an original ChatGLM2/3 folder as ``(GlmForCausalLM, PreTrainedTokenizerFast)`` on ``device``.

    ``quantization`` int8/int4 (``llm.quantization``): each shard is loaded on the CPU and every
    linear layer it completes is quantized before the next shard is read, so the host holds the
    quantized model plus one shard, and only the quantized model is moved to ``device``. A folder
    of ChatGLM's own quantized weights (``quantization_bit`` 4/8) loads as int4/int8 that way
    too, with its stored integers; ``quantization`` may then be "none" or that same kind.
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
    checkpoint = inspect_checkpoint(folder)
    bits = checkpoint.layout.quantization_bit
    if bits:
        quantization = stored_kind(bits, quantization, folder=folder)
        logger.info("%s: ChatGLM's own %s weights, loaded as glmkb's %s layers", folder, quantization.upper(),
                    quantization)
    weight_only = quantization in WEIGHT_ONLY
    torch_dtype = resolve_dtype(dtype, target, weight_only=weight_only)
    load_on = torch.device("cpu") if weight_only else target
    tokenizer = load_tokenizer(checkpoint)
    model = build_empty_model(checkpoint.config)
    stored = QuantizedLinears(model, bits=bits, dtype=torch_dtype, group_size=quantization_group_size,
                              int4_kernel=int4_kernel) if bits else None
    prefix: dict[str, torch.Tensor] = {}
    for _file, tensors in iter_converted_shards(checkpoint, progress=None, desc="loading ChatGLM weights"):
        for name, tensor in tensors:
            if name.startswith(PREFIX_NAME):
                prefix[name.removeprefix(PREFIX_NAME)] = tensor
            elif stored is not None and stored.takes(name):
                stored.add(name, tensor)
            else:
                set_parameter(model, name, tensor.to(device=load_on, dtype=torch_dtype))
        if weight_only:  # the layers this shard completed; with stored weights, only the output layer
            quantize_loaded_(model, quantization, group_size=quantization_group_size, int4_kernel=int4_kernel)
    if stored is not None:
        stored.check_done(folder)
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
