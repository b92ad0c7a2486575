"""A reasoning model's thinking on the command line: to stderr, set apart from the answer.

``ingest ask`` and ``ingest summarize`` print the answer (or summary) to stdout, so
``ingest summarize novel.txt > summary.txt`` keeps the file clean. Thinking (``chains.events.Reasoning``)
goes to stderr beside the progress lines: under a ``思考过程：`` header, dimmed where stderr is a
terminal, and closed with a newline when the answer starts. ``--hide-thinking`` leaves it out.
"""

from __future__ import annotations

from typing import TextIO

HEADER = "思考过程："
DIM, RESET = "\x1b[2m", "\x1b[0m"


class ThinkingEcho:
    """Writes thinking pieces to ``err`` as they come; ``close()`` ends the block (idempotent)."""

    def __init__(self, err: TextIO, *, hide: bool = False) -> None:
        self.err = err
        self.hide = hide
        self.styled = bool(getattr(err, "isatty", lambda: False)())
        self.open = False

    def write(self, text: str) -> None:
        """One piece of thinking; the first opens the block under its header."""
        if self.hide or not text:
            return
        if not self.open:
            self.err.write(HEADER + "\n" + (DIM if self.styled else ""))
            self.open = True
        self.err.write(text)
        self.err.flush()

    def close(self) -> None:
        """End an open block (before the answer's first token, and at the end of the stream)."""
        if self.open:
            self.err.write((RESET if self.styled else "") + "\n")
            self.err.flush()
            self.open = False
