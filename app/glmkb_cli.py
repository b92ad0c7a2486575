"""``glmkb``: one command for everything, with subcommands (``glmkb serve``, ``glmkb web``,
``glmkb api``, ...).

Adding a subcommand is one line in ``SUBCOMMANDS``: its name and ``"module:attribute"`` of a
``click.Command`` (the servers' are ``app.flags.server_command``s, so ``glmkb web`` and
``glmkb-web`` are one command), or of an argparse-style ``main(argv) -> int`` (``finetune``),
wrapped so its own flags and ``--help`` pass through. Subcommands are imported only when run, so ``glmkb api`` never
imports gradio.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["SUBCOMMANDS", "cli", "main"]

SUBCOMMANDS: dict[str, str] = {
    "serve": "app.serve_command:serve_command",
    "web": "app.web.cli:command",
    "api": "app.api.cli:command",
    "finetune": "llm.finetune.cli:main",
    "bundle": "app.bundle.cli:bundle",
}


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text and text.strip() else None


def _argparse_command(name: str, main_fn: Any) -> click.Command:
    """A click command that hands its arguments, untouched, to an argparse ``main(argv)``."""

    @click.command(
        name,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
        add_help_option=False,
        help=_first_line(sys.modules[main_fn.__module__].__doc__),
    )
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def command(argv: tuple[str, ...]) -> None:
        sys.exit(main_fn(list(argv)))

    return command


class LazyGroup(click.Group):
    """A group whose subcommands come from ``SUBCOMMANDS``, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        loaded = _load(target)
        return loaded if isinstance(loaded, click.Command) else _argparse_command(cmd_name, loaded)


@click.group(cls=LazyGroup, help="glmkb: a private knowledge base over a local ChatGLM-family model.")
def cli() -> None:
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``glmkb``; returns the exit status."""
    try:
        # A subcommand's ``ctx.exit(code)`` comes back as the result (click's non-standalone mode).
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="glmkb", standalone_mode=False)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
