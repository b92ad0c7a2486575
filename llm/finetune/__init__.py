"""``glmkb finetune``: LoRA or P-tuning v2 on conversations, loss on every assistant turn (docs/ADAPTERS.md).

``data`` tokenizes and masks conversations, ``batching`` pads or packs them, ``train`` runs the
loop with checkpoints and resume, ``cli`` is the command line (``main(argv)``).
"""
