"""Per-browser-session Stop events for answers whose model step a Gradio cancel cannot reach.

A Gradio ``cancels=[...]`` lands only when a handler next yields; a batched map step (the
summary, a whole-book answer) yields nothing until the whole batch is generated. The handler
registers an event for its session here and passes it to ``llm.cancel_scope``; the Stop
button's own (unqueued) handler sets it, which ends the generation within a token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["SessionStops", "session_key"]

E = TypeVar("E", bound=threading.Event)


def session_key(request: Any) -> str:
    """The browser session a request belongs to (one key for direct calls without a request)."""
    return str(getattr(request, "session_hash", None) or "")


class SessionStops:
    """The running answer's Stop event of each browser session."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def new(self, request: Any, factory: Callable[[], E] = threading.Event) -> E:  # type: ignore[assignment]
        """A fresh Stop event for this session's new run (replacing a finished run's)."""
        event = factory()
        with self._lock:
            self._events[session_key(request)] = event
        return event

    def set(self, request: Any) -> None:
        """Stop this session's running answer, if any."""
        with self._lock:
            event = self._events.get(session_key(request))
        if event is not None:
            event.set()

    def forget(self, request: Any, event: threading.Event) -> None:
        """The run that owns ``event`` has ended."""
        with self._lock:
            if self._events.get(session_key(request)) is event:
                del self._events[session_key(request)]
