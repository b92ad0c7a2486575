"""The captured prompt pass's RMSNorm (``llm.kernels.rms_norm``, ``llm.fast_decode.norm_step``),
against transformers' own ``GlmRMSNorm``.

Regression: every RMSNorm call of the captured prompt pass ran seven eager kernels; in the 6B
shape at a 64-token bucket (H200, run 19) their mean alone took 9.0 us per call and the seven
~1.2 ms of the 9.1 ms pass. Kernel checks (``test_interpreted_*``) run in a pytest subprocess with
``TRITON_INTERPRET=1``, as in test_rope_cache.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import llm.fast_decode.norm_step as norm_module
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.streaming import run_generate
from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, interpreted_marker

interpreted = interpreted_marker()
BUCKETED = FastDecodeOptions(on_cpu=True, bucketed_prefill_on_cpu=True)


def glm_norm(hidden: int, dtype: torch.dtype, *, seed: int) -> torch.nn.Module:
    from transformers.models.glm.modeling_glm import GlmRMSNorm

    norm = GlmRMSNorm(hidden, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(hidden, generator=torch.Generator().manual_seed(seed)) + 0.5)
    return norm.to(dtype)


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "hidden"), [(64, 4096), (3, 64), (5, 96)])
def test_interpreted_kernel_matches_transformers_norm(rows: int, hidden: int, dtype: torch.dtype) -> None:
    """ChatGLM3-6B's width at a 64-token bucket, a tiny model's, a width that is not a power of two.
    float32 agrees to rounding. bf16 within three units of the last place: Triton's interpreter
    truncates float32 to bf16 where the GPU rounds to nearest (measured: half of all casts differ),
    and the kernel rounds twice, as the module does (the GPU test holds it to two units)."""
    from llm.kernels.rms_norm import launch_rms_norm

    norm = glm_norm(hidden, dtype, seed=rows)
    x = (torch.randn(1, rows, hidden, generator=torch.Generator().manual_seed(hidden)) * 3).to(dtype)
    ours = launch_rms_norm(x, norm.weight.detach(), norm.variance_epsilon)
    theirs = norm(x).detach()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    tolerance = 1e-5 if dtype == torch.float32 else 3 * 2 ** -7
    assert ((ours.float() - theirs.float()).abs() / theirs.float().abs().clamp(min=1e-3)).max().item() <= tolerance


@interpreted
def test_interpreted_prompt_pass_runs_the_kernel_and_chooses_generates_tokens(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny GLM's bucketed prompt pass launches the kernel for each of its 2 norms per layer and
    the final one, and the answer is ``generate``'s."""
    import llm.kernels.rms_norm as kernel_module

    launches = count_calls(monkeypatch, kernel_module, "launch_rms_norm")
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=8)
    kwargs = llm_._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 8})
    eager = run_generate(llm_.model, dict(kwargs))
    fast = run_generate(llm_.model, dict(kwargs), fast_decode=BUCKETED)
    assert torch.equal(eager, fast)
    assert len(launches) == 2 * llm_.model.config.num_hidden_layers + 1  # one prompt pass


# ----- without the kernel (this process) -----------------------------------------------------


@pytest.fixture
def fresh_llm(tiny_glm_dir: Path) -> ChatGLM:
    return ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=8)


@pytest.mark.parametrize("fused_norm", [True, False])
def test_the_prompt_pass_takes_the_norm_steps_and_puts_the_forwards_back(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch, fused_norm: bool
) -> None:
    """With ``fused_norm`` every RMSNorm call of the bucketed prompt pass goes through ``NormStep``
    (and, on CPU without the interpreter, on to the module's own forward: the same tokens); the
    decode steps do not. Afterwards each norm has its class's forward again."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernel here")
    calls = count_calls(monkeypatch, norm_module, "norm_applies")
    model = fresh_llm.model
    kwargs = fresh_llm._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 8})
    eager = run_generate(model, dict(kwargs))
    fast = run_generate(model, dict(kwargs), fast_decode=BUCKETED.model_copy(update={"fused_norm": fused_norm}))
    assert torch.equal(eager, fast)
    layers = model.config.num_hidden_layers
    assert len(calls) == ((2 * layers + 1) if fused_norm else 0)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_norm_steps_replace_only_transformers_own_norm_forward(fresh_llm: ChatGLM) -> None:
    """Every GlmRMSNorm of the model (2 per layer and the final one) gets a step; a norm whose
    forward was patched on the instance does not (its math may not be this kernel's)."""
    from llm.fast_decode.norm_step import norm_steps

    model = fresh_llm.model
    layers = model.config.num_hidden_layers
    assert len(norm_steps(model)) == 2 * layers + 1
    first = model.model.layers[0].input_layernorm
    first.forward = lambda x: x
    try:
        assert len(norm_steps(model)) == 2 * layers
    finally:
        del first.forward


def test_without_the_kernel_a_step_is_the_modules_own_forward() -> None:
    """On CPU without the interpreter the step computes exactly what the module computes."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernel here")
    from llm.fast_decode.norm_step import NormStep

    norm = glm_norm(96, torch.bfloat16, seed=1)
    x = torch.randn(2, 5, 96).to(torch.bfloat16)
    assert not norm_module.norm_applies(x, norm.weight)
    assert torch.equal(NormStep(norm).forward(x), norm(x))


@pytest.mark.gpu
def test_cuda_kernel_matches_transformers_norm_and_replays_in_a_cuda_graph() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from llm.kernels.rms_norm import launch_rms_norm

    norm = glm_norm(4096, torch.bfloat16, seed=2).cuda()
    x = torch.randn(1, 64, 4096, device="cuda").to(torch.bfloat16)
    with torch.no_grad():
        want = norm(x)
        got = launch_rms_norm(x, norm.weight, norm.variance_epsilon)
        assert ((got.float() - want.float()).abs() / want.float().abs().clamp(min=1e-3)).max().item() <= 2 * 2 ** -7
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = launch_rms_norm(x, norm.weight, norm.variance_epsilon)
        x.mul_(2)
        graph.replay()
        torch.testing.assert_close(out, launch_rms_norm(x, norm.weight, norm.variance_epsilon), rtol=0, atol=0)
