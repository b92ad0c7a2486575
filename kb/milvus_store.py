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

Connecting (URIs, shared clients, one-line errors) is ``kb.milvus_connection``; the version
filters are ``kb.milvus_filters``. Their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from kb.dense_store import DenseIndex, DenseStore, VectorChange
from kb.errors import KnowledgeBaseError, StaleVersionError
from kb.milvus_connection import (
    CONNECTIONS,
    DEFAULT_LITE_FILE,
    display_uri,
    explain_milvus_error,
    is_lite_uri,
    resolve_uri,
)
from kb.milvus_filters import PRIMARY_FIELD, live_filter, retired_ranges, stale_filter

if TYPE_CHECKING:
    from pymilvus import MilvusClient

logger = logging.getLogger(__name__)

COLLECTION_FILE = ".milvus-collection"
VECTOR_FIELD = "vector"
METRIC = "IP"  # normalized embeddings: inner product == cosine similarity
INSERT_BATCH = 1000
MAX_TOPK = 16384  # Milvus' limit on one search


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
                self._client = CONNECTIONS.acquire(self.uri, self._token, create=create)
            return self._client

    def check_writable(self) -> None:
        self.client(create=True)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client = None
                self._loaded = False
                CONNECTIONS.release(self.uri, self._token)

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


def new_collection_name(kb_name: str) -> str:
    """``glmkb_<ascii part of the name>_<random>``: valid for Milvus, unique per knowledge base."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", kb_name).strip("_")[:40] or "kb"
    return f"glmkb_{slug}_{secrets.token_hex(6)}"


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
