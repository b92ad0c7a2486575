"""The flags every server command shares (``glmkb serve``, ``glmkb-web``, ``glmkb-api``),
taken by name from the one flag table ``configs.flags.FLAGS``.

``glmkb serve`` is a click command and uses ``click_model_options``; ``glmkb-web`` and
``glmkb-api`` keep their argparse parsers (their flags are unchanged for existing users) and
use ``add_model_flags``, which builds the same spellings, help and settings keys from the same
rows, so a flag means one thing in every command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from configs.flags import FLAGS, flag_options, settings_overrides

__all__ = ["MODEL_FLAGS", "add_model_flags", "click_model_options", "model_overrides"]

MODEL_FLAGS: tuple[str, ...] = (
    "model_path", "device", "dtype", "quantization", "adapter", "merge_adapter",
    "kb_root", "embedding", "embedding_device",
)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``MODEL_FLAGS`` on an argparse parser (unset flags stay None, so YAML/env decide)."""
    for name in MODEL_FLAGS:
        flag = FLAGS[name]
        help_text = flag.help + (f" ({flag.key})" if flag.key else "")
        if flag.is_flag:
            parser.add_argument(*flag.decls, dest=name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(*flag.decls, dest=name, metavar=flag.metavar, help=help_text)


def click_model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``MODEL_FLAGS`` as click options (a decorator)."""
    return flag_options(*MODEL_FLAGS)(command)


def model_overrides(args: argparse.Namespace | dict[str, Any]) -> dict[str, Any]:
    """Settings overrides from ``MODEL_FLAGS``' values (unset flags are None and dropped later)."""
    values = args if isinstance(args, dict) else vars(args)
    return settings_overrides({name: values.get(name) for name in MODEL_FLAGS})
