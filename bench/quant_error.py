"""Where weight-only INT8/INT4 error comes from, on CPU: per weight, per layer, and through the layers.

    python -m bench.quant_error                      # ChatGLM3-like, hidden 256, 28 layers (~5 min on 2 cores)
    python -m bench.quant_error --layers 8

For one random ``GlmForCausalLM`` of a scaled-down ChatGLM3 shape (same depth, GQA 16:1, partial
rotary), in float32, and each recipe (INT8 per channel, INT4 asymmetric group 128/64/32, and a
control: Gaussian noise of exactly INT4 g128's per-layer error norm), it reports the relative
weight error of the quantized linears, the relative error of the hidden state after each layer,
and the logits' relative error and greedy top-1 agreement against the unquantized model, for two
initialisations:

- ``random-0.02``: transformers' normal(0, 0.02) at this width. At hidden 256 a linear's gain is
  0.02 * sqrt(fan_in) = 0.3, so the random network damps perturbations: it is NOT what the 6B
  random model of ``bench.decode --quantization`` is.
- ``random-6b-gain``: normal(0, 0.02 * sqrt(4096 / hidden)): each linear has the gain it has in
  the 6B shape at std 0.02 (1.28 for fan-in 4096, 2.3 for down_proj's 13696). Each layer's update
  is far larger than the 0.02-scale embedding it is added to: the network is chaotic, a
  perturbation grows layer after layer, as in the 6B random model.
- ``residual-scaled``: as ``random-6b-gain`` with o_proj and down_proj divided by sqrt(2 * layers)
  (GPT-2's init) and unit-scale embeddings: the regime of trained models, whose residual stream
  carries the signal and each layer adds a small update to it.

If INT4 matched the noise control and both behaved like INT8 scaled by their weight error, the
error is the model's sensitivity, not a quantization fault (docs/PERFORMANCE.md, quant section).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from torch import nn

from bench.common import print_table

INITS = ("random-0.02", "random-6b-gain", "residual-scaled")
RECIPES = ("int8", "int4-g128", "int4-g64", "int4-g32", "noise-as-int4-g128")


def build(*, hidden: int, layers: int, vocab: int, init: str, seed: int = 0) -> Any:
    """A random float32 ``GlmForCausalLM`` of ChatGLM3's proportions (heads of 128 scaled to ``hidden``)."""
    from transformers import GlmConfig, GlmForCausalLM

    heads = max(hidden // 32, 2)
    config = GlmConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(heads // 16, 1), head_dim=32, attention_bias=True,
        rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    torch.manual_seed(seed)
    model = GlmForCausalLM(config).eval()
    if init == "random-0.02":
        return model
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
                std = 0.02 * math.sqrt(4096 / hidden)
                if init == "residual-scaled" and name.endswith(("o_proj", "down_proj")):
                    std /= math.sqrt(2 * layers)
                module.weight.normal_(0.0, std)
        if init == "residual-scaled":
            model.model.embed_tokens.weight.normal_(0.0, 1.0)
    return model


def apply_recipe(model: nn.Module, recipe: str) -> list[float]:
    """Quantize (or perturb) ``model``'s linears but the LM head in place; each one's relative weight error."""
    from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear, quantize_model_

    reference = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if recipe.startswith("noise"):
        return add_matched_noise(model, reference)
    kind, _, group = recipe.partition("-g")
    quantize_model_(model, kind, group_size=int(group or 128))
    errors = []
    for name, module in model.named_modules():
        if isinstance(module, WeightOnlyInt4Linear):
            w = module.dequantized(torch.float32)
        elif isinstance(module, WeightOnlyInt8Linear):
            w = module.weight.float() * module.scales.float()[:, None]
        else:
            continue
        errors.append(float((w - reference[name]).norm() / reference[name].norm()))
    return errors


def add_matched_noise(model: nn.Module, reference: dict[str, torch.Tensor]) -> list[float]:
    """Each linear but the LM head plus Gaussian noise whose norm is that layer's INT4 g128 error."""
    from llm.quantization import quantize_int4

    errors = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear) or name.endswith("lm_head"):
                continue
            w = reference[name]
            q, scale, zero = quantize_int4(w, group_size=128)
            n, k = w.shape
            error = ((q.float().view(n, -1, 128) - zero[..., None]) * scale[..., None]).view(n, k) - w
            noise = torch.randn_like(w)
            module.weight.add_(noise * (error.norm() / noise.norm()))
            errors.append(float(error.norm() / w.norm()))
    return errors


def forward(model: nn.Module, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True)
    return list(out.hidden_states), out.logits


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(args: Any, init: str) -> dict[str, Any]:
    ids = torch.randint(0, args.vocab, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    ref_hidden, ref_logits = forward(build(hidden=args.hidden, layers=args.layers, vocab=args.vocab, init=init), ids)
    rows: dict[str, Any] = {}
    for recipe in RECIPES:
        model = build(hidden=args.hidden, layers=args.layers, vocab=args.vocab, init=init)
        weight_errors = apply_recipe(model, recipe)
        hidden, logits = forward(model, ids)
        rows[recipe] = {
            "weight_rel_error": sum(weight_errors) / len(weight_errors),
            "hidden_rel_error_by_layer": [relative(h, r) for h, r in zip(hidden[1:], ref_hidden[1:], strict=True)],
            "logits_rel_error": relative(logits, ref_logits),
            "top1_agreement": float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
        }
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(2)
    for init in INITS:
        rows = measure(args, init)
        marks = sorted({0, args.layers // 4, args.layers // 2, args.layers - 1})
        print_table(
            f"{init} init, hidden {args.hidden}, {args.layers} layers: relative error vs float32",
            [(name, r["weight_rel_error"], *(r["hidden_rel_error_by_layer"][i] for i in marks), r["logits_rel_error"],
              r["top1_agreement"]) for name, r in rows.items()],
            ("recipe", "weight", *(f"after layer {i + 1}" for i in marks), "logits", "top-1 agree"),
        )


if __name__ == "__main__":
    main()
