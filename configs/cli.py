"""What every glmkb command does around its work: logging, and errors as one line on stderr
with a non-zero exit, never a traceback (unless ``--verbose``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from configs.settings import SettingsError

# What a user can fix (bad settings or input, missing files or models, a port in use, a
# missing extra); anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (SettingsError, ValueError, OSError, RuntimeError, ImportError)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (file name added for OSErrors that lack it)."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return " ".join(text.split())


def run_command(prog: str, work: Callable[[], int | None], *, verbose: bool) -> int:
    """Set up logging and run ``work``: its exit code, 130 on Ctrl-C, 2 with one line on stderr
    for a user error."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(work() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if verbose:
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
