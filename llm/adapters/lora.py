"""LoRA adapters (peft's ``adapter_config.json`` + ``adapter_model.safetensors|bin``) on the native GLM model.

Adapters trained on THUDM's original ChatGLM2/3 code (ChatGLM3's ``finetune_demo``, most LoRA
tutorials) target the fused ``query_key_value`` projection, which glmkb loads split into
``q_proj``/``k_proj``/``v_proj``. A LoRA update of the fused projection is
``scale * B @ A`` with ``B`` holding one row per fused output row; its query/key/value rows are
exactly ``scale * B_q @ A`` etc., so each split projection gets the same ``A`` and its own slice
of ``B`` (cut like the weight: [Q | K | V] with multi-query attention, per-head interleaved
without). ``dense``/``dense_h_to_4h``/``dense_4h_to_h`` map onto ``o_proj``/``gate_up_proj``/
``down_proj`` unchanged. Adapters already in native names (``glmkb finetune`` writes those) load
as they are. peft does the rest: it injects its LoRA layers, and ``merge=True`` folds them into
the weights (``merge_and_unload``), giving a plain model the CUDA fast path can compile.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from llm.adapters.errors import AdapterError

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
FAST_DECODE_REASON = "an unmerged LoRA adapter is attached (set llm.merge_adapter: true for the fast path)"
ORIGINAL_TO_NATIVE = {
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "dense": ("o_proj",),
    "dense_h_to_4h": ("gate_up_proj",),
    "dense_4h_to_h": ("down_proj",),
}
BASE_CHANGING_INITS = frozenset({"olora", "corda", "loftq", "lora_ga"})  # and "pissa", "pissa_niter_N"
NATIVE_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"})
_ORIGINAL_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:transformer\.)?encoder\.layers\.(?P<layer>\d+)\."
    r"(?:self_attention|mlp)\.(?P<module>query_key_value|dense|dense_h_to_4h|dense_4h_to_h)\."
    r"(?P<part>lora_A|lora_B)(?:\.default)?\.weight$"
)
_NATIVE_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(?P<layer>\d+)\.(?:self_attn|mlp)\."
    r"(?P<module>q_proj|k_proj|v_proj|o_proj|gate_up_proj|down_proj)\.(?P<part>lora_A|lora_B)(?:\.default)?\.weight$"
)
_NATIVE_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                  "gate_up_proj": "mlp", "down_proj": "mlp"}


def is_lora_folder(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file()


def read_lora_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json``, refusing what cannot be mapped exactly (DoRA, extra trained modules...)."""
    file = folder / CONFIG_NAME
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{file} is not a readable adapter config: {e}") from e
    if not isinstance(config, dict):
        raise AdapterError(f"{file} is not an adapter config: it holds a JSON {type(config).__name__}, not an object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{file}: peft_type {config.get('peft_type')!r} is not supported; glmkb loads LoRA and P-tuning v2")
    refused = {
        "use_dora": "DoRA magnitudes",
        "modules_to_save": "fully trained extra modules",
        "rank_pattern": "per-module ranks",
        "alpha_pattern": "per-module alphas",
        "lora_bias": "LoRA biases",
    }
    for field, meaning in refused.items():
        if config.get(field):
            raise AdapterError(f"{file}: {field} ({meaning}) is not supported by glmkb's adapter loader; merge it with peft first")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"{file}: bias {config['bias']!r} is not supported (only 'none'); merge it with peft first")
    refuse_changed_base(config.get("init_lora_weights"), file)
    check_numbers(config, file)
    return config


def refuse_changed_base(init: Any, file: Path) -> None:
    """PiSSA/OLoRA/CorDA/LoftQ/LoRA-GA adapters saved as trained hold ``B @ A`` relative to base weights
    that peft changed at initialisation; on the unchanged base they give wrong outputs, silently."""
    name = str(init).lower()
    if isinstance(init, str) and (name.startswith("pissa") or name in BASE_CHANGING_INITS):
        raise AdapterError(
            f"{file}: init_lora_weights {init!r} changed the base weights during training, so this adapter is "
            "not a plain LoRA; convert it with peft (save_pretrained(..., path_initial_model_for_weight_conversion="
            "...)) and load the converted adapter"
        )


def check_numbers(config: dict[str, Any], file: Path) -> None:
    """``r`` a positive integer and ``lora_alpha`` a number: one line instead of a ValueError from deep inside."""
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise AdapterError(f"{file}: r must be a positive integer (got {r!r})")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise AdapterError(f"{file}: lora_alpha must be a number (got {alpha!r})")


def read_lora_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter tensors (safetensors, or a ``.bin`` read with ``weights_only``)."""
    from llm.chatglm_legacy import iter_shard

    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return dict(iter_shard(folder / name))
    raise AdapterError(f"{folder} has {CONFIG_NAME} but no {' or '.join(WEIGHT_NAMES)}; the adapter is incomplete")


def native_lora_state(
    tensors: dict[str, torch.Tensor], model: Any, folder: Path
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Adapter tensors under native names (``model.layers.N.self_attn.q_proj.lora_A.weight``) and the full names
    of the modules they adapt (an adapter may cover only some layers: a regex target, ``layers_to_transform``)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if (m := _NATIVE_KEY.match(name)) is not None:
            out[_native_name(m["layer"], m["module"], m["part"])] = tensor
        elif (m := _ORIGINAL_KEY.match(name)) is not None:
            out.update(_from_original(m["layer"], m["module"], m["part"], tensor, model))
        else:
            raise AdapterError(
                f"{folder}: adapter tensor {name!r} is on a module glmkb cannot map onto the native GLM model "
                "(supported: query_key_value, dense, dense_h_to_4h, dense_4h_to_h, or their native names)"
            )
    modules = {key.rsplit(".", 2)[0] for key in out}
    return out, modules


def _native_name(layer: str, module: str, part: str) -> str:
    return f"model.layers.{layer}.{_NATIVE_PARENT[module]}.{module}.{part}.weight"


def _from_original(layer: str, module: str, part: str, tensor: torch.Tensor, model: Any) -> dict[str, torch.Tensor]:
    targets = ORIGINAL_TO_NATIVE[module]
    if module != "query_key_value" or part == "lora_A":
        return {_native_name(layer, target, part): tensor for target in targets}
    q, k, v = split_fused_rows(tensor, model.config)
    return {_native_name(layer, target, part): t.contiguous() for target, t in zip(targets, (q, k, v), strict=True)}


def split_fused_rows(fused: torch.Tensor, config: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query/key/value rows of a tensor with one row per ``query_key_value`` output (as the weight is split)."""
    from llm.chatglm_legacy import Layout, split_qkv

    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    rows = (heads + 2 * kv_heads) * head_dim
    if fused.shape[0] != rows:
        raise AdapterError(
            f"LoRA B of query_key_value has {fused.shape[0]} rows, this model's fused q/k/v has {rows}; "
            "the adapter was trained for another base model"
        )
    layout = Layout(
        num_layers=int(config.num_hidden_layers), hidden_size=int(config.hidden_size), num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, ffn_hidden_size=int(config.intermediate_size),
        vocab_size=int(config.vocab_size), multi_query=kv_heads != heads, qkv_bias=False,
    )
    return split_qkv(fused, layout)


def load_lora(model: Any, folder: Path, *, merge: bool = False) -> Any:
    """``model`` with the LoRA adapter in ``folder`` applied by peft (merged into the weights when ``merge``)."""
    try:
        from peft import LoraConfig, PeftModel
    except ImportError as e:
        raise AdapterError(f"LoRA adapter {folder} needs the peft package: pip install 'glmkb[finetune]'") from e
    config = read_lora_config(folder)
    state, modules = native_lora_state(read_lora_weights(folder), model, folder)
    if not state:
        raise AdapterError(f"{folder}: the adapter weights hold no LoRA tensors")
    refuse_quantized_targets(model, modules, folder)
    lora = LoraConfig(
        r=int(config.get("r", 8)),
        lora_alpha=config.get("lora_alpha", 8),
        lora_dropout=float(config.get("lora_dropout", 0.0) or 0.0),
        use_rslora=bool(config.get("use_rslora", False)),
        target_modules=sorted(modules),
        bias="none",
        inference_mode=True,
    )
    peft_model = PeftModel(model, lora)
    load_native_state(peft_model.base_model.model, state, folder)
    peft_model.eval()
    if merge:
        return peft_model.merge_and_unload()
    inner = peft_model.base_model.model
    inner._can_compile_fullgraph = False
    inner.fast_decode_unsupported = FAST_DECODE_REASON
    return inner


def refuse_quantized_targets(model: torch.nn.Module, modules: set[str], folder: Path) -> None:
    """One line instead of peft's error for LoRA on INT8/INT4 layers that hold no full-precision weight."""
    from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear

    for name, module in model.named_modules():
        if name in modules and isinstance(module, (WeightOnlyInt8Linear, WeightOnlyInt4Linear)):
            raise AdapterError(
                f"the LoRA adapter {folder} targets {name}, which this model holds quantized (INT8/INT4, e.g. "
                "ChatGLM's own quantization_bit weights), with no full-precision weight to adapt; load the full-precision release with llm.quantization int8 or int4 instead: glmkb "
                "merges the adapter into the weights before quantizing them"
            )


def load_native_state(model: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy adapter tensors into the injected ``lora_A``/``lora_B`` layers, shapes checked."""
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        target = name.replace(".weight", ".default.weight")
        if target not in params:
            raise AdapterError(f"{folder}: adapter tensor for {name} has no place in this model (another base model?)")
        param = params[target]
        if param.shape != tensor.shape:
            raise AdapterError(
                f"the LoRA adapter {folder} does not fit this base model: {name} has shape {tuple(tensor.shape)}, "
                f"this model needs {tuple(param.shape)}; use the base model it was trained on"
            )
        with torch.no_grad():
            param.copy_(tensor.to(dtype=param.dtype, device=param.device))
    missing = [n for n in params if (".lora_A." in n or ".lora_B." in n) and n.replace(".default.weight", ".weight") not in state]
    if missing:
        raise AdapterError(f"{folder}: the adapter has no weights for {missing[0]} (and {len(missing) - 1} more); it is incomplete")
