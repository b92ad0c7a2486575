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

import click

from ingest.cli import ingest_command


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


command = ingest_command(
    "convert",
    run,
    help="convert an original ChatGLM2/3-6B folder to a native transformers folder",
    description=__doc__,
    arguments=[
        click.argument("src", metavar="SRC"),
        click.argument("dst", metavar="DST"),
        click.option("--adapter", metavar="DIR", help="LoRA adapter folder to merge into the written weights"),
    ],
    flags=("quiet",),
)
