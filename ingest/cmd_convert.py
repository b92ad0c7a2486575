"""``ingest convert SRC DST [--adapter DIR]``: rewrite an original ChatGLM2/3-6B folder as a native transformers folder.

The result (safetensors shards, tokenizer.json with the ChatGLM chat template,
generation_config.json, ``model_type: glm``) loads with plain ``AutoModelForCausalLM`` /
``AutoTokenizer`` and no remote code, so every loader option works on it, including
bitsandbytes quantization (``llm.quantization: 8bit|4bit``). Shards are converted one at a
time; the output appears only when complete. With ``--adapter DIR`` (a LoRA adapter) SRC may
also be a native folder, and DST holds the adapter merged into the weights.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an original ChatGLM2/3-6B folder to a native transformers folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="original model folder (config.json with model_type chatglm)")
    parser.add_argument("dst", metavar="DST", help="new output folder (must not exist, or be empty)")
    parser.add_argument("--adapter", metavar="DIR", help="LoRA adapter folder to merge into the written weights")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from llm.chatglm_legacy import convert_checkpoint

    if args.adapter:
        from llm.adapters.merge import write_merged_checkpoint

        out = write_merged_checkpoint(args.src, args.adapter, args.dst)
        print(f"merged {args.adapter} into {args.src} -> {out} (set llm.model_path to it)")
        sys.stdout.flush()
        return 0
    out = convert_checkpoint(args.src, args.dst, progress=not args.quiet)
    print(f"converted {args.src} -> {out} (set llm.model_path to it)")
    sys.stdout.flush()
    return 0


__all__ = ["add_parser", "run"]
