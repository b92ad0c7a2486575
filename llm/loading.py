"""Find, load and place local chat models; dispatches on ``config.json``'s ``model_type``.

Shared by every loader (native transformers checkpoints here, original ChatGLM2/3 folders in
``llm.chatglm_legacy``) so that device, dtype and error handling behave the same everywhere.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from configs.devices import auto_device, mps_available
from llm.errors import ModelLoadError
from llm.hub import is_hub_id, resolve_model
from llm.quantization import DEFAULT_GROUP_SIZE, DEFAULT_INT4_KERNEL, WEIGHT_ONLY, quantize_model_

logger = logging.getLogger(__name__)

# model_type -> "module:function" with the signature of load_model_and_tokenizer().
MODEL_TYPE_LOADERS: dict[str, str] = {
    "chatglm": "llm.chatglm_legacy:load_chatglm_legacy",
}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU, else Apple silicon's GPU (MPS), else the CPU (``configs.devices``);
    ``cuda:N`` and ``mps`` are checked to exist."""
    if device == "auto":
        return torch.device(auto_device())
    dev = torch.device(device)
    if dev.type == "mps" and not mps_available():
        raise ModelLoadError(
            f"device {device!r} was requested but torch has no MPS backend here (it needs a macOS build of "
            "torch on an Apple silicon Mac); set llm.device to cpu or auto"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r} was requested but no CUDA GPU is visible to torch; "
                "set llm.device to cpu or auto, or install a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) visible"
            )
    return dev


def resolve_dtype(dtype: str, device: torch.device, *, weight_only: bool = False) -> torch.dtype:
    """``auto`` -> bf16 on CUDA GPUs that support it (else fp16), fp16 on MPS (bf16 needs macOS 14+;
    fp32 would need 25 GB for a 6B model), fp32 on CPU, or bf16 on CPU for glmkb's int8/int4
    (``weight_only``): torch's CPU kernels for them are fast only with bf16 inputs (``llm.quantized_cpu``)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if weight_only else torch.float32


def read_model_config(path: Path) -> dict[str, Any]:
    """Read ``config.json`` of a local model folder, with a clear error if it is missing or broken."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"no config.json in model folder {path}; point llm.model_path at the folder that "
            "holds config.json, the weights and the tokenizer files"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{config_file} is not valid JSON: {e}") from e
    if not isinstance(config, dict):  # a list or a string: every reader below calls config.get
        raise ModelLoadError(
            f"{config_file} holds a JSON {type(config).__name__}, not an object of model settings; "
            "copy config.json from the model's download again"
        )
    return config


def special_loader(model_type: str) -> Callable[..., Any] | None:
    """The dedicated loader for ``model_type`` (e.g. original ChatGLM), or None for native types."""
    target = MODEL_TYPE_LOADERS.get(model_type)
    if target is None:
        return None
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)


QUANTIZATIONS = ("none", "8bit", "4bit")  # bitsandbytes; WEIGHT_ONLY (int8, int4) are glmkb's own layers
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def load_model_and_tokenizer(
    path: str | Path,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quantization: str = "none",
    trust_remote_code: bool = False,
    adapter: str | Path | None = None,
    merge_adapter: bool = False,
    quantization_group_size: int = DEFAULT_GROUP_SIZE,
    int4_kernel: str = DEFAULT_INT4_KERNEL,
) -> tuple[Any, Any]:
    """Load a local chat model folder and place it; returns ``(model, tokenizer)``.

    Dispatches on ``config.json``'s ``model_type``: special types (original ChatGLM) go to their
    loader in ``MODEL_TYPE_LOADERS`` with the same keyword arguments; everything else must be a
    causal LM that transformers knows natively (or ``trust_remote_code`` was opted into).
    ``adapter`` (a P-tuning v2 or LoRA folder, ``llm.adapters``) is applied to the loaded model;
    ``merge_adapter`` folds a LoRA adapter into the weights. ``quantization`` int8/int4 are
    glmkb's weight-only layers (``llm.quantization``; ``quantization_group_size`` and ``int4_kernel``
    for int4): the model is quantized on the CPU and only then moved to ``device``. A LoRA adapter
    with int8/int4 is merged into the full-precision weights first (``merge_lora_then_quantize``).
    """
    if adapter and quantization in WEIGHT_ONLY and _is_lora(adapter):
        return merge_lora_then_quantize(
            path, adapter, device=device, dtype=dtype, kind=quantization, trust_remote_code=trust_remote_code,
            group_size=quantization_group_size, int4_kernel=int4_kernel,
        )
    model, tokenizer = _load_base(
        path,
        device=device,
        dtype=dtype,
        quantization=quantization,
        trust_remote_code=trust_remote_code,
        group_size=quantization_group_size,
        int4_kernel=int4_kernel,
    )
    if adapter:
        from llm.adapters import apply_adapter

        model = apply_adapter(model, adapter, merge=merge_adapter)
    return model, tokenizer


def _is_lora(adapter: str | Path) -> bool:
    from llm.adapters import adapter_kind

    return adapter_kind(adapter) == "lora"


def merge_lora_then_quantize(
    path: str | Path, adapter: str | Path, *, device: str, dtype: str, kind: str, trust_remote_code: bool,
    group_size: int, int4_kernel: str,
) -> tuple[Any, Any]:
    """LoRA with glmkb's INT8/INT4: the base in full precision on the CPU, the adapter merged into it,
    then quantized and moved to ``device``.

    peft cannot put LoRA on quantized layers, and an unmerged adapter would keep the model off the
    fast path anyway; merged first, the quantized model carries the fine-tune at int8/int4 speed.
    The host holds the full-precision model once (as for native folders, ``load_weight_only``).
    """
    from llm.adapters import apply_adapter

    target = resolve_device(device)
    compute = str(resolve_dtype(dtype, target, weight_only=True)).removeprefix("torch.")
    logger.info("%s: merging the LoRA adapter into the weights before quantizing them to %s", adapter, kind)
    model, tokenizer = _load_base(path, device="cpu", dtype=compute, quantization="none",
                                  trust_remote_code=trust_remote_code, group_size=group_size, int4_kernel=int4_kernel)
    model = apply_adapter(model, adapter, merge=True)
    quantize_model_(model, kind, group_size=group_size, int4_kernel=int4_kernel)
    return model.to(target).eval(), tokenizer


def _load_base(
    path: str | Path, *, device: str, dtype: str, quantization: str, trust_remote_code: bool, group_size: int,
    int4_kernel: str = DEFAULT_INT4_KERNEL,
) -> tuple[Any, Any]:
    """The model folder without adapters (see ``load_model_and_tokenizer``)."""
    folder = find_model_folder(path)
    config = read_model_config(folder)
    check_weights_present(folder)
    model_type = str(config.get("model_type", ""))
    try:
        loader = special_loader(model_type)
    except ImportError as e:
        raise ModelLoadError(
            f"{folder} is a {model_type!r} model, whose loader ({MODEL_TYPE_LOADERS[model_type]}) "
            f"could not be imported: {e}; reinstall glmkb (pip install -e .)"
        ) from e
    if loader is not None:  # the INT4 options reach it whatever llm.quantization says: the folder may be pre-quantized
        return loader(
            folder, device=device, dtype=dtype, quantization=quantization, trust_remote_code=trust_remote_code,
            quantization_group_size=group_size, int4_kernel=int4_kernel,
        )
    check_causal_lm_type(folder, config, trust_remote_code=trust_remote_code)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target, weight_only=quantization in WEIGHT_ONLY)
    if quantization in WEIGHT_ONLY:
        return load_weight_only(folder, kind=quantization, group_size=group_size, int4_kernel=int4_kernel,
                                device=target, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if quantization != "none":
        quantization_options(quantization, device=target, dtype=torch_dtype)  # fail before loading
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    model = load_causal_lm(
        folder, device=target, dtype=torch_dtype, quantization=quantization, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def load_weight_only(
    folder: Path, *, kind: str, group_size: int, device: torch.device, dtype: torch.dtype, trust_remote_code: bool,
    int4_kernel: str = DEFAULT_INT4_KERNEL,
) -> tuple[Any, Any]:
    """A native folder with glmkb's INT8/INT4 weight-only layers (``llm.quantization``).

    Loaded in full precision on the CPU, quantized there layer by layer (``quantize_model_``),
    then moved: the GPU only ever holds the quantized model. The host peak is one full-precision
    copy (``from_pretrained`` loads the whole model before the layers are swapped); original
    ChatGLM folders (``llm.chatglm_legacy``) quantize per shard instead.
    """
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    model = load_causal_lm(folder, device=torch.device("cpu"), dtype=dtype, trust_remote_code=trust_remote_code)
    quantize_model_(model, kind, group_size=group_size, int4_kernel=int4_kernel)
    return model.to(device).eval(), tokenizer


def find_model_folder(path: str | Path, *, download: bool = True) -> Path:
    """The local folder for ``path``; a hub id ("org/name", not a local path) comes from the local
    Hugging Face cache, else is downloaded when the hub is reachable (``llm.hub.resolve_model``;
    offline: ``HubModelUnavailable``, one line naming the id and how to pass a folder)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    text = str(path)
    if is_hub_id(text):
        return resolve_model(text, download=download)
    raise ModelLoadError(
        f"model folder {folder} does not exist; set llm.model_path (or --model-path / "
        "GLMKB_LLM__MODEL_PATH) to a local folder holding config.json, the weights and the tokenizer"
    )


def check_weights_present(folder: Path) -> None:
    """Fail early and clearly when a folder has a config but no weight files, or only git-lfs pointers
    in their place (a ``git clone`` without git-lfs: each weight file is a 130-byte text file)."""
    files = [file for pattern in WEIGHT_PATTERNS for file in sorted(folder.glob(pattern))]
    if not files:
        raise ModelLoadError(
            f"no model weights in {folder}: looked for *.safetensors and *.bin files. The download "
            "is probably incomplete (weights are large files, e.g. git-lfs pointers not pulled); "
            "download the whole model again, e.g. `hf download ORG/NAME --local-dir DIR`"
        )
    pointers = [file for file in files if is_lfs_pointer(file)]
    if pointers:
        raise ModelLoadError(
            f"{pointers[0]} is a git-lfs pointer, not the weights"
            + (f" (and {len(pointers) - 1} more file(s))" if len(pointers) > 1 else "")
            + f"; run `git lfs pull` in {folder}, or download the model again, e.g. "
            "`hf download ORG/NAME --local-dir DIR`"
        )


LFS_POINTER_START = b"version https://git-lfs.github.com/spec/"


def is_lfs_pointer(file: Path) -> bool:
    """Whether ``file`` is a git-lfs pointer (the small text file git leaves where a large file was)."""
    try:
        if file.stat().st_size > 1024:
            return False
        with file.open("rb") as handle:
            return handle.read(len(LFS_POINTER_START)) == LFS_POINTER_START
    except OSError:
        return False


def check_causal_lm_type(folder: Path, config: dict[str, Any], *, trust_remote_code: bool) -> None:
    """Accept model types transformers maps to a causal LM, or remote code when opted in."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return
    has_remote_code = "AutoModelForCausalLM" in (config.get("auto_map") or {})
    if trust_remote_code and has_remote_code:
        return
    known = ", ".join(["chatglm (original ChatGLM2/3)", "glm", "glm4", "llama", "qwen2", "..."])
    hint = (
        "its folder ships its own code (auto_map); set llm.trust_remote_code: true only if you trust it"
        if has_remote_code
        else "use a model that transformers supports natively or update transformers"
    )
    raise ModelLoadError(
        f"unknown model type {model_type!r} in {folder / 'config.json'}: not a causal language model "
        f"that transformers {_transformers_version()} knows and no glmkb loader for it "
        f"(supported e.g.: {known}); {hint}"
    )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_tokenizer(folder: Path, *, trust_remote_code: bool) -> Any:
    """The folder's tokenizer; chat models must carry a chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"could not load the tokenizer from {folder} ({e}); the folder needs tokenizer.json "
            "or the tokenizer files of the model"
        ) from e
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"the tokenizer in {folder} has no chat template, so it is not a chat model; "
            "use the chat/instruct variant of the model (e.g. glm-4-9b-chat-hf, not glm-4-9b)"
        )
    return tokenizer


def load_causal_lm(
    folder: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    quantization: str = "none",
    trust_remote_code: bool = False,
) -> Any:
    """Load weights and place them: one device, several GPUs (accelerate), or bitsandbytes on CUDA."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if quantization != "none":
        options.update(quantization_options(quantization, device=device, dtype=dtype))
    elif spread_over_gpus(folder, device):
        require_package("accelerate", "spreading a model over several GPUs")
        options["device_map"] = "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"could not load the model weights from {folder}: {e}") from e
    except SafetensorError as e:  # a plain Exception: it went up as a traceback
        raise ModelLoadError(
            f"a weight file in {folder} is not a readable safetensors file ({e}): truncated or damaged by an "
            "interrupted download; download the model's weight files again"
        ) from e
    if "device_map" not in options:
        # Loaded on the CPU first, then moved: one copy of the weights on the GPU, no more.
        model = model.to(device)
    return model.eval()


def quantization_options(quantization: str, *, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """``from_pretrained`` options for bitsandbytes 8-bit / 4-bit weights (CUDA only)."""
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"llm.quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}")
    if device.type != "cuda":
        raise ModelLoadError(
            f"llm.quantization {quantization} needs a CUDA GPU (bitsandbytes), but the model would run "
            f"on {device}; set llm.quantization: none to run unquantized on the CPU, or use a CUDA device"
        )
    require_package("bitsandbytes", f"llm.quantization {quantization}")
    require_package("accelerate", f"llm.quantization {quantization}")
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return {"quantization_config": config, "device_map": {"": device.index or 0}}


def spread_over_gpus(folder: Path, device: torch.device) -> bool:
    """Shard over all GPUs only when several are visible, no index was pinned, and one is too small."""
    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() < 2:
        return False
    free, _total = torch.cuda.mem_get_info(0)
    weights = sum(f.stat().st_size for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern))
    return weights > 0.85 * free


def require_package(name: str, purpose: str) -> None:
    """Raise a clear error when an optional GPU package is missing."""
    if importlib.util.find_spec(name) is None:
        raise ModelLoadError(
            f"{purpose} needs the {name} package, which is not installed; "
            "install the GPU extras: pip install 'glmkb[gpu]'"
        )
