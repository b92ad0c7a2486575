"""What every glmkb command does around its work: logging, and errors as one line on stderr
with the exit code of their kind (configs.errors: 2 bad input, 3 unavailable), never a
traceback unless ``--verbose``. Real bugs (anything that is not a GlmkbError, ValueError or
OSError: a RuntimeError, an ImportError inside glmkb) keep their traceback and exit 1."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable, Sequence

import click

from configs.errors import GlmkbError, exit_code_for, one_line

# What a user can fix or cannot help: bad settings or input, missing files or models, a port
# in use, a server that cannot be reached. Everything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (GlmkbError, ValueError, OSError)

__all__ = ["USER_ERRORS", "invoke_click", "one_line", "run_command", "wants_verbose"]


def wants_verbose(argv: Sequence[str]) -> bool:
    """``-v``/``--verbose`` anywhere on the line: logging is set up before click parses it."""
    return any(arg in ("-v", "--verbose") for arg in argv)


def run_command(prog: str, work: Callable[[], int | None], *, verbose: bool) -> int:
    """Set up logging and run ``work``: its exit code, 130 on Ctrl-C, one line on stderr and
    the error's exit code for a user error (``verbose``: after its traceback; the same exit code,
    so adding ``-v`` to a script never changes what it sees)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(work() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return exit_code_for(e)


def invoke_click(command: click.Command, argv: Sequence[str], *, prog: str) -> int:
    """Run a click command without its own exit handling, so ``run_command`` maps errors:
    usage errors print click's message (exit 2), ``--help`` exits 0, Ctrl-C raises."""
    try:
        result = command.main(list(argv), prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    except click.ClickException as e:
        e.show(file=sys.stderr)
        return e.exit_code
    return int(result or 0)
