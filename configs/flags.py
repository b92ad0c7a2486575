"""The one flag table of every glmkb command line (``ingest``, ``glmkb``, ``glmkb-web``, ``glmkb-api``).

Each flag has one meaning everywhere: ``--device`` is always the chat model's device and
``--embedding-device`` the embedder's (the old ``ingest build --device`` meant the embedder
while ``ingest summarize --device`` meant the chat model). A flag that sets a setting names
its dotted key here, so commands never map flags to settings by hand:
``settings_from_params(params)`` turns a click command's parameters into ``load_settings``
overrides (unset flags are None and never mask YAML or the environment).

A command picks its flags by parameter name: ``@flag_options("kb", "kb_root", "embedding")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from configs.settings import Settings, load_settings
from kb.types import RETRIEVAL_MODES

F = TypeVar("F", bound=Callable[..., Any])

DEVICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class Flag:
    """One command-line option: its spellings, help, and the setting it sets (if any)."""

    decls: tuple[str, ...]
    help: str
    key: str | None = None
    type: Any = None
    is_flag: bool = False
    metavar: str | None = None
    multiple: bool = False
    default: Any = None
    """A default shown in ``--help`` (only for flags that set no setting)."""

    def option(self, name: str) -> Callable[[F], F]:
        """The click option for this flag, with ``name`` as its parameter name."""
        extra: dict[str, Any] = {"help": self.help + (f" ({self.key})" if self.key else "")}
        if self.is_flag:
            # A flag that sets a setting stays None when not given, so it never masks YAML/env.
            extra.update(is_flag=True, default=None if self.key else False)
        else:
            extra.update(type=self.type, metavar=self.metavar, multiple=self.multiple)
            if self.default is not None:
                extra.update(default=self.default, show_default=True)
        return click.option(*self.decls, name, **extra)


FLAGS: dict[str, Flag] = {
    # Every command.
    "config": Flag(("--config",), "YAML settings file (default: $GLMKB_CONFIG)", metavar="FILE"),
    "verbose": Flag(("-v", "--verbose"), "log details and show tracebacks", is_flag=True),
    "quiet": Flag(("-q", "--quiet"), "no progress bars", is_flag=True),
    "json": Flag(("--json",), "print JSON", is_flag=True),
    # Knowledge bases.
    "kb": Flag(("--kb",), "knowledge base name", key="kb_name", metavar="NAME"),
    "kb_root": Flag(("--kb-root",), "folder holding the knowledge bases", key="kb_root", metavar="DIR"),
    "store": Flag(
        ("--store",),
        "where a new knowledge base keeps its vectors: faiss files or a Milvus collection",
        key="kb.store",
        type=click.Choice(["faiss", "milvus"]),
    ),
    "ocr": Flag(
        ("--ocr",),
        "OCR for scanned PDF pages and images: auto = pages without a text layer, force = every page, off = never",
        key="kb.ocr",
        type=click.Choice(["off", "auto", "force"]),
    ),
    "chunk_size": Flag(("--chunk-size",), "chunk length in characters (new knowledge bases)",
                       key="chunking.chunk_size", type=int, metavar="N"),
    "chunk_overlap": Flag(("--chunk-overlap",), "characters shared by neighbouring chunks",
                          key="chunking.chunk_overlap", type=int, metavar="N"),
    # Embeddings.
    "embedding": Flag(
        ("--embedding",),
        "embedding model (local folder or hub name), or 'none' for a keyword-only (BM25) knowledge base",
        key="embedding.model",
        metavar="MODEL|none",
    ),
    "embedding_device": Flag(("--embedding-device",), f"embedding device: {DEVICES}", key="embedding.device",
                             metavar="DEVICE"),
    # Retrieval.
    "k": Flag(("-k", "--top-k"), "passages to return", key="retrieval.top_k", type=int, metavar="N"),
    "mode": Flag(("--mode",), "retrieval mode", key="retrieval.mode", type=click.Choice(list(RETRIEVAL_MODES))),
    "threshold": Flag(("--threshold",), "drop hits scoring below SCORE", key="retrieval.score_threshold",
                      type=float, metavar="SCORE"),
    "reranker": Flag(("--reranker",), "cross-encoder that reorders hits", key="retrieval.reranker", metavar="MODEL"),
    # Books: chapter ranges, documents, the character graph, map-step batches.
    "chapters": Flag(("--chapters",), "only these chapters, e.g. 40-60 or 第40-60回", metavar="RANGE"),
    "source": Flag(("--source",), "only this document (doc_id, path or file name)", metavar="FILE"),
    "aliases": Flag(("--aliases",), "alias file of the character graph: 'canonical: [alias, ...]' per line",
                    metavar="YAML"),
    "batch_size": Flag(("--batch-size",), "prompts per model batch in the map step (chapters or their pieces)",
                       type=int, metavar="N", default=4),
    # The chat model.
    "model_path": Flag(("--model-path",), "chat model folder or hub id", key="llm.model_path", metavar="PATH"),
    "device": Flag(("--device",), f"chat model device: {DEVICES}", key="llm.device", metavar="DEVICE"),
    "dtype": Flag(("--dtype",), "chat model dtype", key="llm.dtype",
                  type=click.Choice(["auto", "bfloat16", "float16", "float32"])),
    "adapter": Flag(("--adapter",), "fine-tuned adapter folder: P-tuning v2 or LoRA", key="llm.adapter", metavar="DIR"),
    "merge_adapter": Flag(("--merge-adapter",), "fold a LoRA adapter into the weights", key="llm.merge_adapter", is_flag=True),
    "quantization": Flag(
        ("--quantization",),
        "weight quantization: int8 or int4 (weight-only, fast path on CUDA), 8bit or 4bit (bitsandbytes), none",
        key="llm.quantization",
        type=click.Choice(["none", "int8", "int4", "8bit", "4bit"]),
    ),
    "hide_thinking": Flag(("--hide-thinking",), "leave out a reasoning model's thinking (printed to stderr)",
                          is_flag=True),
    # Servers (glmkb serve, glmkb web / glmkb-web, glmkb api / glmkb-api). ``--host``, ``--port``
    # and ``--allow-no-auth`` are the bind address and auth policy of the command's own server:
    # one row each for the page (ui.*) and the API (api.*), the same spelling and meaning.
    "ui_host": Flag(("--host",), "bind address (default 127.0.0.1; others need a login)", key="ui.host", metavar="HOST"),
    "ui_port": Flag(("--port",), "TCP port (default 7860)", key="ui.port", type=int, metavar="PORT"),
    "ui_allow_no_auth": Flag(("--allow-no-auth",), "allow a non-loopback --host without a login",
                             key="ui.allow_no_auth", is_flag=True),
    "auth_user": Flag(("--auth-user",), "basic-auth user; the password comes from ui.auth_password in YAML or "
                      "GLMKB_UI__AUTH_PASSWORD, never from a flag", key="ui.auth_user", metavar="USER"),
    "concurrency": Flag(("--concurrency",), "requests served at once", key="ui.concurrency", type=int, metavar="N"),
    "api_host": Flag(("--host",), "bind address (default 127.0.0.1; others need an API key)", key="api.host",
                     metavar="HOST"),
    "api_port": Flag(("--port",), "TCP port (default 8000)", key="api.port", type=int, metavar="PORT"),
    "api_allow_no_auth": Flag(("--allow-no-auth",), "allow a non-loopback --host without an API key",
                              key="api.allow_no_auth", is_flag=True),
    "served_model_name": Flag(("--served-model-name",), "model id API clients use (default glmkb)",
                              key="api.served_model_name", metavar="NAME"),
}


def flag_options(*names: str) -> Callable[[F], F]:
    """Decorate a click command with the flags ``names`` (in that order in ``--help``)."""

    def decorate(fn: F) -> F:
        for name in reversed(names):
            fn = FLAGS[name].option(name)(fn)
        return fn

    return decorate


def settings_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """``{"kb": "novels", "device": "cpu"}`` -> ``{"kb_name": "novels", "llm": {"device": "cpu"}}``."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        flag = FLAGS.get(name)
        if flag is None or flag.key is None or value is None:
            continue
        *sections, key = flag.key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    return out


def settings_from_params(params: Mapping[str, Any], **overrides: Any) -> Settings:
    """Load settings with ``params``' flags as the top layer (``--config`` picks the YAML file)."""
    merged = settings_overrides(params)
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**value, **{k: v for k, v in merged[section].items() if v is not None}}
        elif merged.get(section) is None:
            merged[section] = value
    return load_settings(params.get("config"), **merged)
