"""Dense vectors in a Milvus collection: embedded Milvus Lite (a ``.db`` path) or a server.

One collection per knowledge base, not one partition each: knowledge bases built with
different embedding models have different dimensions (a collection has one schema), and
dropping a knowledge base is dropping its collection. Rows are ``(chunk_id INT64 primary
key, vector FLOAT_VECTOR)`` and nothing else: text, metadata, BM25 and the manifest stay in
the versioned folder under ``kb_root``, so there is one copy of every chunk's text.

Versions without a version column. Chunk ids grow and are never reused, so the vectors of a
published version V are exactly ``chunk_id < V.next_chunk_id`` minus the id ranges that V
removed ("retired"), and every search carries that filter. A build on top of V:

1. deletes what no reader can need any more: rows ``>= V.next_chunk_id`` (left by builds
   that were killed before publishing) and V's retired ranges (kept one build for readers
   still on the version before V, like the previous FAISS version folder);
2. inserts the new chunks' vectors, whose ids are ``>= V.next_chunk_id`` and therefore
   invisible to readers of V;
3. flushes and counts the new version's rows through its own filter.

Only then does the knowledge base publish the manifest (``kb/storage.py``). A build killed
at any point leaves V's readers unaffected; the next build removes the leftovers. Opening a
version counts its rows once before the first search and refuses a collection that lost
or gained vectors behind glmkb's back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from tqdm.auto import tqdm

from kb.dense_store import DenseIndex, DenseStore, VectorChange
from kb.errors import KnowledgeBaseError, StaleVersionError

if TYPE_CHECKING:
    from pymilvus import MilvusClient

logger = logging.getLogger(__name__)

LITE_SUFFIX = ".db"
DEFAULT_LITE_FILE = "milvus.db"
COLLECTION_FILE = ".milvus-collection"
PRIMARY_FIELD = "chunk_id"
VECTOR_FIELD = "vector"
METRIC = "IP"  # normalized embeddings: inner product == cosine similarity
INSERT_BATCH = 1000
MAX_TOPK = 16384  # Milvus' limit on one search
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


def new_collection_name(kb_name: str) -> str:
    """``glmkb_<ascii part of the name>_<random>``: valid for Milvus, unique per knowledge base."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", kb_name).strip("_")[:40] or "kb"
    return f"glmkb_{slug}_{secrets.token_hex(6)}"


def live_filter(below: int, retired: Sequence[Sequence[int]]) -> str:
    """The Milvus filter selecting one version's rows."""
    parts = [f"{PRIMARY_FIELD} < {int(below)}"]
    parts += [f"not ({PRIMARY_FIELD} >= {int(a)} and {PRIMARY_FIELD} < {int(b)})" for a, b in retired]
    return " and ".join(parts)


def stale_filter(below: int, retired: Sequence[Sequence[int]]) -> str:
    """The rows no reader of a version (or of the one before it) can need."""
    parts = [f"{PRIMARY_FIELD} >= {int(below)}"]
    parts += [f"({PRIMARY_FIELD} >= {int(a)} and {PRIMARY_FIELD} < {int(b)})" for a, b in retired]
    return " or ".join(parts)


def retired_ranges(removed_ids: Sequence[int], live_ids: np.ndarray) -> list[list[int]]:
    """Removed chunk ids as few ``[start, end)`` ranges.

    Runs of consecutive ids become one range, and neighbouring ranges merge when no chunk of
    the new version lies between them (ids in such gaps were removed by earlier builds).
    """
    ids = np.unique(np.asarray(removed_ids, dtype=np.int64))
    if len(ids) == 0:
        return []
    cuts = np.nonzero(np.diff(ids) != 1)[0]
    starts = np.concatenate([ids[:1], ids[cuts + 1]])
    ends = np.concatenate([ids[cuts], ids[-1:]]) + 1
    live = np.asarray(live_ids, dtype=np.int64)
    merged = [[int(starts[0]), int(ends[0])]]
    for start, end in zip(starts[1:], ends[1:], strict=True):
        live_between = np.searchsorted(live, start) - np.searchsorted(live, merged[-1][1])
        if live_between == 0:
            merged[-1][1] = int(end)
        else:
            merged.append([int(start), int(end)])
    return merged


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


_CONNECTIONS = _Connections()


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


# --- the store ------------------------------------------------------------------------------------


class MilvusIndex(DenseIndex):
    """One published version's rows of a Milvus collection (connects on the first search)."""

    def __init__(self, store: MilvusStore, *, dimension: int, count: int, below: int, retired: list[list[int]]) -> None:
        self.store = store
        self.dimension = dimension
        self.count = count
        self.below = below
        self.retired = retired
        self.filter = live_filter(below, retired)
        self._verified = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.count

    def check(self) -> None:
        if self.count:
            self.verify()

    def verify(self) -> None:
        """Check once that the collection holds exactly this version's vectors."""
        with self._lock:
            if self._verified:
                return
            have = self.store.count(self.filter, dimension=self.dimension)
            if have != self.count:
                raise StaleVersionError(
                    f"Milvus collection {self.store.collection} at {display_uri(self.store.uri)} holds {have} "
                    f"vectors for knowledge base {self.store.kb_name!r}, whose manifest lists {self.count} "
                    "chunks (vectors were lost or changed outside glmkb); drop the knowledge base and build it again"
                )
            self._verified = True

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self.count == 0 or k <= 0:
            return []
        self.verify()
        return self.store.search(self.filter, vector, min(k, self.count, MAX_TOPK))


class MilvusStore(DenseStore):
    """Vectors of knowledge base ``kb_name`` in Milvus collection ``collection`` at ``uri``.

    ``recorded_uri`` is what the manifest records for ``uri``; ``built_uri`` is what the
    current manifest says (for messages when the collection is not found).
    ``collection`` is None until the first build names it; the name is written to
    ``kb_dir/.milvus-collection`` before the collection is created, so a first build that
    is killed leaves nothing the next one cannot find and clean up.
    """

    kind = "milvus"

    def __init__(
        self,
        *,
        kb_dir: Path,
        kb_name: str,
        uri: str,
        recorded_uri: str,
        token_env: str = "MILVUS_TOKEN",
        collection: str | None = None,
        built_uri: str | None = None,
    ) -> None:
        self.kb_dir = kb_dir
        self.kb_name = kb_name
        self.uri = uri
        self.recorded_uri = recorded_uri
        self.token_env = token_env
        self.collection = collection
        self.built_uri = built_uri
        self._client: MilvusClient | None = None
        self._token = ""
        self._loaded = False
        self._lock = threading.RLock()

    @property
    def lite(self) -> bool:
        return is_lite_uri(self.uri)

    @property
    def index_type(self) -> str:
        # Lite: exact search (FLAT) like FAISS. Servers: AUTOINDEX (HNSW), built for scale.
        return "FLAT" if self.lite else "AUTOINDEX"

    def describe(self) -> str:
        return f"Milvus collection {self.collection} at {display_uri(self.uri)}"

    # --- connection ---------------------------------------------------------------------------

    def client(self, *, create: bool = False) -> MilvusClient:
        """The shared client for ``uri`` (connecting, or starting Milvus Lite, on first use)."""
        with self._lock:
            if self._client is None:
                self._token = "" if self.lite else os.environ.get(self.token_env, "")
                self._client = _CONNECTIONS.acquire(self.uri, self._token, create=create)
            return self._client

    def check_writable(self) -> None:
        self.client(create=True)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client = None
                self._loaded = False
                _CONNECTIONS.release(self.uri, self._token)

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from pymilvus import MilvusException

        try:
            yield
        except MilvusException as e:
            raise KnowledgeBaseError(
                explain_milvus_error(e, uri=self.uri, action=action, token_env=self.token_env)
            ) from e

    def _require_collection(self, client: MilvusClient, *, dimension: int | None = None) -> str:
        name = self.collection
        with self._errors("find the collection"):
            found = name is not None and client.has_collection(name)
        if not found:
            built = f" (its manifest says {self.built_uri})" if self.built_uri else ""
            raise KnowledgeBaseError(
                f"knowledge base {self.kb_name!r} keeps its vectors in Milvus collection {name}, which "
                f"{display_uri(self.uri)} does not have; set kb.milvus_uri to the Milvus it was built with"
                f"{built}, or drop the knowledge base and build it again"
            )
        assert name is not None
        with self._lock:
            if not self._loaded:
                with self._errors("load the collection"):
                    if dimension is not None:
                        self._check_dimension(client, name, dimension)
                    client.load_collection(name)
                self._loaded = True
        return name

    def _check_dimension(self, client: MilvusClient, name: str, dimension: int) -> None:
        fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
        have = fields.get(VECTOR_FIELD, {}).get("params", {}).get("dim")
        if have is None or int(have) != dimension or PRIMARY_FIELD not in fields:
            raise KnowledgeBaseError(
                f"Milvus collection {name} at {display_uri(self.uri)} is not the vector table of knowledge "
                f"base {self.kb_name!r} (expected {PRIMARY_FIELD} and {dimension}-dimensional {VECTOR_FIELD}); "
                "drop the knowledge base and build it again"
            )

    # --- reading ------------------------------------------------------------------------------

    def open_index(self, version_dir: Path, manifest: dict[str, Any], *, chunk_count: int) -> MilvusIndex:
        vectors = manifest.get("vectors", {})
        if self.collection is None:
            self.collection = vectors.get("collection")
        if not self.collection or vectors.get("collection") != self.collection:
            raise KnowledgeBaseError(
                f"manifest of {version_dir} names no Milvus collection or another one "
                f"({vectors.get('collection')!r}); rebuild the knowledge base"
            )
        return MilvusIndex(
            self,
            dimension=int(manifest["embedding"]["dimension"]),
            count=chunk_count,
            below=int(manifest.get("next_chunk_id", 0)),
            retired=[[int(a), int(b)] for a, b in vectors.get("retired", [])],
        )

    def count(self, expression: str, *, dimension: int | None = None) -> int:
        client = self.client()
        name = self._require_collection(client, dimension=dimension)
        with self._errors("count vectors"):
            rows = client.query(name, filter=expression, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def search(self, expression: str, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        client = self.client()
        name = self._require_collection(client)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self._errors("search"):
            results = client.search(
                name,
                data=[query],
                limit=k,
                filter=expression,
                output_fields=[PRIMARY_FIELD],
                search_params={"metric_type": METRIC},
            )
        return [(int(_hit_id(hit)), float(hit["distance"])) for hit in results[0]]

    # --- writing ------------------------------------------------------------------------------

    def write_version(self, change: VectorChange) -> dict[str, Any]:
        client = self.client(create=True)
        base = change.base
        if base is not None and not isinstance(base, MilvusIndex):
            raise KnowledgeBaseError(f"knowledge base {self.kb_name!r} mixes vector stores; rebuild it")
        if base is None:
            name = self._create_fresh_collection(client, change.dimension)
        else:
            name = self._require_collection(client, dimension=change.dimension)
            with self._errors("delete old vectors"):
                client.delete(name, filter=stale_filter(base.below, base.retired))
        self._insert(client, name, change)
        with self._errors("flush"):
            client.flush(name)
        retired = retired_ranges(change.removed_ids, change.live_ids)
        have = self.count(live_filter(change.next_chunk_id, retired))
        if have != len(change.live_ids):
            raise KnowledgeBaseError(
                f"Milvus collection {name} at {display_uri(self.uri)} holds {have} vectors for the new version "
                f"of {self.kb_name!r} instead of {len(change.live_ids)}; nothing was published. Drop the "
                "knowledge base and build it again"
            )
        return {
            "store": self.kind,
            "uri": self.recorded_uri,
            "collection": name,
            "metric": METRIC,
            "index": self.index_type,
            "retired": retired,
        }

    def _create_fresh_collection(self, client: MilvusClient, dimension: int) -> str:
        """Name (or re-use the name of a killed first build) and create an empty collection."""
        from pymilvus import DataType, MilvusClient

        name = self._claim_collection_name()
        with self._errors("create the collection"):
            # No published version uses it yet: it can only be what a killed first build left.
            if client.has_collection(name):
                client.drop_collection(name)
            schema = MilvusClient.create_schema(
                auto_id=False,
                enable_dynamic_field=False,
                description=f"glmkb knowledge base {self.kb_name}: vectors keyed by chunk id",
            )
            schema.add_field(PRIMARY_FIELD, DataType.INT64, is_primary=True)
            schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=int(dimension))
            client.create_collection(name, schema=schema, consistency_level="Strong")
            index = client.prepare_index_params()
            index.add_index(VECTOR_FIELD, index_type=self.index_type, metric_type=METRIC)
            # sync=False: waiting for the index asks for a timestamp Milvus Lite does not
            # serve (an error dumped on stderr); loading below waits for what it needs.
            client.create_index(name, index, sync=False)
            client.load_collection(name)
        with self._lock:
            self._loaded = True
        return name

    def _claim_collection_name(self) -> str:
        if self.collection is None:
            self.collection = read_collection_file(self.kb_dir) or new_collection_name(self.kb_name)
            write_collection_file(self.kb_dir, self.collection, uri=self.recorded_uri)
        return self.collection

    def _insert(self, client: MilvusClient, name: str, change: VectorChange) -> None:
        ids = list(change.new_ids)
        vectors = np.ascontiguousarray(change.vectors, dtype=np.float32)
        with tqdm(
            total=len(ids), desc="milvus", unit="vector", disable=not change.show_progress, leave=False
        ) as bar, self._errors("insert vectors"):
            for i in range(0, len(ids), INSERT_BATCH):
                rows = [
                    {PRIMARY_FIELD: int(cid), VECTOR_FIELD: vectors[i + j]}
                    for j, cid in enumerate(ids[i : i + INSERT_BATCH])
                ]
                client.insert(name, rows)
                bar.update(len(rows))

    def drop(self) -> None:
        name = self.collection or read_collection_file(self.kb_dir)
        if name is None:
            return
        if self.lite and not Path(self.uri).exists():
            logger.warning("Milvus Lite database %s is gone; nothing to drop there", self.uri)
            return
        client = self.client()
        with self._errors("drop the collection"):
            if client.has_collection(name):
                client.drop_collection(name)
            else:
                logger.warning("Milvus at %s has no collection %s; nothing to drop there", display_uri(self.uri), name)
        with self._lock:
            self._loaded = False


def _hit_id(hit: Any) -> Any:
    try:
        return hit[PRIMARY_FIELD]
    except KeyError:
        return hit["id"]


def read_collection_file(kb_dir: Path) -> str | None:
    """The collection a knowledge base's first build claimed, if any."""
    try:
        data = json.loads((kb_dir / COLLECTION_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise KnowledgeBaseError(f"{kb_dir / COLLECTION_FILE} is damaged ({e}); delete it and build again") from e
    name = data.get("collection") if isinstance(data, dict) else None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", name):
        raise KnowledgeBaseError(f"{kb_dir / COLLECTION_FILE} names no valid collection; delete it and build again")
    return name


def write_collection_file(kb_dir: Path, name: str, *, uri: str) -> None:
    """Record the collection name durably before creating it (atomic replace, fsynced)."""
    kb_dir.mkdir(parents=True, exist_ok=True)
    tmp = kb_dir / f".tmp-collection-{secrets.token_hex(3)}"
    with tmp.open("w", encoding="utf-8") as f:
        json.dump({"collection": name, "uri": uri}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, kb_dir / COLLECTION_FILE)


__all__ = [
    "COLLECTION_FILE",
    "DEFAULT_LITE_FILE",
    "MilvusIndex",
    "MilvusStore",
    "display_uri",
    "explain_milvus_error",
    "is_lite_uri",
    "live_filter",
    "new_collection_name",
    "resolve_uri",
    "retired_ranges",
    "stale_filter",
]
