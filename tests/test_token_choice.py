"""The decode step's greedy token choice in Triton (``llm.kernels.token_choice``) against
``sampling.choose_tokens``, the PyTorch reference it replaces, and inside the decode path.

Kernel checks (``test_interpreted_*``) run in a pytest subprocess with ``TRITON_INTERPRET=1``
(Triton reads it on import), as in test_rope_cache.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import llm.fast_decode.decode_graph as decode_graph
from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.fast_decode.sampling import Sampling, choose_tokens
from llm.kernels.token_choice_op import token_kernels_apply, greedy_choice
from llm.streaming import run_generate
from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, interpreted_marker
from tests.test_fast_decode_sampling import hard_rows as argmax_rows

interpreted = interpreted_marker()
ON_CPU = FastDecodeOptions(on_cpu=True)
GREEDY = Sampling(do_sample=False, top_k=None, penalty=False)


def hard_rows(vocab: int) -> torch.Tensor:
    """test_fast_decode_sampling's rows for argmax (ties across chunks, NaN, all -inf, rounded
    values), plus a row whose NaN is in the last column."""
    late_nan = torch.randn(vocab, generator=torch.Generator().manual_seed(vocab)) * 4
    late_nan[vocab - 1] = torch.nan
    return torch.cat([argmax_rows(vocab), late_nan[None]])


def graph_state(logits: torch.Tensor, eos: list[int], *, allow_eos: bool, penalty: float | None,
                seed: int = 0) -> SimpleNamespace:
    """The decode graph's buffers ``choose_tokens`` and the kernels read (eos ids repeated to 8)."""
    rows, vocab = logits.shape
    seen = None
    if penalty is not None:
        seen = torch.rand(rows, vocab, generator=torch.Generator().manual_seed(seed)) < 0.3
    return SimpleNamespace(
        token=torch.full((rows, 1), -1, dtype=torch.long), cur=torch.tensor([5]),
        eos=torch.tensor((eos * 8)[:8], dtype=torch.long), allow_eos=torch.tensor(allow_eos),
        seen=seen, penalty=torch.tensor(penalty or 1.0), sampling=Sampling(False, None, penalty is not None),
    )


def kernel_and_reference(logits: torch.Tensor, g: SimpleNamespace, *, advance: bool) -> tuple[Any, Any]:
    """(token, seen, cur) after the kernels, and after the reference on copies of the same state."""
    want_seen = g.seen.clone() if g.seen is not None else None
    want = choose_tokens(logits, g).unsqueeze(1)
    if want_seen is not None:
        want_seen.scatter_(1, want, True)
    want_cur = g.cur + int(advance)
    assert token_kernels_apply(logits, g.eos)
    assert greedy_choice(logits, g.token, g.eos, g.allow_eos, seen=g.seen, penalty=g.penalty,
                         cur=g.cur if advance else None)
    return (g.token, g.seen, g.cur), (want, want_seen, want_cur)


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__)


@interpreted
@pytest.mark.parametrize("vocab", [7, 2048, 2049, 65024])
@pytest.mark.parametrize("allow_eos", [True, False])
@pytest.mark.parametrize("penalty", [None, 1.3])
def test_interpreted_kernels_choose_what_choose_tokens_chooses(vocab: int, allow_eos: bool,
                                                              penalty: float | None) -> None:
    """Ties in different chunks, NaN (argmax's maximum), all -inf, eos ids at the best place and at
    the last column, the penalty on seen tokens: the kernels' token, seen mark and slot are the
    reference's, bit for bit."""
    logits = hard_rows(vocab)
    best = int(logits[0].argmax())
    eos = [best, vocab - 1]
    g = graph_state(logits, eos, allow_eos=allow_eos, penalty=penalty, seed=vocab)
    ours, want = kernel_and_reference(logits, g, advance=True)
    assert torch.equal(ours[0], want[0])
    assert (ours[1] is None and want[1] is None) or torch.equal(ours[1], want[1])
    assert torch.equal(ours[2], want[2])
    if not allow_eos:
        assert not set(ours[0].view(-1).tolist()) & set(eos) - {0}  # the -inf rows' first index may be eos 0


@interpreted
def test_interpreted_first_token_leaves_the_slot_alone() -> None:
    """The prompt's first token is chosen before the decode loop: ``cur`` must not move then."""
    logits = torch.randn(3, 300, generator=torch.Generator().manual_seed(1))
    g = graph_state(logits, [2], allow_eos=True, penalty=None)
    ours, want = kernel_and_reference(logits, g, advance=False)
    assert torch.equal(ours[0], want[0]) and int(g.cur) == 5


@interpreted
def test_interpreted_decode_steps_choose_by_the_kernels_and_equal_generate(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny GLM's greedy steps (a left-padded batch of two, with a repetition penalty) launch
    the kernels once per token and choose the tokens ``generate`` chooses."""
    import llm.kernels.token_choice as kernel_module

    launches = count_calls(monkeypatch, kernel_module, "launch_greedy_choice")
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.0, max_new_tokens=5)
    kwargs = llm_._generate_kwargs(["曹操是谁？", "刘备"], {"min_new_tokens": 5, "repetition_penalty": 1.5})
    assert torch.equal(run_generate(llm_.model, dict(kwargs)), run_generate(llm_.model, dict(kwargs),
                                                                           fast_decode=ON_CPU))
    assert len(launches) == 5  # the first token after the prompt pass, then 4 one-token steps


# ----- without the kernels (this process) -----------------------------------------------------


def test_without_triton_the_step_takes_choose_tokens(fresh_llm: ChatGLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU without the interpreter (or with ``token_kernel`` off) greedy steps go through
    ``choose_tokens`` and still equal ``generate``."""
    if INTERPRETED:
        pytest.skip("the interpreter runs the kernels here")
    calls = count_calls(monkeypatch, decode_graph, "choose_tokens")
    kwargs = fresh_llm._generate_kwargs(["曹操是谁？"], {"min_new_tokens": 6, "max_new_tokens": 6})
    for options in (ON_CPU, ON_CPU.model_copy(update={"token_kernel": False})):
        assert torch.equal(run_generate(fresh_llm.model, dict(kwargs)),
                           run_generate(fresh_llm.model, dict(kwargs), fast_decode=options))
    assert len(calls) == 2 * 6


def test_the_kernels_apply_only_where_they_can_run() -> None:
    """float32 2-D logits with unit stride and a power-of-two eos buffer, on CUDA (or interpreted)."""
    eos = torch.zeros(8, dtype=torch.long)
    logits = torch.randn(2, 10)
    assert token_kernels_apply(logits, eos) == INTERPRETED
    assert not token_kernels_apply(logits.half(), eos)
    assert not token_kernels_apply(logits.t(), eos)
    assert not token_kernels_apply(logits, torch.zeros(6, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernels_equal_the_reference_and_replay_in_a_cuda_graph() -> None:
    """On the GPU, captured in a CUDA graph and replayed on new logits: the reference's tokens."""
    logits = hard_rows(65024).cuda()
    g = graph_state(logits, [5, 7], allow_eos=False, penalty=1.2)
    g = SimpleNamespace(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in vars(g).items()})
    static = logits.clone()
    assert greedy_choice(static, g.token, g.eos, g.allow_eos, seen=g.seen, penalty=g.penalty, cur=g.cur)  # compiles
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        greedy_choice(static, g.token, g.eos, g.allow_eos, seen=g.seen, penalty=g.penalty, cur=g.cur)
    fresh = torch.randn_like(logits)
    static.copy_(fresh)
    want = choose_tokens(fresh, g)
    cur = int(g.cur)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g.token.view(-1), want) and int(g.cur) == cur + 1


def test_the_kernels_compile_for_sm90() -> None:
    """Regression: a plain module-level constant in the kernels ran under the interpreter and
    failed Triton's compiler on the GPU (run 28, H100: the op fell back to PyTorch). Compiled
    here for sm_90 with Triton's own toolchain, no GPU needed."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from llm.kernels import token_choice

    types = {"logits_ptr": "*fp32", "seen_ptr": "*u8", "penalty_ptr": "*fp32", "eos_ptr": "*i64", "allow_ptr": "*u8",
             "best_ptr": "*fp32", "where_ptr": "*i32", "token_ptr": "*i64", "cur_ptr": "*i64"}
    cases = ((token_choice._chunk_best, {"PENALTY": True, "EOS": 8, "BLOCK": token_choice.BLOCK, "PDL": True}),
             (token_choice._pick_token, {"PENALTY": True, "ADVANCE": True, "BLOCK_C": 32, "PDL": True}))
    for fn, constexprs in cases:
        signature = {p.name: "constexpr" if p.is_constexpr else types.get(p.name, "i32") for p in fn.params}
        try:
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        except Exception as e:  # noqa: BLE001 - Triton's compile errors, or a Triton without its ptxas
            if "CompilationError" in type(e).__name__:
                raise
            pytest.skip(f"cannot compile for sm_90 here: {e}")
        assert compiled.asm["cubin"], fn.__name__
