"""A version's ``manifest.json``, parsed once into a frozen, schema-checked model.

The manifest records how a knowledge base was built (embedding model, chunking, vector store),
its counts and documents, and the SHA-256 of every other file of the version. Since format 2 it
also carries a ``checksum`` of its own canonical JSON, so one flipped bit anywhere in it is
reported as damage (one line naming the knowledge base and the fix) instead of surfacing later
as a ``KeyError`` or a wrong setting. Format 1 manifests (no checksum) are still read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kb.errors import DamagedKnowledgeBaseError

MANIFEST = "manifest.json"
FORMAT = 2
READABLE_FORMATS = (1, 2)
SPLITTER_VERSION = "chapters-sentences-v1"
_STRICT = ConfigDict(frozen=True, strict=True, extra="forbid")


class EmbeddingSection(BaseModel):
    model_config = _STRICT
    model: str
    dimension: int | None = Field(default=None, ge=1)


class ChunkingSection(BaseModel):
    model_config = _STRICT
    chunk_size: int = Field(ge=1)
    chunk_overlap: int = Field(ge=0)
    splitter: str = SPLITTER_VERSION


class DocumentEntry(BaseModel):
    model_config = _STRICT
    source: str
    sha256: str
    chars: int = Field(ge=0)
    chunks: int = Field(ge=0)


class Counts(BaseModel):
    model_config = _STRICT
    documents: int = Field(ge=0)
    chunks: int = Field(ge=0)


class Manifest(BaseModel):
    """One version's manifest (or the settings of a knowledge base not written yet)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")
    format: int = FORMAT
    name: str | None = None
    embedding: EmbeddingSection
    chunking: ChunkingSection
    vectors: dict[str, Any] | None = None
    next_chunk_id: int = Field(default=0, ge=0)
    created_at: str | None = None
    updated_at: str | None = None
    documents: dict[str, DocumentEntry] = Field(default_factory=dict)
    counts: Counts = Counts(documents=0, chunks=0)
    bm25: dict[str, Any] | None = None
    files: dict[str, str] = Field(default_factory=dict)
    checksum: str | None = None

    @property
    def keyword_only(self) -> bool:
        from kb.embedding import is_keyword_only

        return is_keyword_only(self.embedding.model)

    @property
    def store(self) -> str:
        """The vector store kind (manifests from before stores existed are FAISS)."""
        return str((self.vectors or {}).get("store", "faiss"))

    def as_dict(self) -> dict[str, Any]:
        """A plain JSON-able dict (a fresh copy; callers may change it); absent sections stay absent."""
        return {k: v for k, v in self.model_dump(mode="json").items() if v is not None}


@dataclass(frozen=True)
class Requested:
    """Settings a caller asked for; None = "what the knowledge base has" (or the default for a new one)."""

    embedding_model: str | None = None
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    store: str | None = None


@dataclass(frozen=True)
class NewKBDefaults:
    """What a new knowledge base gets where :class:`Requested` says None (from settings)."""

    embedding_model: str = "GanymedeNil/text2vec-large-chinese"
    chunk_size: int = 400
    chunk_overlap: int = 80
    store: str = "faiss"
    if_unavailable: str = "keyword_only"
    """``keyword_only``: a default embedding model that cannot be found builds BM25 only (one warning)."""


def new_manifest(requested: Requested, defaults: NewKBDefaults, *, like: Manifest | None = None) -> Manifest:
    """The settings of a knowledge base not written yet (``like``: one that was dropped under us).

    An embedding model the caller named must be available at build time; the default one follows
    the ``auto`` rule (``kb.embedding.resolve_embedding``): keyword-only when it cannot be found.
    """
    from kb.embedding import model_identity, resolve_embedding

    if requested.embedding_model is not None:
        model = model_identity(requested.embedding_model)
    elif like is not None:
        model = like.embedding.model
    else:
        model = resolve_embedding(defaults.embedding_model, fallback=defaults.if_unavailable == "keyword_only")
    chunk_size = requested.chunk_size or (like.chunking.chunk_size if like else defaults.chunk_size)
    overlap = requested.chunk_overlap
    if overlap is None:
        overlap = like.chunking.chunk_overlap if like else defaults.chunk_overlap
    data: dict[str, Any] = {
        "embedding": {"model": model, "dimension": None},
        "chunking": {"chunk_size": chunk_size, "chunk_overlap": overlap, "splitter": SPLITTER_VERSION},
    }
    store = requested.store or (like.store if like and not like.keyword_only else defaults.store)
    from kb.embedding import is_keyword_only

    if not is_keyword_only(model):
        data["vectors"] = {"store": store}
    return Manifest.model_validate(data)


def check_requested(manifest: Manifest, requested: Requested, *, kb_name: str) -> str | None:
    """Refuse a request that contradicts how the knowledge base was built (one line with the fix).

    Returns the embedding model to add when a keyword-only knowledge base is asked for one
    (its chunks are then embedded: glmkb #18), else None.
    """
    from kb.embedding import is_keyword_only, model_identity, same_model
    from kb.errors import EmbeddingModelError, KnowledgeBaseError

    recorded, wanted = manifest.embedding.model, requested.embedding_model
    add_vectors = None
    if wanted is not None and not same_model(recorded, wanted):
        if not (is_keyword_only(recorded) and not is_keyword_only(wanted)):
            raise EmbeddingModelError(
                f"knowledge base {kb_name!r} was built with embedding model {recorded!r}, not "
                f"{model_identity(wanted)!r}; query it with its own model (leave --embedding out) "
                "or build a new knowledge base with --kb OTHER_NAME"
            )
        add_vectors = model_identity(wanted)
    for key, want in (("chunk_size", requested.chunk_size), ("chunk_overlap", requested.chunk_overlap)):
        have = getattr(manifest.chunking, key)
        if want is not None and want != have:
            raise KnowledgeBaseError(
                f"knowledge base {kb_name!r} was built with {key} {have}, not {want}; leave "
                f"--{key.replace('_', '-')} out, or use a new --kb name (or `ingest drop --kb {kb_name}` first)"
            )
    have_store = None if manifest.keyword_only else manifest.store
    if requested.store is not None and have_store is not None and requested.store != have_store:
        raise KnowledgeBaseError(
            f"knowledge base {kb_name!r} keeps its vectors in {have_store}, not {requested.store}; leave --store "
            "out (kb.store only applies to new knowledge bases), or use a new --kb name"
        )
    return add_vectors


def checksum_of(data: dict[str, Any]) -> str:
    """SHA-256 of a manifest's canonical JSON without its ``checksum`` key."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    canonical = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def sealed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as the current format with its checksum set (what a build writes)."""
    body = {**data, "format": FORMAT}
    body.pop("checksum", None)
    return {**body, "checksum": checksum_of(body)}


def write_manifest(version_dir: Path, data: dict[str, Any]) -> None:
    """Write ``data`` sealed as the manifest of ``version_dir`` (not fsynced: publish does that)."""
    (version_dir / MANIFEST).write_text(json.dumps(sealed(data), ensure_ascii=False, indent=1), encoding="utf-8")


def parse_manifest(data: Any, *, where: Path, kb_name: str) -> Manifest:
    """``data`` (decoded JSON) as a checked :class:`Manifest`, or DamagedKnowledgeBaseError."""
    if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
        raise damaged(kb_name, f"{where} is not a glmkb manifest (format {FORMAT})")
    if data["format"] >= 2 and data.get("checksum") != checksum_of(data):
        raise damaged(kb_name, f"{where} does not match its checksum (modified or damaged)")
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where_in = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise damaged(kb_name, f"{where} is not a valid manifest ({where_in}: {first['msg']})") from None


def read_manifest(version_dir: Path, *, kb_name: str) -> Manifest:
    """The parsed manifest of a version folder (files not verified: see ``storage.verify_files``)."""
    path = version_dir / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise damaged(kb_name, f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise damaged(kb_name, f"{path} is not valid JSON") from None
    except OSError as e:
        raise damaged(kb_name, f"{path} cannot be read ({e.strerror})") from None
    return parse_manifest(data, where=path, kb_name=kb_name)


def damaged(kb_name: str, what: str) -> DamagedKnowledgeBaseError:
    """The one-line damage error: what is wrong, and the commands that recover."""
    return DamagedKnowledgeBaseError(
        f"knowledge base {kb_name!r} is damaged: {what}; repair it with `ingest doctor --kb {kb_name} --repair` "
        f"or rebuild it (`ingest drop --kb {kb_name}`, then ingest build)",
        kb_name=kb_name,
    )


__all__ = [
    "FORMAT",
    "MANIFEST",
    "SPLITTER_VERSION",
    "ChunkingSection",
    "Counts",
    "DocumentEntry",
    "EmbeddingSection",
    "Manifest",
    "NewKBDefaults",
    "Requested",
    "check_requested",
    "checksum_of",
    "new_manifest",
    "damaged",
    "parse_manifest",
    "read_manifest",
    "sealed",
    "write_manifest",
]
