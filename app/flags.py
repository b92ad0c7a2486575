"""One table of the command-line flags the servers share, and how they map onto settings.

``glmkb-web`` and ``glmkb-api`` (argparse) and ``glmkb serve`` (click) are built from the
same ``MODEL_FLAGS`` rows, so a flag means one thing in every command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import click

__all__ = ["MODEL_FLAGS", "add_model_flags", "click_model_options", "model_overrides"]

# (flag, settings key it sets, help)
MODEL_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--model-path", "llm.model_path", "local chat model folder (llm.model_path)"),
    ("--device", "llm.device", "chat model device: auto, cpu, cuda, cuda:N, mps (llm.device)"),
    ("--dtype", "llm.dtype", "chat model dtype: auto, bfloat16, float16, float32 (llm.dtype)"),
    ("--quantization", "llm.quantization", "none, 8bit or 4bit (llm.quantization, CUDA only)"),
    ("--adapter", "llm.adapter", "fine-tuned adapter folder: P-tuning v2 or LoRA (llm.adapter)"),
    ("--kb-root", "kb_root", "folder holding the knowledge bases (kb_root)"),
    ("--embedding", "embedding.model", "embedding model name/folder, or 'none' (embedding.model)"),
    ("--embedding-device", "embedding.device", "embedding device (embedding.device)"),
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``MODEL_FLAGS`` on an argparse parser."""
    for flag, _, help_text in MODEL_FLAGS:
        parser.add_argument(flag, help=help_text)


def click_model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``MODEL_FLAGS`` as click options (a decorator)."""
    for flag, _, help_text in reversed(MODEL_FLAGS):
        command = click.option(flag, _dest(flag), default=None, help=help_text)(command)
    return command


def model_overrides(args: argparse.Namespace | dict[str, Any]) -> dict[str, Any]:
    """Settings overrides from ``MODEL_FLAGS``' values (unset flags are None and dropped later)."""
    values = args if isinstance(args, dict) else vars(args)
    overrides: dict[str, Any] = {}
    for flag, key, _ in MODEL_FLAGS:
        *sections, name = key.split(".")
        target = overrides
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = values.get(_dest(flag))
    return overrides
