"""Each Triton kernel family's give-up state (``llm.kernels.give_up``)."""

from __future__ import annotations

from importlib import import_module

import pytest

from llm.kernels.give_up import give_up

FAMILIES = ["llm.kernels.decode_attention_op", "llm.kernels.gemv_op", "llm.kernels.int4_dequant_op",
            "llm.kernels.int4_gemv_op", "llm.kernels.int8_cast_op", "llm.kernels.rope_cache_op",
            "llm.kernels.token_choice_op", "llm.fast_decode.prompt_steps"]


@pytest.mark.parametrize("module", FAMILIES)
def test_each_family_gives_up_into_a_plain_list(module: str) -> None:
    """Regression (run 30): a list subclass as the give-up state read as true inside torch 2.11's
    compiled decode steps (Dynamo), so every kernel tested there was skipped: the tiny GLM's CUDA
    decode graph stopped taking the flash-decode kernel. The state is a plain list."""
    assert type(import_module(module)._broken) is list


def test_give_up_keeps_every_reason_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    reasons: list[str] = []
    with caplog.at_level("WARNING", logger="llm.kernels.give_up"):
        give_up(reasons, RuntimeError("PTX too new"), kernel="GEMV", instead="using PyTorch")
        give_up(reasons, ValueError("again"), kernel="GEMV", instead="using PyTorch")
    assert reasons == ["RuntimeError: PTX too new", "ValueError: again"]
    assert [r.getMessage() for r in caplog.records] == [
        "the Triton GEMV failed, using PyTorch: RuntimeError: PTX too new"]
