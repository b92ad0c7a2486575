"""Tampered knowledge-base folders are refused, and nothing in them ever runs as code.

tests/test_kb_store.py and tests/test_kb_dense.py already replace the docstore, the BM25 files
and the FAISS index with pickle payloads (with and without fixing the manifest hashes). This
file covers the rest of the folder: the ``CURRENT`` pointer, the manifest's file list, files
swapped for symlinks, and a manifest edited to point the knowledge base's embedding model at a
folder carrying remote code and a pickled "weights" file.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from kb import KnowledgeBase, KnowledgeBaseError, storage
from kb.errors import EmbeddingModelError

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
TEXT = "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞三人在桃园结义，誓同生死。\n" * 20


class Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def keyword_kb(root: Path) -> Path:
    KnowledgeBase(root, "t", create=True, embedding_model="none").add_texts({"a.txt": TEXT})
    return root / "t" / storage.read_pointer(root / "t")


def write_manifest(version_dir: Path, change: Any, *, seal: bool = True) -> None:
    """Edit a manifest as an attacker who can write the folder would: with its checksum
    recomputed (``seal``; it is not a secret), so the deeper checks are what refuses it."""
    path = version_dir / storage.MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    change(manifest)
    if seal:
        storage.write_manifest(version_dir, manifest)
    else:
        path.write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.parametrize("pointer", [b"../../victim", b"/etc", b"v-1/../../x", b"v-..", b"CURRENT", b"", b"v-\x00",
                                     b"v-\xff\xfe", b"v-1\nv-2"])
def test_a_tampered_current_pointer_is_refused(tmp_path: Path, pointer: bytes) -> None:
    """Regression: a pointer holding a NUL or bytes that are not UTF-8 raised a bare
    ``embedded null byte`` / ``UnicodeDecodeError`` instead of "corrupted; rebuild"."""
    keyword_kb(tmp_path)
    (tmp_path / "t" / storage.POINTER).write_bytes(pointer)
    with pytest.raises(KnowledgeBaseError, match="corrupted|damaged|rebuild"):
        KnowledgeBase(tmp_path, "t")


@pytest.mark.parametrize("name", ["../../outside.txt", "/etc/hostname", "bm25/../../../outside.txt"])
def test_a_manifest_naming_files_outside_its_version_is_refused(tmp_path: Path, name: str) -> None:
    version = keyword_kb(tmp_path)
    (tmp_path / "outside.txt").write_text("x", encoding="utf-8")
    write_manifest(version, lambda m: m["files"].__setitem__(name, storage.file_sha256(tmp_path / "outside.txt")))
    with pytest.raises(KnowledgeBaseError, match="outside|rebuild"):
        KnowledgeBase(tmp_path, "t")


def test_a_file_swapped_for_a_symlink_is_refused_even_with_the_right_hash(tmp_path: Path) -> None:
    """A docstore replaced by a link to an identical copy elsewhere (hash unchanged): the link
    leaves the version folder, so the knowledge base is refused rather than followed."""
    version = keyword_kb(tmp_path)
    elsewhere = tmp_path / "elsewhere.sqlite"
    shutil.copyfile(version / "docstore.sqlite", elsewhere)
    (version / "docstore.sqlite").unlink()
    os.symlink(elsewhere, version / "docstore.sqlite")
    with pytest.raises(KnowledgeBaseError, match="outside"):
        KnowledgeBase(tmp_path, "t")


@pytest.mark.parametrize("damage", ["missing-file", "garbage-manifest", "wrong-format", "truncated-docstore"])
def test_damaged_versions_are_refused_with_rebuild(tmp_path: Path, damage: str) -> None:
    version = keyword_kb(tmp_path)
    if damage == "missing-file":
        (version / "docstore.sqlite").unlink()
    elif damage == "garbage-manifest":
        (version / storage.MANIFEST).write_bytes(b"\xff\xfe not json")
    elif damage == "wrong-format":
        write_manifest(version, lambda m: m.__setitem__("format", 99), seal=False)
    else:
        data = (version / "docstore.sqlite").read_bytes()
        (version / "docstore.sqlite").write_bytes(data[: len(data) // 2])
        write_manifest(version, lambda m: m["files"].__setitem__("docstore.sqlite", storage.file_sha256(version / "docstore.sqlite")))
    with pytest.raises(KnowledgeBaseError, match="rebuild"):
        kb = KnowledgeBase(tmp_path, "t")
        kb.search("刘备", mode="bm25")


def evil_model_folder(folder: Path, marker: Path, real_model: Path) -> Path:
    """A copy of a real sentence-transformers model whose config asks for remote code and whose
    weights file is a pickle that would create ``marker``."""
    shutil.copytree(real_model, folder)
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n", encoding="utf-8")
    for config_path in folder.rglob("config.json"):
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
        config_path.write_text(json.dumps(config), encoding="utf-8")
    for weights in list(folder.rglob("*.safetensors")):
        weights.unlink()
        (weights.parent / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    return folder


def test_a_manifest_pointing_at_a_hostile_embedding_model_runs_no_code(
    tmp_path: Path, tiny_embedding_path: Path
) -> None:
    """Someone who can edit the manifest points the knowledge base at a model folder with remote
    code (``auto_map``) and pickled weights. Queries load models with trust_remote_code off and
    weights-only unpickling: the search fails, the code never runs."""
    root = tmp_path / "root"
    kb = KnowledgeBase(root, "t", create=True, embedding_model=str(tiny_embedding_path))
    kb.add_texts({"a.txt": TEXT})
    kb.close()
    marker = tmp_path / "PWNED"
    evil = evil_model_folder(tmp_path / "evil-model", marker, tiny_embedding_path)
    version = root / "t" / storage.read_pointer(root / "t")
    write_manifest(version, lambda m: m["embedding"].__setitem__("model", str(evil)))
    opened = KnowledgeBase(root, "t")  # its checksum was recomputed (no secret): it opens
    assert opened.embedding_model == str(evil)
    with pytest.raises(EmbeddingModelError, match="cannot load embedding model") as info:
        opened.search("刘备", mode="dense")
    assert not marker.exists(), "code from the model folder ran"
    assert "\n" not in str(info.value)


def test_a_pickled_weights_file_is_a_clear_embedding_error(tmp_path: Path, tiny_embedding_path: Path) -> None:
    """Regression: torch's refusal of a pickled ``pytorch_model.bin`` (weights-only loading)
    escaped as a raw multi-paragraph ``UnpicklingError`` instead of an EmbeddingModelError."""
    from kb.embedding import load_embeddings

    marker = tmp_path / "PWNED"
    evil = evil_model_folder(tmp_path / "evil-model", marker, tiny_embedding_path)
    with pytest.raises(EmbeddingModelError, match="cannot load embedding model"):
        load_embeddings(str(evil), device="cpu").embed_query("刘备")
    assert not marker.exists()
