"""The packages' lazy exports (``configs.lazy.lazy_exports``): every name in ``__all__`` resolves,
unknown names are an AttributeError, and importing a package loads none of its heavy modules."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.helpers import clean_env

PACKAGES = ["configs", "kb", "llm"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_export_resolves_to_its_module_object(name: str) -> None:
    package = importlib.import_module(name)
    assert sorted(package._EXPORTS) == package.__all__
    for export, module in package._EXPORTS.items():
        assert getattr(package, export) is getattr(importlib.import_module(module), export)
        assert export in dir(package)
    with pytest.raises(AttributeError, match=f"module '{name}' has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_importing_the_packages_loads_no_settings_model_or_torch() -> None:
    """Regression guard: ``configs.settings`` imports ``kb.types``; a package ``__init__`` that
    imported eagerly would pull pydantic-settings, torch or FAISS into every ``import kb``."""
    code = (
        "import sys, configs, kb, llm; "
        "print(sorted(m for m in ('configs.settings', 'torch', 'faiss', 'langchain_core') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True)
    assert out.stdout.strip() == "[]"
