"""Command-line flags shared by ``glmkb-web`` and ``glmkb-api`` (argparse) that map onto settings."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_model_flags", "model_overrides"]


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for the chat model, knowledge bases and embeddings (the same in every server)."""
    parser.add_argument("--model-path", help="local chat model folder (llm.model_path)")
    parser.add_argument("--device", help="chat model device: auto, cpu, cuda, cuda:N, mps (llm.device)")
    parser.add_argument("--dtype", help="chat model dtype: auto, bfloat16, float16, float32 (llm.dtype)")
    parser.add_argument("--quantization", help="none, int8, int4 (weight-only, any device) or 8bit, 4bit (bitsandbytes, CUDA) (llm.quantization)")
    parser.add_argument("--adapter", help="fine-tuned adapter folder: P-tuning v2 or LoRA (llm.adapter)")
    parser.add_argument("--merge-adapter", action="store_true", default=None, help="fold a LoRA adapter into the weights (llm.merge_adapter)")
    parser.add_argument("--kb-root", help="folder holding the knowledge bases (kb_root)")
    parser.add_argument("--embedding", help="embedding model name/folder, or 'none' (embedding.model)")
    parser.add_argument("--embedding-device", help="embedding device (embedding.device)")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings overrides from ``add_model_flags``' flags (unset flags are None and dropped)."""
    return {
        "kb_root": args.kb_root,
        "llm": {
            "model_path": args.model_path,
            "device": args.device,
            "dtype": args.dtype,
            "quantization": args.quantization,
            "adapter": args.adapter,
            "merge_adapter": args.merge_adapter,
        },
        "embedding": {"model": args.embedding, "device": args.embedding_device},
    }
