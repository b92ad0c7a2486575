"""Small helpers shared by the test modules (no fixtures: those live in tests/fixtures/)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``GLMKB_*`` setting (so a developer's own
    configuration cannot leak into a child process), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMKB_")}
    env.update(extra)
    return env
