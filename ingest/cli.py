"""The ``ingest`` command line: build, query and evaluate knowledge bases, summarize, convert.

Each subcommand lives in its own module ``ingest/cmd_<name>.py`` exposing
``add_parser(subparsers)`` (which sets ``func=run`` on its parser) and
``run(args) -> int`` (settings come from ``settings_from_args(args)``). Errors become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from configs import Settings, load_settings
from configs.cli import run_command

COMMANDS = ("build", "list", "remove", "drop", "query", "eval", "summarize", "convert", "characters", "ask")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand module that is installed."""
    parser = argparse.ArgumentParser(
        prog="ingest", description="Build and use glmkb knowledge bases from Chinese documents."
    )
    parser.add_argument("--config", help="YAML settings file (default: $GLMKB_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ingest.cmd_{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ingest.cmd_{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def settings_from_args(args: argparse.Namespace, **overrides: object) -> Settings:
    """Load settings with the shared flags (``--config``, ``--kb-root``, ``--kb``) applied."""
    top = {
        "kb_root": getattr(args, "kb_root", None),
        "kb_name": getattr(args, "kb", None),
    }
    return load_settings(args.config, **top, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; never lets a traceback reach the user unless ``--verbose``."""
    args = build_parser().parse_args(argv)
    return run_command("ingest", lambda: args.func(args), verbose=args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
