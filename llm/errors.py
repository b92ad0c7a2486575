"""Errors raised while finding and loading models."""


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what was looked for and how to fix it."""
