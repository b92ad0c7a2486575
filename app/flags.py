"""The server commands (``glmkb serve``, ``glmkb web``/``glmkb-web``, ``glmkb api``/``glmkb-api``):
click commands whose flags come by name from the one flag table ``configs.flags.FLAGS``.

``server_command(name, flags=..., serve=...)`` builds one: its flags set settings through the
table (unset flags never mask YAML or the environment), errors become one line on stderr with
their exit code (``configs.cli.run_command``, prefixed with the command as typed: ``glmkb-web``
or ``glmkb web``), and ``ServerCommand.main_function`` is the console script's ``main(argv)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from configs import Settings
from configs.cli import invoke_click, run_command
from configs.flags import flag_options, settings_from_params

__all__ = ["MODEL_FLAGS", "ServerCommand", "server_command"]

MODEL_FLAGS: tuple[str, ...] = (
    "model_path", "device", "dtype", "quantization", "adapter", "merge_adapter",
    "kb_root", "embedding", "embedding_device",
)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

Serve = Callable[..., int]
"""``serve(settings, *, verbose, prog) -> exit code``: blocks until the server stops."""


class ServerCommand(click.Command):
    """A server's click command: flags -> ``Settings`` -> ``serve``."""

    def __init__(
        self,
        *args: Any,
        serve: Callable[[], Serve],
        extra_overrides: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.serve = serve
        self.extra_overrides = extra_overrides

    def settings(self, params: Mapping[str, Any]) -> Settings:
        """The settings the flags ``params`` give (YAML, environment and defaults below them)."""
        extra = self.extra_overrides(params) if self.extra_overrides else {}
        return settings_from_params(params, **extra)

    def settings_from_argv(self, argv: Sequence[str]) -> Settings:
        """The settings a command line would serve with, without serving (tests, tools)."""
        with self.make_context(self.name, list(argv)) as ctx:
            return self.settings(ctx.params)

    def main_function(self) -> Callable[[Sequence[str] | None], int]:
        """The console script: ``main(argv=None) -> exit code``; usage errors exit 2."""

        def main(argv: Sequence[str] | None = None) -> int:
            return invoke_click(self, list(sys.argv[1:] if argv is None else argv), prog=str(self.name))

        main.__doc__ = f"Run ``{self.name}``; returns the exit status."
        return main


def _run(**params: Any) -> None:
    """The callback: load settings, serve; exits with ``serve``'s code or the error's."""
    ctx = click.get_current_context()
    command: ServerCommand = ctx.command  # type: ignore[assignment]
    verbose = bool(params.pop("verbose", False))
    prog = ctx.command_path

    def work() -> int:
        return command.serve()(command.settings(params), verbose=verbose, prog=prog)

    ctx.exit(run_command(prog, work, verbose=verbose))


def server_command(
    name: str,
    *,
    help: str,
    flags: Sequence[str],
    serve: Callable[[], Serve],
    extra_overrides: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> ServerCommand:
    """A ``ServerCommand`` with ``flags`` (names in ``FLAGS``; ``--config`` first and ``-v``
    last are added). ``serve`` returns the serving function, imported only when run (so
    ``--help`` never imports gradio or uvicorn)."""
    fn = flag_options("config", *flags, "verbose")(_run)
    decorate = click.command(
        name, cls=ServerCommand, help=help, context_settings=CONTEXT, serve=serve, extra_overrides=extra_overrides
    )
    return decorate(fn)  # type: ignore[return-value]
