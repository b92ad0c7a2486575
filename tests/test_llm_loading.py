"""llm.loading: model_type dispatch, placement options and one clear error per bad model path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from configs.settings import LLMSettings
from llm import ChatGLM, ModelLoadError, load_model_and_tokenizer
from llm import loading
from llm.loading import MODEL_TYPE_LOADERS, quantization_options, resolve_dtype, spread_over_gpus

SPECIAL_CALLS: list[dict[str, Any]] = []


def recording_loader(path: Path, **options: Any) -> tuple[Any, Any]:
    """A stand-in special loader (used through MODEL_TYPE_LOADERS): records its arguments."""
    SPECIAL_CALLS.append({"path": path, **options})
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def copy_with_config(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text(encoding="utf-8"))
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dst


def test_special_model_types_go_to_their_loader_with_the_same_arguments(
    tiny_glm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_with_config(tiny_glm_dir, tmp_path / "special", model_type="glm")
    monkeypatch.setitem(MODEL_TYPE_LOADERS, "glm", f"{__name__}:recording_loader")
    SPECIAL_CALLS.clear()
    model, tokenizer = load_model_and_tokenizer(
        folder, device="cpu", dtype="float32", quantization="none", trust_remote_code=False
    )
    assert SPECIAL_CALLS == [
        {"path": folder, "device": "cpu", "dtype": "float32", "quantization": "none", "trust_remote_code": False,
         "quantization_group_size": 128, "int4_kernel": "auto"}
    ]
    assert type(model).__name__ == "GlmForCausalLM" and tokenizer.chat_template


def test_original_chatglm_folders_are_routed_to_the_legacy_loader() -> None:
    assert MODEL_TYPE_LOADERS["chatglm"] == "llm.chatglm_legacy:load_chatglm_legacy"


def test_missing_special_loader_module_is_a_clear_error(
    tiny_glm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_with_config(tiny_glm_dir, tmp_path / "special", model_type="weird")
    monkeypatch.setitem(MODEL_TYPE_LOADERS, "weird", "llm.no_such_module:load")
    with pytest.raises(ModelLoadError, match="'weird' model.*could not be imported"):
        load_model_and_tokenizer(folder, device="cpu")


def test_dtype_resolution() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_explicit_dtype_is_applied(tiny_glm_dir: Path) -> None:
    model, _ = load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and str(model.device) == "cpu"


def test_quantization_config_for_cuda() -> None:
    pytest.importorskip("bitsandbytes")
    options = quantization_options("4bit", device=torch.device("cuda", 1), dtype=torch.bfloat16)
    assert options["device_map"] == {"": 1}
    assert options["quantization_config"].load_in_4bit


def test_single_device_never_spreads(tiny_glm_dir: Path) -> None:
    assert not spread_over_gpus(tiny_glm_dir, torch.device("cpu"))
    assert not spread_over_gpus(tiny_glm_dir, torch.device("cuda", 0))


# ----- one clear error per bad input ---------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "chatglm3-6b"
    with pytest.raises(ModelLoadError) as err:
        ChatGLM.from_model_path(missing, device="cpu")
    message = str(err.value)
    assert str(missing) in message and "does not exist" in message and "llm.model_path" in message


def test_hub_id_not_in_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline (tests set HF_HUB_OFFLINE), an uncached hub id is unavailable (exit 3 / HTTP 503), not a bad path."""
    from llm.hub import HubModelUnavailable

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubModelUnavailable) as err:
        load_model_and_tokenizer("THUDM/glm-4-9b-chat-hf", device="cpu")
    message = str(err.value)
    assert "'THUDM/glm-4-9b-chat-hf'" in message and "local Hugging Face cache" in message
    assert "hf download THUDM/glm-4-9b-chat-hf --local-dir DIR" in message and "llm.model_path" in message


def test_hub_id_found_in_local_cache(tiny_glm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id that is already in the local HF cache loads without the network."""
    snapshot = tmp_path / "hub" / "models--org--tiny-glm" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_glm_dir, snapshot)
    (tmp_path / "hub" / "models--org--tiny-glm" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny-glm" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    model, _ = load_model_and_tokenizer("org/tiny-glm", device="cpu")
    assert type(model).__name__ == "GlmForCausalLM"


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json in model folder"):
        load_model_and_tokenizer(tmp_path, device="cpu")


def test_folder_without_weights(tiny_glm_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no_weights"
    shutil.copytree(tiny_glm_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(folder, device="cpu")
    message = str(err.value)
    assert f"no model weights in {folder}" in message
    assert "*.safetensors" in message and "*.bin" in message and "hf download" in message


def test_unknown_model_type(tiny_glm_dir: Path, tmp_path: Path) -> None:
    folder = copy_with_config(tiny_glm_dir, tmp_path / "unknown", model_type="nosuchlm")
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(folder, device="cpu")
    message = str(err.value)
    assert "unknown model type 'nosuchlm'" in message and "config.json" in message
    assert "chatglm" in message and "glm4" in message


def test_remote_code_model_needs_opt_in(tiny_glm_dir: Path, tmp_path: Path) -> None:
    folder = copy_with_config(
        tiny_glm_dir,
        tmp_path / "remote",
        model_type="customlm",
        auto_map={"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"},
    )
    with pytest.raises(ModelLoadError, match="llm.trust_remote_code: true"):
        load_model_and_tokenizer(folder, device="cpu")


def test_4bit_on_cpu(tiny_glm_dir: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        ChatGLM.from_model_path(tiny_glm_dir, device="cpu", quantization="4bit")
    message = str(err.value)
    assert "4bit needs a CUDA GPU" in message and "llm.quantization: none" in message


def test_missing_gpu_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError) as err:
        quantization_options("8bit", device=torch.device("cuda", 0), dtype=torch.float16)
    assert "bitsandbytes" in str(err.value) and "pip install 'glmkb[gpu]'" in str(err.value)


def test_tokenizer_without_chat_template(tiny_glm_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "base_model"
    shutil.copytree(tiny_glm_dir, folder, ignore=shutil.ignore_patterns("chat_template.jinja"))
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_model_and_tokenizer(folder, device="cpu")


def test_settings_without_model_path() -> None:
    with pytest.raises(ModelLoadError, match="llm.model_path"):
        ChatGLM.from_settings(LLMSettings())


def test_missing_cuda_device(tiny_glm_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model_and_tokenizer(tiny_glm_dir, device="cuda")


def test_hub_id_downloads_on_first_use_when_the_hub_is_reachable(
    tiny_glm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id not in the cache goes to llm.hub's download (replaced here: no network in tests)."""
    from llm import hub

    asked: list[str] = []

    def download(repo_id: str, *, revision: str | None = None) -> Path:
        asked.append(repo_id)
        return tiny_glm_dir

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "download_snapshot", download)
    monkeypatch.chdir(tmp_path)
    model, _ = load_model_and_tokenizer("THUDM/tiny-glm", device="cpu")
    assert asked == ["THUDM/tiny-glm"] and type(model).__name__ == "GlmForCausalLM"


def test_auto_device_takes_apple_silicon_after_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: llm.device auto ran a Mac's chat model on the CPU in float32 (25 GB for 6B) while
    the embeddings already used MPS; both now follow configs.devices: CUDA, then MPS (fp16), then CPU."""
    import configs.devices
    from kb.embedding import resolve_device as embedding_device
    from llm.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(configs.devices, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps") and embedding_device("auto") == "mps"
    assert resolve_dtype("auto", torch.device("mps")) == torch.float16
    monkeypatch.setattr(configs.devices, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and embedding_device("auto") == "cpu"


def test_mps_where_there_is_none_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import llm.loading
    from kb.embedding import resolve_device as embedding_device
    from kb.errors import EmbeddingModelError

    monkeypatch.setattr(llm.loading, "mps_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"device 'mps' was requested but torch has no MPS backend.*cpu or auto"):
        llm.loading.resolve_device("mps")
    monkeypatch.setattr("kb.embedding.mps_available", lambda: False)
    with pytest.raises(EmbeddingModelError, match="embedding.device is 'mps' but torch has no MPS backend"):
        embedding_device("mps")
