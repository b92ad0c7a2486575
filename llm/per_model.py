"""State kept per model object: created on first use, dropped when the model is."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerModel(Generic[T]):
    """``registry(model)`` returns that model's ``T``, made by ``factory`` the first time.

    Keyed weakly, so dropping the model frees its state; thread-safe, so every ChatGLM sharing
    one model object gets the same worker, lock or cache.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[Any, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, model: Any) -> T:
        with self._lock:
            item = self._items.get(model)
            if item is None:
                item = self._items[model] = self._factory()
            return item
