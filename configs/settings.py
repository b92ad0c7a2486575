"""glmkb settings: one pydantic model, loaded as defaults < YAML < environment < CLI flags.

The defaults live in ``configs/default.yaml`` (shipped with the package) and mirror
the field defaults below; a user YAML file given by ``--config`` or ``GLMKB_CONFIG``
overrides them, then ``GLMKB_*`` environment variables (nested keys joined with
``__``, e.g. ``GLMKB_LLM__DEVICE=cuda:1``), then explicit keyword overrides (CLI flags).
The layers are pydantic-settings' own sources (YAML, environment, init), deep-merged by it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from configs.errors import BadInput
from kb.types import RetrievalMode

DEFAULT_YAML = Path(__file__).with_name("default.yaml")
CONFIG_ENV = "GLMKB_CONFIG"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _check_device(value: str) -> str:
    if not _DEVICE_RE.match(value):
        raise ValueError("allowed values are auto, cpu, mps, cuda or cuda:N (e.g. cuda:1)")
    return value


DeviceName = Annotated[str, AfterValidator(_check_device)]  # the chat model's and the embedding model's

# Settings whose values never appear in messages (validation errors echo bad inputs otherwise).
SECRET_KEYS = frozenset({"auth_password"})


class SettingsError(BadInput):
    """A configuration value or file is invalid; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GenerationSettings(_Section):
    """Sampling defaults for the chat model; per-call arguments override them."""

    max_new_tokens: int = Field(1024, ge=1, description="Most tokens generated per answer.")
    temperature: float = Field(
        0.8, ge=0.0, description="Sampling temperature; 0 means greedy decoding."
    )
    top_p: float = Field(0.8, ge=0.0, le=1.0, description="Nucleus sampling mass; 0 keeps only the likeliest token.")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="Penalty >1 discourages repeating tokens; 1 disables it."
    )


class LLMSettings(_Section):
    """Which chat model to load and where to run it."""

    backend: Literal["local", "openai"] = Field(
        "local",
        description="local: load model_path in this process; openai: an OpenAI-compatible server (vLLM, SGLang, Xinference, glmkb's own API).",
    )
    base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint for backend openai, e.g. http://127.0.0.1:8000/v1."
    )
    model: str | None = Field(None, description="Model name the OpenAI-compatible server serves (backend openai).")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key for backend openai (never put the key in YAML)."
    )
    request_timeout: float = Field(120.0, gt=0, description="Seconds before a request to the server times out (backend openai).")
    model_path: str | None = Field(
        None,
        description=(
            "Local model folder (ChatGLM2/3-6B, glm-4-9b-chat-hf, GLM-4-*-0414, any causal LM "
            "with a chat template). Empty means no LLM: the UI still serves retrieval."
        ),
    )
    device: DeviceName = Field(
        "auto", description="auto (a CUDA GPU, else Apple silicon's MPS, else the CPU), cpu, cuda, cuda:N or mps."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights dtype; auto = bf16 (fp16 where unsupported) on CUDA, fp16 on MPS, fp32 on CPU."
    )
    quantization: Literal["none", "int8", "int4", "8bit", "4bit"] = Field(
        "none",
        description=(
            "Weight quantization: int8 / int4 are glmkb's weight-only layers (any device, fast path on "
            "CUDA, original ChatGLM folders too; the LM head is INT8 in both); 8bit / 4bit are "
            "bitsandbytes (CUDA only). A folder of ChatGLM's own INT4/INT8 weights (quantization_bit) "
            "loads as such with none or its own kind."
        ),
    )
    quantization_group_size: Literal[32, 64, 128] = Field(
        128, description="Input columns sharing one INT4 scale (int4 only); smaller is more accurate and larger."
    )
    int4_kernel: Literal["auto", "triton", "tinygemm"] = Field(
        "auto",
        description="INT4 GEMV on CUDA: glmkb's Triton kernels over their own layout (PDL on Hopper; 1.78x bf16 "
        "decode on an H200) or torch's tinygemm (1.34x); auto takes the Triton kernels on Hopper and newer "
        "(where measured), tinygemm before; each falls back to the other where it does not run.",
    )
    gemv_tiles: Path | None = Field(
        None,
        description="A row_tiles.json from `python -m bench.row_tiles` on this GPU: its fastest one-row INT8/INT4 "
        "GEMV tiles per layer shape replace the built-in table (measured on an H200) and first-use timing.",
    )
    max_concurrent_batch: int = Field(
        16, ge=1, description="Local model: most concurrent streamed requests that start together as one batch."
    )
    max_queue: int = Field(
        64, ge=1, description="Local model: most requests waiting for it; past it a request gets 503 'busy, retry'."
    )
    trust_remote_code: bool = Field(
        False,
        description="Let transformers run the model folder's own Python code. Off: glmkb loads ChatGLM natively.",
    )
    adapter: str | None = Field(
        None, description="Fine-tuned adapter folder applied to model_path: P-tuning v2 (THUDM ptuning/) or LoRA (peft)."
    )
    merge_adapter: bool = Field(False, description="Fold a LoRA adapter into the weights (the CUDA fast path needs it).")
    system_prompt: str | None = Field(None, description="Optional system prompt for every chat.")
    enable_thinking: bool | None = Field(
        None,
        description="A reasoning model's thinking (GLM-Z1, Qwen3): null = as its chat template does; false = off (the "
        "template's enable_thinking=False, and a <think> block it still opens closed empty); true = asked for. "
        "Rewriting a follow-up question never thinks.",
    )
    max_input_tokens: int = Field(
        6144, ge=64, description="Prompt budget in model tokens; retrieved passages and history are cut to fit."
    )
    warm_up: bool = Field(
        True,
        description="Servers: once the local model is loaded, compile the CUDA fast path for a first chat and a first "
        "knowledge-base answer in the background (~40 s for a 6B model), so no first question waits for it.",
    )
    warm_up_batch: int = Field(
        1,
        ge=1,
        description="With warm_up: also warm batches of concurrent requests (2, 4, 8, ... rows) up to this many; a "
        "shared server: max_concurrent_batch. Each size adds ~12 s of background compile and its KV caches.",
    )
    generation: GenerationSettings = Field(default_factory=GenerationSettings)


class EmbeddingSettings(_Section):
    """The sentence embedding model used to build and query knowledge bases."""

    model: str = Field(
        "GanymedeNil/text2vec-large-chinese",
        description="Hugging Face name or local folder of a sentence-transformers model; 'none' builds keyword-only (BM25) knowledge bases.",
    )
    device: DeviceName = Field("auto", description="auto, cpu, mps, cuda or cuda:N; GPUs use fp16.")
    batch_size: int = Field(64, ge=1, description="Chunks embedded per forward pass.")
    if_unavailable: Literal["keyword_only", "error"] = Field(
        "keyword_only",
        description="A NEW knowledge base whose default model is neither a local folder, cached nor downloadable: "
        "keyword_only builds BM25 only with one warning (add vectors later with ingest build --embedding), error refuses.",
    )


class ChunkingSettings(_Section):
    """How documents are cut into retrievable chunks (characters, not tokens)."""

    chunk_size: int = Field(400, ge=20, description="Target chunk length in characters.")
    chunk_overlap: int = Field(80, ge=0, description="Characters shared by neighbouring chunks.")

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: Any) -> int:
        size = info.data.get("chunk_size")
        if size is not None and value >= size:
            raise ValueError(f"must be smaller than chunk_size ({size})")
        return value


class RetrievalSettings(_Section):
    """How questions are matched against a knowledge base."""

    mode: RetrievalMode = Field(
        "hybrid", description="dense vectors, bm25 keywords (jieba), or both fused by reciprocal rank."
    )
    top_k: int = Field(5, ge=1, le=100, description="Passages returned per question.")
    score_threshold: float | None = Field(
        None,
        description="Drop passages scoring below this (dense: cosine similarity, -1..1; bm25: raw score, 0 up; "
        "hybrid: reciprocal-rank sum, at most 2/61 = 0.0328 for a chunk first in both rankings). Empty keeps all.",
    )
    reranker: str | None = Field(
        None, description="Optional cross-encoder model (name or local folder) that reorders hits."
    )


class KBSettings(_Section):
    """Where knowledge-base vectors live (documents, BM25 and manifests stay under kb_root)."""

    store: Literal["faiss", "milvus"] = Field(
        "faiss", description="faiss: index files under kb_root; milvus: a Milvus collection per knowledge base."
    )
    milvus_uri: str | None = Field(
        None,
        description=(
            "Milvus URI: a path ending in .db means embedded Milvus Lite (relative paths are under kb_root); "
            "http(s)://host:19530 a Milvus server or cluster. Empty: milvus.db under kb_root for new "
            "knowledge bases, and the URI each existing one was built with."
        ),
    )
    milvus_token_env: str = Field(
        "MILVUS_TOKEN", description="Environment variable holding the Milvus token (user:password), if the server needs one."
    )
    ocr: Literal["off", "auto", "force"] = Field(
        "auto",
        description="OCR for scanned PDF pages and images: auto = pages without a text layer; force = every page; off = never.",
    )


class APISettings(_Section):
    """The OpenAI-compatible HTTP API server."""

    host: str = Field("127.0.0.1", description="Bind address; anything but loopback requires an API key.")
    port: int = Field(8000, ge=1, le=65535, description="TCP port.")
    api_key_env: str = Field(
        "GLMKB_API_KEY", description="Environment variable holding the key clients must send as a Bearer token."
    )
    allow_no_auth: bool = Field(
        False, description="Explicitly allow binding a non-loopback address without an API key."
    )
    served_model_name: str = Field("glmkb", description="Model id reported by /v1/models and accepted in requests.")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 beyond it), checked before parsing."
    )
    kb_workers: int = Field(
        4, ge=1, description="Knowledge-base requests (list, query, KB chat set-up) served at once, in their own pool."
    )
    timeout_keep_alive: int = Field(
        5, ge=1, description="Seconds an idle or slow client connection is kept open (uvicorn timeout_keep_alive)."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names a server on a loopback address answers besides localhost/127.0.0.1/::1 (API and "
        "web UI): a reverse proxy on this machine that passes its own Host. Others get 403 (DNS rebinding).",
    )


class UISettings(_Section):
    """The Gradio web UI."""

    host: str = Field("127.0.0.1", description="Bind address; anything but loopback requires auth.")
    port: int = Field(7860, ge=1, le=65535, description="TCP port.")
    auth_user: str | None = Field(None, description="Basic-auth user name.")
    auth_password: SecretStr | None = Field(
        None,
        description="Basic-auth password (prefer GLMKB_UI__AUTH_PASSWORD); shown as '**********' in reprs and dumps.",
    )

    @field_validator("auth_password", mode="before")
    @classmethod
    def _password_as_text(cls, value: Any) -> Any:
        # YAML reads `auth_password: 123456` as a number; it is still the password.
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    allow_no_auth: bool = Field(
        False, description="Explicitly allow binding a non-loopback address without auth."
    )
    concurrency: int = Field(4, ge=1, description="Requests the Gradio queue runs at once.")
    max_sessions: int = Field(
        1000,
        ge=1,
        description=(
            "Browser sessions whose state (the conversation) is kept in memory, about 160 KiB each; "
            "beyond this the least recently used session is forgotten (its next question starts a new conversation)."
        ),
    )
    max_upload_mb: int = Field(50, ge=1, description="Largest accepted upload in MiB.")
    max_upload_files: int = Field(20, ge=1, description="Files accepted in one upload.")
    max_queue: int = Field(
        64, ge=1, description="Events waiting in the Gradio queue (all users); more are refused as 'queue full'."
    )
    allowed_types: list[str] | None = Field(
        None,
        description="Upload file extensions accepted; None = every type the loaders read (kb.loaders.SUPPORTED_SUFFIXES).",
    )


class Settings(BaseSettings):
    """All of glmkb's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="GLMKB_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        # Tracebacks (-v) print pydantic's own message; it must not quote a bad password.
        # format_validation_error still quotes the inputs of non-secret keys.
        hide_input_in_errors=True,
    )

    kb_root: Path = Field(
        Path("~/.glmkb/kb"), description="Folder holding the named knowledge bases."
    )
    kb_name: str = Field("default", description="Knowledge base used when none is named.")
    llm: LLMSettings = Field(default_factory=LLMSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    kb: KBSettings = Field(default_factory=KBSettings)
    ui: UISettings = Field(default_factory=UISettings)
    api: APISettings = Field(default_factory=APISettings)

    @field_validator("kb_root")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return Path(os.path.expanduser(str(value)))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: explicit values (CLI flags) > GLMKB_* environment > the user's YAML
        # file (load_settings' `config`) > configs/default.yaml. pydantic-settings deep-merges
        # them, so a nested key set in one layer leaves its siblings from lower layers alone.
        files = [DEFAULT_YAML, *_USER_CONFIG.get()]
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=files, deep_merge=True))


# The user's YAML file for the Settings being built by load_settings (a context variable, so
# concurrent loads in threads do not see each other's file).
_USER_CONFIG: ContextVar[tuple[Path, ...]] = ContextVar("glmkb_user_config", default=())


def _checked_yaml_file(path: Path) -> Path:
    """``path`` if it is a readable YAML mapping; else a SettingsError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise SettingsError(f"config file not found: {path} (check --config / {CONFIG_ENV})") from e
    except UnicodeDecodeError as e:  # e.g. saved as GBK: the codec's message named no file
        raise SettingsError(f"config file {path} is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except OSError as e:  # a folder, no permission: name the setting the path came from
        raise SettingsError(f"cannot read config file {path}: {e.strerror} (check --config / {CONFIG_ENV})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SettingsError(f"config file {path} is not valid YAML: {e}") from e
    if data is not None and not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return path


# Settings that name an environment variable holding a secret (never a setting itself).
KEY_ENV_SETTINGS: tuple[tuple[str, str], ...] = (("api", "api_key_env"), ("llm", "api_key_env"), ("kb", "milvus_token_env"))


def format_validation_error(error: ValidationError) -> str:
    """One readable line per bad key: ``llm.device: allowed values are ...``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(root)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling; see configs/default.yaml for every key)"
        elif "input" in item and not isinstance(item["input"], dict) and not SECRET_KEYS & set(map(str, item["loc"])):
            msg = f"{msg} (got {item['input']!r})"
        lines.append(f"{key}: {msg}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: default.yaml < ``config`` (or $GLMKB_CONFIG) < GLMKB_* env < ``overrides``.

    ``overrides`` are nested dicts as CLI flags produce them, e.g. ``llm={"device": "cpu"}``;
    ``None`` values are dropped so unset flags never mask lower layers.
    """
    config = config or os.environ.get(CONFIG_ENV) or None
    files = (_checked_yaml_file(Path(config).expanduser()),) if config else ()
    token = _USER_CONFIG.set(files)
    try:
        settings = Settings(**_drop_none(overrides))
    except ValidationError as e:
        raise SettingsError(format_validation_error(e)) from e
    finally:
        _USER_CONFIG.reset(token)
    _check_env_names(settings)
    return settings


def _check_env_names(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Report a misspelt ``GLMKB_*`` variable (pydantic-settings skips names that match no
    field), except the variables the settings name as holding keys (``GLMKB_API_KEY``)."""
    environ = os.environ if environ is None else environ
    key_vars = {getattr(getattr(settings, section), key) for section, key in KEY_ENV_SETTINGS}
    unknown = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith("GLMKB_") or upper == CONFIG_ENV or name in key_vars:
            continue
        field = upper[len("GLMKB_") :].split("__")[0].lower()
        if field not in Settings.model_fields:
            unknown.append(f"{field}: unknown setting (environment variable {name})")
    if unknown:
        raise SettingsError(
            "invalid configuration: " + "; ".join(unknown) + " (see configs/default.yaml for every key)"
        )


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            nested = _drop_none(value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out
