"""libarchive's warnings while one archive is read: a CRC mismatch is damage, the rest named.

libarchive-c hands each ``ARCHIVE_WARN`` of the C library to the ``"libarchive"`` logger and goes
on, so Python's last-resort handler printed them on stderr without the archive's name. One of them
is not a warning to glmkb: libarchive 3.6 says "7-Zip bad CRC: ... should be ..." only *after* it
handed out the member's wrong bytes (a fuzz of 200 mutated 7z archives: one such, its member
built with garbled text). So while an archive is read (:func:`watched`), the logger's records are
taken instead of printed; :meth:`Watch.check` raises on a CRC mismatch (the caller makes it a
"damaged archive" line), and every other warning is logged once, under the archive's name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

LIBARCHIVE_LOGGER = "libarchive"  # libarchive-c's logger (libarchive/ffi.py)
logger = logging.getLogger(__name__)


class ChecksumMismatch(Exception):
    """libarchive reported a member whose bytes do not match the checksum the archive records."""


@dataclass
class Watch:
    """The warnings libarchive gave while one archive was read."""

    shown: str
    thread: int = field(default_factory=threading.get_ident)  # archives read side by side (web uploads)
    said: set[str] = field(default_factory=set)
    mismatch: str | None = None

    def take(self, record: logging.LogRecord) -> bool:
        """A logger filter: keep the record's message here, print nothing (another thread's record
        passes on to that thread's watch)."""
        if record.thread != self.thread:
            return True
        message = record.getMessage().strip()
        if "crc" in message.lower() or "checksum" in message.lower():
            self.mismatch = self.mismatch or message
        elif message not in self.said:
            self.said.add(message)
            logger.warning("%s: %s", self.shown, message)
        return False

    def check(self) -> None:
        """Raise ``ChecksumMismatch`` once libarchive has reported one."""
        if self.mismatch is not None:
            raise ChecksumMismatch(self.mismatch)


@contextmanager
def watched(shown: str) -> Iterator[Watch]:
    """libarchive's warnings taken by a ``Watch`` (named ``shown``) while the block runs. The
    logger is let through at WARNING meanwhile: a quieter level set by an app (``-q``) would
    otherwise hide a checksum mismatch from the watch too."""
    watch = Watch(shown)
    log = logging.getLogger(LIBARCHIVE_LOGGER)
    level = log.level
    if not log.isEnabledFor(logging.WARNING):
        log.setLevel(logging.WARNING)
    log.addFilter(watch.take)
    try:
        yield watch
    finally:
        log.removeFilter(watch.take)
        log.setLevel(level)
