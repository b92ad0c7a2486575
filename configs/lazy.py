"""Package exports imported on first use (PEP 562), shared by the packages' ``__init__`` modules.

``configs``, ``kb`` and ``llm`` name their public objects in ``__init__`` without importing the
modules that define them: ``configs.settings`` imports ``kb.types``, which must not pull in
FAISS, torch or LangChain, and ``from llm import OpenAICompatibleChat`` must not import torch.
This module imports nothing of glmkb, so any ``__init__`` can use it without a cycle.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` map each public name to the
    module defining it. A name is imported on first access and then kept on the package."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
