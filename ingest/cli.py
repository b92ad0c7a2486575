"""The ``ingest`` command line: build, query and evaluate knowledge bases, summarize, convert.

One click group; each subcommand lives in ``ingest/cmd_<name>.py`` exposing ``command`` (made
with ``ingest_command``: its arguments, and its flags picked by name from the one flag table
``configs.flags.FLAGS``) and ``run(args) -> int``, where ``args`` holds every parameter by name
and ``settings_from_args(args)`` loads the settings with the flags applied. Errors become
one line on stderr with the exit code of their kind (configs.errors).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from configs import Settings
from configs.cli import invoke_click, run_command, wants_verbose
from configs.flags import flag_options, settings_from_params

COMMANDS = ("build", "list", "remove", "drop", "doctor", "query", "eval", "summarize", "convert", "characters", "ask")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Commands(click.Group):
    """The subcommand modules, imported when named (``ingest query`` never imports torch)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self.get_command(ctx, name) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        try:
            module = importlib.import_module(f"ingest.cmd_{cmd_name}")
        except ModuleNotFoundError as e:
            if e.name == f"ingest.cmd_{cmd_name}":
                return None
            raise
        return module.command


@click.group(cls=_Commands, context_settings=CONTEXT, help="Build and use glmkb knowledge bases from Chinese documents.")
@flag_options("config", "verbose")
def cli(config: str | None, verbose: bool | None) -> None:
    """The group: ``--config`` and ``-v`` may come before the subcommand too."""


def ingest_command(
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    arguments: Sequence[Callable[[Any], Any]] = (),
    flags: Sequence[str] = (),
    description: str | None = None,
) -> click.Command:
    """A subcommand calling ``run(args)``; ``args`` has every parameter, plus ``config`` and
    ``verbose`` from the group when not given after the subcommand."""

    def callback(**params: Any) -> int:
        group = click.get_current_context().find_root().params
        for shared in ("config", "verbose"):
            params[shared] = params.get(shared) or group.get(shared)
        return run(argparse.Namespace(**params))

    fn: Any = flag_options(*flags, "config", "verbose")(callback)
    for argument in reversed(arguments):
        fn = argument(fn)
    text = (description or help).replace("``", "`")  # module docstrings are RST; --help shows `code`
    return click.command(name, help=text, short_help=help, context_settings=CONTEXT)(fn)


def doc_body(doc: str | None) -> str:
    """A subcommand module's docstring past its first paragraph, as ``--help`` text (RST
    double backquotes made single)."""
    return (doc or "").split("\n\n", 1)[-1].replace("``", "`")


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Load settings with every flag in ``args`` applied (``--kb``, ``--kb-root``, ``--embedding``...)."""
    return settings_from_params(vars(args), **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; never lets a traceback reach the user unless ``--verbose``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_command("ingest", lambda: invoke_click(cli, argv, prog="ingest"), verbose=wants_verbose(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
