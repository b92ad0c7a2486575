"""The bundle's shell scripts and Dockerfile, kept as package data files (``templates/``) with
``{{NAME}}`` placeholders: ``{{`` never occurs in sh, unlike ``$`` which string.Template uses."""

from __future__ import annotations

import re
from importlib.resources import files

_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def install_template(name: str, **values: object) -> str:
    """The template ``name`` with every ``{{KEY}}`` replaced; a missing value is a bug."""
    text = files("app.bundle").joinpath("templates", name).read_text(encoding="utf-8")

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template {name} needs {key}")
        return str(values[key])

    return _PLACEHOLDER.sub(value, text)
