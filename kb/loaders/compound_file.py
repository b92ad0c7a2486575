"""The streams of an OLE2 compound file (the Office 97-2003 formats), by olefile (BSD), for the
.doc and .ppt loaders: a missing stream or a broken file is one line naming the document kind."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kb.errors import DocumentLoadError


@contextmanager
def compound_file(path: Path, *, kind: str) -> Iterator[Callable[[str], bytes]]:
    """A reader of the named streams of the file at ``path`` (``kind``: "Word document", ...)."""
    import olefile

    try:
        with olefile.OleFileIO(str(path)) as ole:

            def read(name: str) -> bytes:
                if not ole.exists(name):
                    raise DocumentLoadError(f"{path} is a damaged {kind} (no {name} stream); save it again")
                return ole.openstream(name).read()

            yield read
    except DocumentLoadError:
        raise
    except (OSError, ValueError, struct.error) as e:  # olefile's errors for a broken compound file
        raise DocumentLoadError(f"{path} is a damaged {kind} ({type(e).__name__}); save it again") from e
