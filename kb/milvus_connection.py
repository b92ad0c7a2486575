"""Connecting to Milvus: ``kb.milvus_uri`` settings, one shared client per server, failures as one line.

Embedded Milvus Lite (a ``.db`` path) runs inside this process and locks its folder, so
clients are shared per ``(uri, token)`` and a Lite server is stopped when its last user
closes (``CONNECTIONS``). Every pymilvus failure is turned into one ``KnowledgeBaseError``
that names the Milvus (without credentials) and the fix (``explain_milvus_error``). Used by
``kb.milvus_store``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kb.errors import KnowledgeBaseError

if TYPE_CHECKING:
    from pymilvus import MilvusClient

LITE_SUFFIX = ".db"
DEFAULT_LITE_FILE = "milvus.db"
_SERVER_SCHEMES = ("http", "https", "tcp")
FIX_URI = (
    "set kb.milvus_uri to a reachable Milvus server (http://host:19530) or to a writable "
    "path ending in .db for embedded Milvus Lite"
)


# --- URIs -----------------------------------------------------------------------------------------


def is_lite_uri(uri: str) -> bool:
    """A ``.db`` path means embedded Milvus Lite; ``http(s)://`` / ``tcp://`` a server."""
    return urlsplit(uri).scheme.lower() not in _SERVER_SCHEMES


def resolve_uri(setting: str | None, kb_root: Path) -> tuple[str, str]:
    """``(uri to connect to, uri to record in the manifest)`` for a ``kb.milvus_uri`` setting.

    None means ``milvus.db`` under ``kb_root``. Relative ``.db`` paths are relative to
    ``kb_root``, and are recorded relative so the knowledge bases can move with it. Server
    URIs are recorded without any ``user:password@`` part.
    """
    raw = (setting or DEFAULT_LITE_FILE).strip()
    if not is_lite_uri(raw):
        parts = urlsplit(raw)
        if not parts.hostname:
            raise KnowledgeBaseError(f"kb.milvus_uri {raw!r} has no host; use e.g. http://127.0.0.1:19530")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return raw, urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if not raw.endswith(LITE_SUFFIX):
        raise KnowledgeBaseError(
            f"kb.milvus_uri {raw!r} is neither a path ending in .db (embedded Milvus Lite) nor "
            "http(s)://host:port (a Milvus server)"
        )
    path = Path(os.path.expanduser(raw))
    absolute = path if path.is_absolute() else Path(kb_root).expanduser() / path
    return str(absolute.resolve()), raw


def display_uri(uri: str) -> str:
    """``uri`` without credentials, for messages."""
    if is_lite_uri(uri):
        return uri
    parts = urlsplit(uri)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))



# --- connections ---------------------------------------------------------------------------------


class _Connections:
    """One ``MilvusClient`` per (uri, token) in this process, shared by every knowledge base.

    Milvus Lite runs inside the process and locks its ``.db`` folder; when the last user of
    a Lite database disconnects, its server is stopped so another process can open it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], list[Any]] = {}

    def acquire(self, uri: str, token: str, *, create: bool) -> MilvusClient:
        key = (uri, token)
        with self._lock:
            entry = self._clients.get(key)
            if entry is None:
                entry = [_open_client(uri, token, create=create), 0]
                self._clients[key] = entry
            entry[1] += 1
            return entry[0]

    def release(self, uri: str, token: str) -> None:
        key = (uri, token)
        with self._lock:
            entry = self._clients.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._clients[key]
        with contextlib.suppress(Exception):
            entry[0].close()
        if is_lite_uri(uri):
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(uri)



CONNECTIONS = _Connections()


def _import_pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as e:
        raise KnowledgeBaseError(
            "kb.store is milvus but pymilvus is not installed; pip install 'glmkb[milvus]' "
            "(pymilvus and milvus-lite), or set kb.store: faiss"
        ) from e
    # Every Milvus failure is turned into one KnowledgeBaseError that names the fix; the
    # libraries' own tracebacks on stderr would break the CLI's one-line error contract.
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)
    return pymilvus


def _open_client(uri: str, token: str, *, create: bool) -> MilvusClient:
    pymilvus = _import_pymilvus()
    if is_lite_uri(uri):
        _check_lite_path(Path(uri), create=create)
        try:
            import milvus_lite  # noqa: F401
        except ImportError as e:
            raise KnowledgeBaseError(
                f"kb.milvus_uri {uri} is a Milvus Lite database but milvus-lite is not installed; "
                "pip install 'glmkb[milvus]', or point kb.milvus_uri at a Milvus server"
            ) from e
    try:
        return pymilvus.MilvusClient(uri=uri, token=token)
    except pymilvus.MilvusException as e:
        if is_lite_uri(uri):
            raise KnowledgeBaseError(_lite_failure(Path(uri), e)) from e
        raise KnowledgeBaseError(explain_milvus_error(e, uri=uri, action="connect")) from e


def _check_lite_path(path: Path, *, create: bool) -> None:
    if path.exists() and not path.is_dir():
        raise KnowledgeBaseError(
            f"Milvus Lite database {path} is a file, not a Milvus Lite 3 database folder; {FIX_URI}"
        )
    if not create:
        if not path.exists():
            raise KnowledgeBaseError(
                f"Milvus Lite database {path} does not exist; set kb.milvus_uri to the Milvus the "
                "knowledge base was built with, or drop it and build it again"
            )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "permission denied", str(path.parent))
    except OSError as e:
        raise KnowledgeBaseError(
            f"cannot create Milvus Lite database {path} ({e.strerror or e}); {FIX_URI}"
        ) from e


def _lite_failure(path: Path, error: Exception) -> str:
    if _locked_by_another_process(path):
        return (
            f"Milvus Lite database {path} is in use by another process (Milvus Lite allows one "
            "process at a time, e.g. the web UI or another ingest command); stop that process, or "
            "use a Milvus server (kb.milvus_uri: http://host:19530) to share knowledge bases"
        )
    reason = getattr(error, "message", None) or str(error)
    return f"cannot open Milvus Lite database {path} ({reason}); {FIX_URI}"


def _locked_by_another_process(path: Path) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return False
    lock = path / "LOCK"
    if not lock.is_file():
        return False
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def explain_milvus_error(error: Exception, *, uri: str, action: str, token_env: str = "MILVUS_TOKEN") -> str:
    """One line saying what failed against which Milvus, and the fix."""
    where = display_uri(uri)
    message = " ".join(str(getattr(error, "message", None) or error).split())
    code = getattr(error, "code", None)
    lowered = message.lower()
    if code == 2 or "fail connecting" in lowered or "unavailable" in lowered or "unimplemented" in lowered:
        return f"cannot reach Milvus at {where} ({message}); start the Milvus server, or {FIX_URI}"
    if code == 3 or "auth" in lowered or "credential" in lowered or "permission" in lowered:
        return (
            f"Milvus at {where} refused access ({message}); put user:password or an API key in "
            f"${token_env} (kb.milvus_token_env names the variable)"
        )
    return f"Milvus at {where} failed to {action}: {message}"


__all__ = [
    "CONNECTIONS",
    "DEFAULT_LITE_FILE",
    "FIX_URI",
    "display_uri",
    "explain_milvus_error",
    "is_lite_uri",
    "resolve_uri",
]
