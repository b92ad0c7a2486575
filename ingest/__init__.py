"""The ``ingest`` command line for glmkb knowledge bases."""

from ingest.cli import build_parser, main

__all__ = ["build_parser", "main"]
