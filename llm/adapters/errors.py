"""The one error adapters raise: a ``ModelLoadError`` naming the adapter folder and the fix."""

from __future__ import annotations

from llm.errors import ModelLoadError


class AdapterError(ModelLoadError):
    """An adapter folder cannot be applied to this model (wrong base, unknown layout, missing field)."""
