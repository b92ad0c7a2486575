"""Load sentence-transformers models (embeddings, cross-encoders) from local files first.

A model is looked up as a local folder, then in the local HF cache, and only then downloaded
(unless ``HF_HUB_OFFLINE`` is set). The hub is often unreachable where glmkb runs, so every
failure is immediate and names what was looked for and the fix.
"""

from __future__ import annotations

import logging
import pickle
import threading
from pathlib import Path
from typing import Any

import torch

from configs.devices import auto_device, mps_available
from kb.errors import EmbeddingModelError

KEYWORD_ONLY = "none"
log = logging.getLogger(__name__)


def is_keyword_only(model: str | None) -> bool:
    """True for ``none`` (and empty): the knowledge base has no dense vectors, only BM25."""
    return model is None or model.strip().lower() in ("", KEYWORD_ONLY)


def model_identity(model: str) -> str:
    """How a model is recorded in a manifest: an absolute path for local folders, else its hub name."""
    if is_keyword_only(model):
        return KEYWORD_ONLY
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model.strip()


def same_model(recorded: str, requested: str) -> bool:
    """Whether ``requested`` names the model a knowledge base was built with.

    A local copy of a hub model counts as the same model when its folder is named like the
    repository (``/models/text2vec-large-chinese`` for ``GanymedeNil/text2vec-large-chinese``).
    """
    a, b = model_identity(recorded), model_identity(requested)
    if a == b:
        return True
    if KEYWORD_ONLY in (a, b):
        return False
    return Path(a).name.lower() == Path(b).name.lower()


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` if a GPU is visible, then ``mps``, else ``cpu`` (``configs.devices``)."""
    if device == "auto":
        return auto_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EmbeddingModelError(f"embedding.device is {device!r} but torch sees no CUDA GPU; set it to auto or cpu")
    if device == "mps" and not mps_available():
        raise EmbeddingModelError("embedding.device is 'mps' but torch has no MPS backend here; set it to auto or cpu")
    return device


def resolve_embedding(model: str, *, fallback: bool = True) -> str:
    """The embedding model a new knowledge base gets under the ``auto`` rule (glmkb #18).

    ``model`` (as recorded in a manifest) when it is a local folder, in the Hugging Face cache, or
    downloadable now; otherwise, with ``fallback``, ``none`` (keyword-only BM25) and ONE warning
    saying how to add vectors later. Without ``fallback`` the EmbeddingModelError is raised.
    """
    if is_keyword_only(model):
        return KEYWORD_ONLY
    try:
        locate_model(model, announce=False)
    except EmbeddingModelError as e:
        if not fallback:
            raise
        log.warning(
            "embedding model %s is not available (%s); building a keyword-only (BM25) knowledge base. "
            "Add vectors later with `ingest build FILE --kb NAME --embedding MODEL_FOLDER` "
            "(or pick 向量 with a model in the web UI)",
            model,
            str(e).split(";")[0],
        )
        return KEYWORD_ONLY
    return model_identity(model)


def locate_model(
    model: str, *, what: str = "embedding model", flag: str = "--embedding", announce: bool = True
) -> str:
    """The local folder holding ``model``: the path itself, its snapshot in the HF cache, or a download.

    Downloads happen only for hub ids missing from the cache and only when the hub is allowed
    (``HF_HUB_OFFLINE`` unset); an unreachable hub fails at once with the fix.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError

    fix = f"download it elsewhere and pass its local folder with {flag} PATH"
    if what == "embedding model":
        fix += " (or embedding.model in the config), or build a keyword-only knowledge base with --embedding none"
    try:
        return snapshot_download(model, local_files_only=True)
    except HFValidationError as e:
        raise EmbeddingModelError(f"{what} folder not found: {model}; {fix}") from e
    except (OSError, ValueError) as e:
        cached_error = e
    if constants.HF_HUB_OFFLINE:
        raise EmbeddingModelError(
            f"{what} {model!r} is not a local folder and not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE forbids downloading it; {fix}"
        ) from cached_error
    log.log(logging.WARNING if announce else logging.INFO, "downloading %s %s into the Hugging Face cache (first use)", what, model)
    try:
        return snapshot_download(model)
    except Exception as e:  # noqa: BLE001 - network, auth or missing repo: one clear message
        raise EmbeddingModelError(
            f"{what} {model!r} is not a local folder, not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and could not be downloaded ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); {fix}"
        ) from e


def load_embeddings(model: str, *, device: str = "auto", batch_size: int = 64) -> Any:
    """A ``langchain_huggingface.HuggingFaceEmbeddings`` giving normalized vectors (fp16 on GPU)."""
    from langchain_huggingface import HuggingFaceEmbeddings

    location = locate_model(model)
    resolved = resolve_device(device)
    model_kwargs: dict[str, Any] = {"device": resolved, "local_files_only": True}
    if resolved.startswith("cuda"):
        model_kwargs["model_kwargs"] = {"dtype": torch.float16}
    encode_kwargs = {"normalize_embeddings": True, "batch_size": batch_size}
    try:
        return HuggingFaceEmbeddings(
            model_name=location,
            model_kwargs=model_kwargs,
            encode_kwargs=encode_kwargs,
            query_encode_kwargs=encode_kwargs,
        )
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as e:  # a pickled .bin is refused
        raise EmbeddingModelError(
            f"cannot load embedding model {model!r} from {location}: {' '.join(str(e).split())}; "
            "point --embedding at a sentence-transformers or BERT-style model folder"
        ) from e


def load_cross_encoder(model: str, *, device: str = "auto") -> Any:
    """A sentence-transformers ``CrossEncoder`` for reranking, loaded from local files only."""
    from sentence_transformers import CrossEncoder

    location = locate_model(model, what="reranker model", flag="retrieval.reranker")
    try:
        return CrossEncoder(location, device=resolve_device(device), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as e:  # a pickled .bin is refused
        raise EmbeddingModelError(
            f"cannot load reranker {model!r} from {location}: {' '.join(str(e).split())}"
        ) from e


class LazyModels:
    """A knowledge base's query embedder and reranker, each loaded on first use (thread-safe)."""

    def __init__(self, *, device: str, batch_size: int, reranker: str | None) -> None:
        self.device, self.batch_size, self.reranker = device, batch_size, reranker
        self._lock = threading.Lock()
        self._embeddings: Any | None = None
        self._cross_encoder: Any | None = None

    def embeddings(self, model: str) -> Any:
        """The embedding model (``set_embeddings``'s shared one if given)."""
        with self._lock:
            if self._embeddings is None:
                self._embeddings = load_embeddings(model, device=self.device, batch_size=self.batch_size)
            return self._embeddings

    def set_embeddings(self, embeddings: Any) -> None:
        self._embeddings = embeddings

    def cross_encoder(self) -> Any:
        if not self.reranker:
            raise EmbeddingModelError("rerank=True but no reranker is configured (retrieval.reranker)")
        with self._lock:
            if self._cross_encoder is None:
                self._cross_encoder = load_cross_encoder(self.reranker, device=self.device)
            return self._cross_encoder
