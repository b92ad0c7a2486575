"""Errors of ``glmkb bundle``: what the user can fix is BadInput (exit 2), a failed download or
copy that may work on retry is Unavailable (exit 3)."""

from __future__ import annotations

from configs.errors import BadInput, Unavailable


class BundleError(BadInput):
    """A bundle cannot be built or checked as asked (bad flag, missing model, damaged file)."""


class DownloadError(Unavailable):
    """pip or the model hub failed to deliver what the bundle needs."""
