"""``glmkb finetune DATA.jsonl --output DIR``: LoRA or P-tuning v2 on a JSONL of conversations.

Writes ``DIR/checkpoint-N`` adapter folders that ``--adapter`` (``llm.adapter``) loads. The base
model is ``--model-path`` or ``llm.model_path`` (original ChatGLM2/3 folders load natively).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXAMPLE = """examples:
  glmkb finetune data/train.jsonl --model-path ./chatglm3-6b --output ./output --epochs 3
  glmkb finetune data/train.jsonl --method ptuning --pre-seq-len 128 --output ./output
  glmkb-web --model-path ./chatglm3-6b --adapter ./output/checkpoint-3000
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The finetune flags."""
    parser.add_argument("data", metavar="DATA.jsonl", help='one {"conversations": [{"role", "content"}, ...]} per line')
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for checkpoint-N adapter folders")
    parser.add_argument("--model-path", metavar="DIR", help="base model folder (default: llm.model_path)")
    parser.add_argument("--method", choices=("lora", "ptuning"), default="lora", help="adapter to train (default: lora)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: llm.device)")
    parser.add_argument("--dtype", default="auto", help="weights dtype; auto = bf16 on GPU, fp32 on CPU")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the data (default: 1)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps (overrides --epochs)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="rows per micro-batch (default: 4)")
    parser.add_argument("--grad-accum", type=int, default=1, metavar="N", help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, help="learning rate (default: 2e-4 LoRA, 2e-2 P-tuning)")
    parser.add_argument("--warmup-steps", type=int, default=0, metavar="N")
    parser.add_argument("--max-length", type=int, default=1024, metavar="N", help="tokens per conversation (or packed row)")
    parser.add_argument("--pack", action="store_true", help="pack several conversations per row (LoRA only)")
    parser.add_argument("--last-turn-only", action="store_true", help="loss on the last assistant turn only (ChatGLM2's official masking)")
    parser.add_argument("--save-every", type=int, default=500, metavar="N", help="checkpoint every N steps (default: 500)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT", help="continue from a checkpoint (default: the newest in --output)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument("--lora-target", default="q_proj,k_proj,v_proj", help="comma-separated module names (native GLM names)")
    parser.add_argument("--pre-seq-len", type=int, default=128, help="P-tuning prefix length (default: 128)")
    parser.add_argument("--prefix-projection", action="store_true", help="P-tuning with the two-layer prefix MLP")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="less memory, more compute (LoRA)")
    parser.add_argument("--config", help="YAML settings file (default: $GLMKB_CONFIG)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from configs import load_settings
    from configs.errors import BadInput
    from llm.finetune.train import FinetuneConfig, run_finetune

    settings = load_settings(args.config, llm={"model_path": args.model_path, "device": args.device})
    if not settings.llm.model_path:
        raise BadInput("no base model: pass --model-path DIR or set llm.model_path")
    cfg = FinetuneConfig(
        data=args.data, model_path=settings.llm.model_path, output=args.output, method=args.method,
        device=settings.llm.device, dtype=args.dtype, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps,
        max_length=args.max_length, pack=args.pack, last_turn_only=args.last_turn_only, save_every=args.save_every,
        resume=args.resume, seed=args.seed, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=[t.strip() for t in args.lora_target.split(",") if t.strip()],
        pre_seq_len=args.pre_seq_len, prefix_projection=args.prefix_projection,
        gradient_checkpointing=args.gradient_checkpointing, progress=not args.quiet,
    )
    folder = run_finetune(cfg).checkpoint
    print(f"adapter written to {folder} (load it with --adapter {folder})")
    sys.stdout.flush()
    return 0


def build_parser(prog: str = "glmkb finetune") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``glmkb finetune`` (registered in ``app.glmkb_cli``): one line and exit 2 for bad input, never a traceback unless ``--verbose``."""
    from configs.cli import run_command

    args = build_parser().parse_args(argv)
    return run_command("glmkb finetune", lambda: run(args), verbose=args.verbose)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
