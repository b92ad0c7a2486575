"""``ingest convert SRC DST``: rewrite an original ChatGLM2/3-6B folder as a native transformers folder.

The result (safetensors shards, tokenizer.json with the ChatGLM chat template,
generation_config.json, ``model_type: glm``) loads with plain ``AutoModelForCausalLM`` /
``AutoTokenizer`` and no remote code, so every loader option works on it, including
bitsandbytes quantization (``llm.quantization: 8bit|4bit``). Shards are converted one at a
time; the output appears only when complete.
"""

from __future__ import annotations

import argparse
import sys

import click

from ingest.cli import ingest_command




def run(args: argparse.Namespace) -> int:
    from llm.chatglm_legacy import convert_checkpoint

    out = convert_checkpoint(args.src, args.dst, progress=not args.quiet)
    print(f"converted {args.src} -> {out} (set llm.model_path to it)")
    sys.stdout.flush()
    return 0


command = ingest_command(
    "convert",
    run,
    help="convert an original ChatGLM2/3-6B folder to a native transformers folder",
    description=__doc__,
    arguments=[click.argument("src", metavar="SRC"), click.argument("dst", metavar="DST")],
    flags=("quiet",),
)
