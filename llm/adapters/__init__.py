"""Fine-tuned adapters on a loaded model: P-tuning v2 prefixes and LoRA (see docs/ADAPTERS.md).

``apply_adapter(model, folder, merge=...)`` tells the layout from the folder's files:
``adapter_config.json`` -> LoRA (``llm.adapters.lora``); ``config.json`` with ``pre_seq_len`` or
``transformer.prefix_encoder.*`` weights -> P-tuning v2 (``llm.adapters.ptuning``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm.adapters.errors import AdapterError

__all__ = ["AdapterError", "adapter_kind", "apply_adapter"]


def adapter_kind(folder: str | Path) -> str:
    """``"lora"`` or ``"ptuning"`` for an adapter folder; a clear error for anything else."""
    from llm.adapters import lora, ptuning

    path = Path(folder).expanduser()
    if path.is_file():
        raise AdapterError(f"adapter {path} is a file; point --adapter (llm.adapter) at the folder holding it")
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist; point --adapter (llm.adapter) at a training output folder")
    if lora.is_lora_folder(path):
        return "lora"
    if ptuning.is_ptuning_folder(path):
        return "ptuning"
    named = named_adapters(path)
    hint = f"; it holds named peft adapters in {', '.join(named)}: point --adapter at one of them" if named else ""
    raise AdapterError(
        f"{path} is not an adapter glmkb knows: no adapter_config.json (LoRA, peft) and no config.json with "
        f"pre_seq_len / transformer.prefix_encoder weights (P-tuning v2){hint}"
    )


def named_adapters(folder: Path) -> list[str]:
    """Sub-folders holding an ``adapter_config.json``: peft saves a model's non-default adapters there."""
    from llm.adapters import lora

    return sorted(child.name for child in folder.iterdir() if child.is_dir() and lora.is_lora_folder(child))


def apply_adapter(model: Any, folder: str | Path, *, merge: bool = False) -> Any:
    """``model`` with the adapter in ``folder`` applied; LoRA is folded into the weights when ``merge``.

    A P-tuning prefix cannot be merged into weights: ``merge`` with one is refused.
    """
    from llm.adapters import lora, ptuning

    path = Path(folder).expanduser()
    kind = adapter_kind(path)
    if kind == "lora":
        return lora.load_lora(model, path, merge=merge)
    if merge:
        raise AdapterError(
            f"{path} is a P-tuning v2 prefix, which cannot be merged into the weights; load it without merging"
        )
    return ptuning.load_ptuning(model, path)
