"""LoRA adapters as peft saves them, loaded through ``load_model_and_tokenizer(adapter=...)`` (sweep 34).

Regressions guarded here:

- an adapter on only some layers (a regex ``target_modules`` such as ``.*layers\\.0\\..*q_proj``,
  ``exclude_modules``, ``layers_to_transform``) was refused as "incomplete" (or, for
  ``layers_to_transform``, as unsupported): glmkb targeted every module of that name in every
  layer. It now targets exactly the modules the adapter holds weights for; logits equal peft's.
- PiSSA / OLoRA adapters saved as trained (``init_lora_weights`` "pissa"/"olora"...) loaded
  silently wrong: peft changed the base weights at initialisation and glmkb applied ``B @ A`` to
  the unchanged base. They are refused with one line naming peft's conversion; converted ones load.
- ``adapter_config.json`` holding a JSON list raised AttributeError, a non-integer ``r`` a bare
  ValueError; a folder of named peft adapters and an adapter *file* got misleading messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from llm.adapters import AdapterError
from llm.loading import load_model_and_tokenizer

peft = pytest.importorskip("peft")

SUBSETS = {
    "regex-layer0": {"target_modules": r".*layers\.0\.self_attn\.(q_proj|v_proj)"},
    "exclude-layer1": {"target_modules": ["q_proj", "down_proj"], "exclude_modules": r".*layers\.1\..*"},
    "layers_to_transform": {"target_modules": ["k_proj", "gate_up_proj"], "layers_to_transform": [1]},
}


def peft_adapter(base: Path, out: Path, **options: Any) -> Any:
    """A peft LoRA on the native GLM in ``base`` with non-zero B, saved to ``out``; returns the PeftModel."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, **options))
    with torch.no_grad():  # "trained": move A and B away from their initial values
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.3)
    peft_model.save_pretrained(out)
    return peft_model.eval()


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("case", sorted(SUBSETS))
@pytest.mark.parametrize("merge", [False, True], ids=["unmerged", "merged"])
def test_layer_subset_adapter_equals_peft(tiny_glm_dir: Path, tmp_path: Path, case: str, merge: bool) -> None:
    peft_model = peft_adapter(tiny_glm_dir, tmp_path / "lora", init_lora_weights=False, **SUBSETS[case])
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(1))
    want = logits(peft_model, ids)
    with peft_model.disable_adapter():
        assert rel_err(want, logits(peft_model, ids)) > 1e-2  # the adapter matters
    got, _ = load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32", adapter=tmp_path / "lora",
                                      merge_adapter=merge)
    assert rel_err(logits(got, ids), want) < 1e-5


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_base_changing_init_is_refused_and_its_conversion_loads(tiny_glm_dir: Path, tmp_path: Path, init: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=init))
    peft_model.peft_config["default"].init_lora_weights = True  # peft's recipe: the initial adapter as plain LoRA
    peft_model.save_pretrained(tmp_path / "initial")
    peft_model.peft_config["default"].init_lora_weights = init
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.3)
    peft_model.save_pretrained(tmp_path / "trained")
    initial = str(tmp_path / "initial")
    peft_model.save_pretrained(tmp_path / "converted", path_initial_model_for_weight_conversion=initial)
    with pytest.raises(AdapterError) as e:
        load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32", adapter=tmp_path / "trained")
    assert f"init_lora_weights {init!r}" in one_line(e) and "path_initial_model_for_weight_conversion" in str(e.value)
    got, _ = load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32", adapter=tmp_path / "converted")
    ids = torch.randint(0, 500, (1, 8), generator=torch.Generator().manual_seed(2))
    assert rel_err(logits(got, ids), logits(peft_model.eval(), ids)) < 1e-5


def write_adapter(folder: Path, config: object) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    save_file({key.format("A"): torch.zeros(4, 64), key.format("B"): torch.zeros(64, 4)},
              str(folder / "adapter_model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("config", "message"),
    [([1, 2], "holds a JSON list, not an object"), ({"peft_type": "LORA", "r": "four"}, "r must be a positive integer"),
     ({"peft_type": "LORA", "r": 4, "lora_alpha": "8"}, "lora_alpha must be a number")],
    ids=["list", "r-text", "alpha-text"],
)
def test_malformed_config_is_one_line(tiny_glm_dir: Path, tmp_path: Path, config: object, message: str) -> None:
    folder = write_adapter(tmp_path / "lora", config)
    with pytest.raises(AdapterError) as e:
        load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32", adapter=folder)
    assert message in one_line(e)


def test_named_adapters_and_files_are_pointed_at(tiny_glm_dir: Path, tmp_path: Path) -> None:
    """peft saves non-default adapters in sub-folders named after them; the error lists them."""
    for name in ("law", "medical"):
        write_adapter(tmp_path / "out" / name, {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})
    with pytest.raises(AdapterError) as e:
        load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32", adapter=tmp_path / "out")
    assert "named peft adapters in law, medical" in one_line(e)
    with pytest.raises(AdapterError) as e:
        load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32",
                                 adapter=tmp_path / "out" / "law" / "adapter_model.safetensors")
    assert "is a file; point --adapter (llm.adapter) at the folder holding it" in one_line(e)
    model, _ = load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32", adapter=tmp_path / "out" / "law")
    assert "LoRA" in model.fast_decode_unsupported
