"""Original ChatGLM folders placed on a CUDA GPU: every tensor on the device, logits as ChatGLM computes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm.chatglm_legacy import load_chatglm_legacy
from tests.fixtures.chatglm_legacy import load_original_state
from tests.test_chatglm_legacy import random_ids, read_config, reference_forward

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Largest |logit difference| to the fp32 reference, relative to the largest |logit|.
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 8e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_cuda_load_matches_reference(chatglm3_legacy_path: Path, dtype: str) -> None:
    model, _ = load_chatglm_legacy(chatglm3_legacy_path, device="cuda", dtype=dtype)
    tensors = [*model.parameters(), *model.buffers()]
    assert {t.device.type for t in tensors} == {"cuda"}
    state, config = load_original_state(chatglm3_legacy_path), read_config(chatglm3_legacy_path)
    ids = random_ids(config, 48, seed=1, batch=2)
    expected, _ = reference_forward(state, config, ids)
    with torch.inference_mode():
        got = model(input_ids=ids.cuda()).logits.float().cpu()
        generated = model.generate(ids[:1].cuda(), max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert (got - expected).abs().max() <= TOLERANCE[dtype] * expected.abs().max()
    assert generated.shape == (1, 52)
