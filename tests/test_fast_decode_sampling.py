"""``first_argmax``, the decode graph's two-stage argmax, against ``torch.argmax`` itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm.fast_decode.sampling import first_argmax


def hard_rows(vocab: int) -> torch.Tensor:
    """Random rows, rows of ties (the first index wins), -inf everywhere but one place, all -inf,
    NaN (which argmax counts as the maximum), and many equal maxima in different chunks."""
    g = torch.Generator().manual_seed(vocab)
    rows = [torch.randn(vocab, generator=g) for _ in range(3)]
    ties = torch.zeros(vocab)
    ties[vocab // 2 :] = 1.0
    lone = torch.full((vocab,), -torch.inf)
    lone[vocab - 1] = 0.0
    nan = torch.randn(vocab, generator=g)
    nan[vocab // 3] = torch.nan
    rounded = (torch.randn(vocab, generator=g) * 2).round()  # many equal maxima in different chunks
    return torch.stack([*rows, ties, lone, torch.full((vocab,), -torch.inf), nan, rounded])


@pytest.mark.parametrize("vocab", [1, 7, 512, 513, 65024, 151552])
def test_first_argmax_is_torch_argmax(vocab: int) -> None:
    """``hard_rows``, with a vocabulary that does and does not fill the last chunk."""
    scores = hard_rows(vocab)
    assert torch.equal(first_argmax(scores), scores.argmax(dim=-1))
    assert torch.equal(first_argmax(scores, chunk=3), scores.argmax(dim=-1))


def test_sampling_settings_are_the_ones_generate_uses(tiny_glm_dir: Path) -> None:
    """Regression: a sampled call without ``top_k`` sampled from the whole top-p nucleus on the fast
    path, while ``generate`` (transformers 5) first kept the 50 most likely tokens, its default.
    Differential: transformers' own resolution of the same call (``_prepare_generation_config``)."""
    from llm import ChatGLM
    from llm.fast_decode.sampling import resolve_sampling

    model = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.8).model
    calls = [{"do_sample": True, "temperature": 0.8, "top_p": 0.8},
             {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 7},
             {"do_sample": True, "top_k": 0, "repetition_penalty": 1.2}]
    for kwargs in calls:
        sampling, scalars = resolve_sampling(model, dict(kwargs))
        config = model._prepare_generation_config(None, **kwargs)[0]
        assert (sampling.top_k or 0) == (config.top_k or 0), kwargs
        assert scalars["top_p"] == pytest.approx(config.top_p) and scalars["temperature"] == pytest.approx(
            config.temperature) and scalars["penalty"] == pytest.approx(config.repetition_penalty), kwargs
    model.generation_config.top_k = 20  # a checkpoint's own setting wins over the library's default
    assert resolve_sampling(model, dict(calls[0]))[0].top_k == 20
