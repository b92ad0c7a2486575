"""The ``ingest`` command line for glmkb knowledge bases."""

from ingest.cli import cli, main

__all__ = ["cli", "main"]
