"""``glmkb bundle OUT [...]`` and ``glmkb bundle verify DIR`` (click).

``bundle`` is a group whose default command is ``build``: ``glmkb bundle OUT`` means
``glmkb bundle build OUT``, so the issue's two spellings both work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from configs.cli import run_command

PROG = "glmkb bundle"


class DefaultBuildGroup(click.Group):
    """A group that runs ``build`` when its first argument is not a subcommand."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


@click.group("bundle", cls=DefaultBuildGroup, context_settings={"help_option_names": ["-h", "--help"]})
def bundle() -> None:
    """Offline deployment: build a bundle here (glmkb bundle OUT), check it there (glmkb bundle verify DIR)."""


@bundle.command("build")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--python", "python", metavar="X.Y", help="target Python (default: this one)")
@click.option("--platform", metavar="TAG", help="target wheel platform, e.g. manylinux_2_28_x86_64 (default: this machine)")
@click.option("--torch", "torch_build", metavar="BUILD", help="torch build: cpu, cu121, cu124..., or default for PyPI's (default: this machine's torch build)")
@click.option("--model-path", metavar="P", help="chat model folder or hub id (downloaded first)")
@click.option("--embedding", metavar="P", help="embedding model folder or hub id")
@click.option("--adapter", "adapters", metavar="P", multiple=True, help="adapter folder or hub id (repeatable)")
@click.option("--kb", "kb_names", metavar="NAME", multiple=True, help="knowledge base to include (repeatable; several names after one --kb also work)")
@click.option("--split", "split", metavar="SIZE", help="also write SIZE volumes (2G, 500M) and join.sh in OUT-volumes/")
@click.option("--config", metavar="FILE", help="settings file (for kb_root; default $GLMKB_CONFIG)")
@click.option("--kb-root", metavar="DIR", help="folder holding the knowledge bases (kb_root)")
@click.option("--find-links", "find_links", metavar="DIR", multiple=True, type=click.Path(path_type=Path),
              help="local wheel folder pip looks in first (repeatable)")
@click.option("--no-index", is_flag=True, help="only --find-links folders, never an index")
@click.option("--glmkb-wheel", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="glmkb's own wheel (default: built from this source tree)")
@click.option("-v", "--verbose", is_flag=True, help="log each pip call and show tracebacks")
@click.argument("more_kbs", nargs=-1, metavar="")
def build(out: Path, *, python: str | None, platform: str | None, torch_build: str | None, model_path: str | None,
          embedding: str | None, adapters: tuple[str, ...], kb_names: tuple[str, ...], split: str | None,
          config: str | None, kb_root: str | None, find_links: tuple[Path, ...], no_index: bool,
          glmkb_wheel: Path | None, verbose: bool, more_kbs: tuple[str, ...]) -> None:
    """Build an offline bundle in OUT: wheels, models, knowledge bases, config and scripts."""

    def work() -> int:
        from app.bundle.build import build_bundle
        from app.bundle.errors import BundleError
        from app.bundle.target import local_torch_flavour, make_target
        from app.bundle.volumes import parse_size
        from configs import load_settings

        if more_kbs and not kb_names:
            raise BundleError(f"unexpected arguments {' '.join(more_kbs)}; knowledge bases go after --kb")
        target = make_target(python=python, platform=platform, torch=torch_build or local_torch_flavour())
        root = Path(kb_root).expanduser() if kb_root else load_settings(config).kb_root
        result = build_bundle(
            out,
            target=target,
            kb_root=root,
            model_path=model_path,
            embedding=embedding,
            adapters=adapters,
            kb_names=[*kb_names, *more_kbs],
            split_size=parse_size(split) if split else None,
            find_links=[p.resolve() for p in find_links],
            no_index=no_index,
            project_wheel=glmkb_wheel,
        )
        click.echo(result.summary())
        click.echo(f"next: copy {out} (or its volumes) to the server, then ./install.sh && ./run.sh --check")
        return 0

    sys.exit(run_command(PROG, work, verbose=verbose))


@bundle.command("verify")
@click.argument("folder", type=click.Path(path_type=Path))
def verify(folder: Path) -> None:
    """Check a bundle folder (SHA256SUMS) or its volumes (VOLUMES.sha256) in place."""

    def work() -> int:
        from app.bundle.verify import verify_path

        kind, problems = verify_path(folder)
        for problem in problems:
            click.echo(f"{PROG} verify: {problem}", err=True)
        if problems:
            click.echo(f"{PROG} verify: {folder}: {len(problems)} problem(s); copy those files again", err=True)
            return 1
        click.echo(f"{folder}: {kind} intact")
        return 0

    sys.exit(run_command(f"{PROG} verify", work, verbose=False))


def main() -> None:
    """Console script ``glmkb-bundle`` (until the umbrella ``glmkb`` command registers ``bundle``)."""
    bundle(prog_name="glmkb-bundle")


if __name__ == "__main__":
    main()
