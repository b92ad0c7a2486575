"""``ProgressCallbackHandler``: the summarizer's progress as plain method calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from chains.events import Progress
from chains.stream_map_reduce_chain import PROGRESS_EVENT

__all__ = ["ProgressCallbackHandler"]


class ProgressCallbackHandler(BaseCallbackHandler):
    """Calls ``on_progress(Progress(stage, done, total))`` for each summarizer progress event.

    Pass a function, or subclass and override ``on_progress``::

        bar = tqdm(unit="段")
        def show(p: Progress) -> None:
            bar.total, bar.n = p.total, p.done
            bar.refresh()
        chain.invoke({"input_documents": docs}, config={"callbacks": [ProgressCallbackHandler(show)]})
    """

    def __init__(self, on_progress: Callable[[Progress], None] | None = None) -> None:
        self._on_progress = on_progress
        self.last: Progress | None = None

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name == PROGRESS_EVENT:
            self.last = Progress(**data)
            self.on_progress(self.last)

    def on_progress(self, progress: Progress) -> None:
        """One step of the map or collapse stage; override or pass ``on_progress``."""
        if self._on_progress is not None:
            self._on_progress(progress)
