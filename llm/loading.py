"""Find, load and place local chat models; dispatches on ``config.json``'s ``model_type``.

Shared by every loader (native transformers checkpoints here, original ChatGLM2/3 folders in
``llm.chatglm_legacy``) so that device, dtype and error handling behave the same everywhere.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llm.errors import ModelLoadError

# model_type -> "module:function" with the signature of load_model_and_tokenizer().
MODEL_TYPE_LOADERS: dict[str, str] = {
    "chatglm": "llm.chatglm_legacy:load_chatglm_legacy",
}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU if present, else CPU; ``cuda:N`` is checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
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


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on GPUs that support it (else fp16), fp32 on CPU."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def read_model_config(path: Path) -> dict[str, Any]:
    """Read ``config.json`` of a local model folder, with a clear error if it is missing or broken."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"no config.json in model folder {path}; point llm.model_path at the folder that "
            "holds config.json, the weights and the tokenizer files"
        )
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{config_file} is not valid JSON: {e}") from e


def special_loader(model_type: str) -> Callable[..., Any] | None:
    """The dedicated loader for ``model_type`` (e.g. original ChatGLM), or None for native types."""
    target = MODEL_TYPE_LOADERS.get(model_type)
    if target is None:
        return None
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)
