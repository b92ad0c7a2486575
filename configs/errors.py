"""glmkb's error hierarchy: every edge maps these to an exit code or an HTTP status.

``BadInput`` is something the caller can fix (a bad flag, file, KB name, request body);
``Unavailable`` is something the caller cannot fix from here (a model or server that cannot
be reached, a damaged or busy knowledge base). Anything else is a bug and keeps its traceback.
``UpstreamError`` carries the status of a server glmkb talked to, so an upstream 4xx reaches
the client as that 4xx (an SDK must not retry "context too long" five times).

Existing errors keep ``ValueError`` (and ``OSError``) as bases so ``except ValueError`` code
that predates the hierarchy still catches them.
"""

from __future__ import annotations


class GlmkbError(Exception):
    """Base of every error glmkb raises on purpose; ``str(e)`` is the user-facing line."""

    exit_code: int = 1
    http_status: int = 500


class BadInput(GlmkbError, ValueError):
    """The caller's input is wrong; fixing it is up to them (exit 2, HTTP 400)."""

    exit_code = 2
    http_status = 400


class NotFound(BadInput):
    """A named thing (knowledge base, document, model) does not exist (exit 2, HTTP 404)."""

    http_status = 404


class Unavailable(GlmkbError, RuntimeError):
    """A dependency cannot serve now: model not loaded, server unreachable, KB damaged or busy
    (exit 3, HTTP 503)."""

    exit_code = 3
    http_status = 503


class UpstreamError(GlmkbError, OSError):
    """A server glmkb called answered with an error; ``status`` is passed on when it is a 4xx."""

    exit_code = 3

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def http_status(self) -> int:  # type: ignore[override]
        if self.status is not None and 400 <= self.status < 500:
            return self.status
        return 502


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its file name added where it has one the message lacks:
    OSErrors, and the errors of libraries that set ``filename`` on theirs)."""
    text = str(error) or type(error).__name__
    filename = getattr(error, "filename", None)
    if filename and str(filename) not in text:
        text = f"{text}: {filename}"
    return " ".join(text.split())


def exit_code_for(error: BaseException) -> int:
    """The process exit status for ``error`` at a CLI edge (2 bad input, 3 unavailable)."""
    if isinstance(error, GlmkbError):
        return error.exit_code
    if isinstance(error, (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return 2
    return 1


def http_status_for(error: BaseException) -> int:
    """The HTTP status for ``error`` at an API edge (400/404 bad input, 503 unavailable)."""
    if isinstance(error, GlmkbError):
        return error.http_status
    if isinstance(error, ValueError):
        return 400
    return 500
