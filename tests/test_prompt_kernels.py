"""The prompt pass's RMSNorm and SwiGLU kernels (``llm.kernels.rms_norm``, ``llm.kernels.swiglu``,
``llm.fast_decode.prompt_steps``), against transformers' own ``GlmRMSNorm`` and ``GlmMLP``.

Regression: every RMSNorm call of the captured prompt pass ran seven eager kernels and every
SwiGLU two; in the 6B shape at a 64-token bucket (H200, run 19) the norm's mean alone took 9.0 us
per call and its seven kernels ~1.2 ms of the 9.1 ms pass. Kernel checks (``test_interpreted_*``)
run in a pytest subprocess with ``TRITON_INTERPRET=1``, as in test_rope_cache.py.
"""

from __future__ import annotations


import pytest
import torch

import llm.fast_decode.prompt_steps as steps_module
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, fast_and_eager, interpreted_marker

interpreted = interpreted_marker()
BUCKETED = FastDecodeOptions(on_cpu=True, bucketed_prefill_on_cpu=True)
PROMPTS = ["曹操是谁？", "刘备"]


def glm_norm(hidden: int, dtype: torch.dtype, *, seed: int) -> torch.nn.Module:
    from transformers.models.glm.modeling_glm import GlmRMSNorm

    norm = GlmRMSNorm(hidden, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(hidden, generator=torch.Generator().manual_seed(seed)) + 0.5)
    return norm.to(dtype)


def glm_mlp(hidden: int, intermediate: int, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import GlmConfig
    from transformers.models.glm.modeling_glm import GlmMLP

    torch.manual_seed(hidden)
    config = GlmConfig(hidden_size=hidden, intermediate_size=intermediate, hidden_act="silu")
    return GlmMLP(config).to(dtype).eval()


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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "intermediate"), [(64, 13696), (3, 128), (5, 1500)])
def test_interpreted_swiglu_matches_transformers_mlp(rows: int, intermediate: int, dtype: torch.dtype) -> None:
    """ChatGLM3-6B's 13696 at a 64-token bucket (13 blocks and a partial one), a tiny model's, a
    width that is not a multiple of the block. float32 agrees to rounding; bf16 within three units
    of the last place (the interpreter truncates to bf16, see above)."""
    from llm.kernels.swiglu import launch_swiglu

    g = torch.Generator().manual_seed(intermediate)
    gate_up = (torch.randn(1, rows, 2 * intermediate, generator=g) * 3).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    theirs = up * torch.nn.functional.silu(gate)
    ours = launch_swiglu(gate_up)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    tolerance = 1e-5 if dtype == torch.float32 else 3 * 2 ** -7
    assert ((ours.float() - theirs.float()).abs() / theirs.float().abs().clamp(min=1e-2)).max().item() <= tolerance


@interpreted
def test_interpreted_prompt_pass_runs_the_kernel_and_chooses_generates_tokens(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny GLM's bucketed prompt pass launches the norm kernel for each of its 2 norms per layer
    and the final one, the SwiGLU kernel once per layer, and the answer is ``generate``'s."""
    import llm.kernels.rms_norm as norm_kernel
    import llm.kernels.swiglu as swiglu_kernel

    launches = count_calls(monkeypatch, norm_kernel, "launch_rms_norm")
    swiglus = count_calls(monkeypatch, swiglu_kernel, "launch_swiglu")
    assert torch.equal(*fast_and_eager(fresh_llm, PROMPTS, options=BUCKETED, min_new_tokens=8, max_new_tokens=8))
    layers = fresh_llm.model.config.num_hidden_layers
    assert len(launches) == 2 * layers + 1 and len(swiglus) == layers  # one prompt pass


# ----- without the kernel (this process) -----------------------------------------------------


@pytest.mark.parametrize("prompt_kernels", [True, False])
def test_the_prompt_pass_takes_the_norm_and_swiglu_steps_and_puts_the_forwards_back(
    fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch, prompt_kernels: bool
) -> None:
    """With ``prompt_kernels`` every RMSNorm and MLP call of the bucketed prompt pass goes through
    its step (and, on CPU without the interpreter, on to the module's own forward: the same
    tokens); the decode steps do not. Afterwards each module has its class's forward again."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernels here")
    calls = count_calls(monkeypatch, steps_module, "kernel_applies")
    model = fresh_llm.model
    options = BUCKETED.model_copy(update={"prompt_kernels": prompt_kernels})
    assert torch.equal(*fast_and_eager(fresh_llm, PROMPTS, options=options, min_new_tokens=8, max_new_tokens=8))
    layers = model.config.num_hidden_layers
    assert len(calls) == ((3 * layers + 1) if prompt_kernels else 0)  # 2 norms and an MLP per layer, the final norm
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_prompt_steps_replace_only_transformers_own_forwards(fresh_llm: ChatGLM) -> None:
    """Every GlmRMSNorm (2 per layer and the final one) and GlmMLP of the model gets a step; a
    module whose forward was patched on the instance does not (its math may not be the kernel's),
    nor an MLP whose activation is not SiLU."""
    from llm.fast_decode.prompt_steps import NormStep, SwigluStep, prompt_steps

    model = fresh_llm.model
    layers = model.config.num_hidden_layers
    steps = prompt_steps(model)
    assert sum(isinstance(s, NormStep) for s in steps) == 2 * layers + 1
    assert sum(isinstance(s, SwigluStep) for s in steps) == layers
    first = model.model.layers[0].input_layernorm
    first.forward = lambda x: x
    mlp = model.model.layers[0].mlp
    activation = mlp.activation_fn
    mlp.activation_fn = torch.nn.GELU()
    try:
        assert len(prompt_steps(model)) == 3 * layers + 1 - 2
    finally:
        del first.forward
        mlp.activation_fn = activation


def test_without_the_kernel_a_step_is_the_modules_own_forward() -> None:
    """On CPU without the interpreter a step computes exactly what its module computes."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernels here")
    from llm.fast_decode.prompt_steps import NormStep, SwigluStep

    norm = glm_norm(96, torch.bfloat16, seed=1)
    x = torch.randn(2, 5, 96).to(torch.bfloat16)
    assert not steps_module.kernel_applies(x)
    assert torch.equal(NormStep(norm).forward(x), norm(x))
    mlp = glm_mlp(96, 64, torch.bfloat16)
    assert torch.equal(SwigluStep(mlp).forward(x), mlp(x))


@pytest.mark.gpu
def test_cuda_kernels_match_transformers_and_replay_in_a_cuda_graph() -> None:
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
        from llm.kernels.swiglu import launch_swiglu

        gate_up = torch.randn(1, 64, 2 * 13696, device="cuda").to(torch.bfloat16)
        gate, up = gate_up.chunk(2, dim=-1)
        want = up * torch.nn.functional.silu(gate)
        got = launch_swiglu(gate_up)
        assert ((got.float() - want.float()).abs() / want.float().abs().clamp(min=1e-2)).max().item() <= 2 * 2 ** -7
