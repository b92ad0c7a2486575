"""Errors raised while finding and loading models."""

from configs.errors import BadInput


class ModelLoadError(BadInput):
    """A model could not be loaded; the message says what was looked for and how to fix it."""
