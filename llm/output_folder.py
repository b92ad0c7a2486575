"""Writing a model folder in one step: a new (or empty) destination outside the source, filled
in a hidden sibling folder that is renamed into place only when everything is written.

Shared by ``ingest convert`` (``llm.chatglm_legacy_convert``) and LoRA merging
(``llm.adapters.merge``): a failure or a kill leaves no half-written folder at the destination.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llm.errors import ModelLoadError

__all__ = ["check_destination", "staged_folder"]


def check_destination(source: Path, target: Path) -> None:
    """The output folder must be new (or empty) and outside the source folder."""
    if target == source or source in target.parents:
        raise ValueError(f"destination {target} must be outside the source folder {source}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"destination {target} already exists and is not an empty folder; choose a new folder")
    if not source.is_dir():
        raise ModelLoadError(f"source folder {source} does not exist")


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A fresh hidden sibling of ``target`` to write into; renamed to ``target`` when the block
    ends, deleted when it raises (``check_destination`` made sure ``target`` is new or empty)."""
    work = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
        if target.exists():
            target.rmdir()
        work.rename(target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
