"""The decode step's sampled token choice in Triton (``llm.kernels.token_top_k`` for top-k up to
``MAX_TOP_K``, ``llm.kernels.token_sampling`` otherwise) against ``sampling.choose_tokens`` racing
the same ``Exp(1)`` noise, and inside the decode path.

Kernel checks (``test_interpreted_*``) run in a pytest subprocess with ``TRITON_INTERPRET=1``, as in
test_token_choice.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llm import ChatGLM
from llm.fast_decode import FastDecodeOptions
from llm.fast_decode.sampling import Sampling, choose_tokens
from llm.kernels.token_choice_op import MAX_TOP_K, sampled_choice
from llm.streaming import run_generate
from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, interpreted_marker
from tests.test_token_choice import graph_state

interpreted = interpreted_marker()
ON_CPU = FastDecodeOptions(on_cpu=True)
# The decode step's other kernels in PyTorch: under the interpreter they took most of the sampled
# steps' test (240 s), and test_gemv/test_rope_cache/test_decode_attention check them.
ONLY_TOKEN_KERNELS = ON_CPU.model_copy(update={"gemv_kernel": "torch", "fused_rope": False, "packed_attention": False})


def sampled_state(logits: torch.Tensor, eos: list[int], *, allow_eos: bool, penalty: float | None,
                  temperature: float, top_p: float, top_k: int | None = None, seed: int = 0) -> SimpleNamespace:
    """test_token_choice's graph buffers for a sampled call."""
    g = graph_state(logits, eos, allow_eos=allow_eos, penalty=penalty, seed=seed)
    g.temperature, g.top_p = torch.tensor(temperature), torch.tensor(top_p)
    g.sampling = Sampling(True, top_k, penalty is not None)
    return g


def noise_like(logits: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(seed))


def launch_kernels(logits: torch.Tensor, noise: torch.Tensor, g: SimpleNamespace) -> None:
    """The kernels ``sampled_choice`` takes for this top-k, at any batch (it declines the radix
    selects past one row, which these tests check on several)."""
    from llm.kernels import token_sampling, token_top_k

    top_k = g.sampling.top_k
    launch = (token_top_k.launch_top_k_choice if top_k and top_k <= MAX_TOP_K
              else token_sampling.launch_sampled_choice)
    launch(logits, noise, g.token, g.eos, g.allow_eos, seen=g.seen, penalty=g.penalty, temperature=g.temperature,
           top_p=g.top_p, top_k=top_k, cur=g.cur)


def kernel_tokens(logits: torch.Tensor, noise: torch.Tensor, g: SimpleNamespace) -> torch.Tensor:
    launch_kernels(logits, noise, g)
    return g.token.view(-1).clone()


INTERPRETED_GROUPS = [  # -k expressions that together select every test_interpreted_* once
    "interpreted and sample_what_choose_tokens and not 65024",
    "interpreted and sample_what_choose_tokens and 65024",
    "interpreted and not sample_what_choose_tokens",
]


@pytest.mark.parametrize("keyword", INTERPRETED_GROUPS, ids=[f"group{i}" for i in range(len(INTERPRETED_GROUPS))])
def test_kernels_under_triton_interpreter(keyword: str) -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads), in
    groups: all in one process took 741 s on a slow CI machine, past the subprocess's 600 s limit. On
    two workers the first two took 199 and 136 s (317 and 187 s in one); the sampled steps' test, 240 s
    alone, is 70 s with the step's other kernels in PyTorch."""
    assert_interpreted_tests_pass(__file__, keyword, workers=2)


@interpreted
@pytest.mark.parametrize(("vocab", "top_p", "top_k", "seeds"), [
    *((vocab, top_p, None, 3) for vocab in (7, 1025) for top_p in (0.05, 0.5, 0.8, 0.97, 1.0)),
    *((1025, top_p, top_k, 3) for top_p, top_k in ((0.8, 1), (1.0, 5), (0.8, 50), (1.0, 128), (0.8, 129),
                                                   (1.0, 2000), (0.8, 2000))),
    (65024, 0.8, 50, 1),  # the 6B vocabulary, generate's default top-k (token_top_k's 32 chunks)
    (65024, 0.8, 200, 1),  # token_sampling's 64 chunks with top-k: ~30 s under the interpreter
])
def test_interpreted_kernels_sample_what_choose_tokens_samples(vocab: int, top_p: float, top_k: int | None,
                                                               seeds: int) -> None:
    """Same logits, same noise: the kernels' token is the reference's, for nuclei of one token to the
    whole row, top-k of one token to more than the row, with the penalty and eos suppression on,
    over rows whose spreads differ (a peaked row, model-like logits, a flat one, one rounded to
    bf16 as an LM head's are, with ties at the k-th value). Also the token marked seen and the slot
    moved on."""
    gen = torch.Generator().manual_seed(vocab)
    scales = (12.0, 3.0, 0.3, 1.0) if seeds > 1 else (3.0,)
    logits = torch.stack([torch.randn(vocab, generator=gen) * s for s in scales])
    if seeds > 1:
        logits[3] = (logits[3] * 4).bfloat16().float()  # bf16 steps of 1/32-1/64 here: many equal values
    for seed in range(seeds):
        g = sampled_state(logits, [1, vocab - 1], allow_eos=seed != 1, penalty=1.3 if seed else None,
                          temperature=(0.8, 1.0, 0.5)[seed], top_p=top_p, top_k=top_k, seed=seed)
        noise = noise_like(logits, seed)
        want = choose_tokens(logits, g, noise=noise)
        seen_before = None if g.seen is None else g.seen.clone()
        assert torch.equal(kernel_tokens(logits, noise, g), want), (seed, want)
        assert int(g.cur) == 6
        if seen_before is not None:
            assert torch.equal(g.seen, seen_before.scatter(1, want[:, None], True))


@interpreted
def test_interpreted_nucleus_edges() -> None:
    """A nucleus of exactly the best token (tiny top_p: the argmax whatever the noise); an all -inf
    row (the first index, as the reference's NaN softmax gives); NaN logits count as -inf; equal
    logits: all kept at any top_p (ties on the edge are kept whole, where a sort keeps a part)."""
    vocab = 300
    logits = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0)) * 2
    logits[1] = -torch.inf
    logits[2, 10:] = torch.nan
    g = sampled_state(logits, [0], allow_eos=True, penalty=None, temperature=1.0, top_p=1e-6)
    tokens = kernel_tokens(logits, noise_like(logits, 1), g)
    assert int(tokens[0]) == int(logits[0].argmax()) and int(tokens[1]) == 0
    assert int(tokens[2]) == int(logits[2, :10].argmax())
    flat = torch.zeros(2, vocab)
    noise = noise_like(flat, 2)
    g = sampled_state(flat, [0], allow_eos=True, penalty=None, temperature=1.0, top_p=0.3)
    assert torch.equal(kernel_tokens(flat, noise, g), noise.argmin(dim=-1))


@interpreted
@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_interpreted_top_k_keeps_every_token_at_its_edge(top_p: float) -> None:
    """Top-k keeps every token equal to its k-th value, as transformers does, however many there
    are: a flat row (each chunk's kept keys end at the edge, so the kernel counts and races over the
    whole row), one with three tokens above the flat rest, 80 ties split over two chunks below one
    best token (two chunks of 1,024), and fewer finite tokens than k (ties at ``-inf`` weigh nothing). top_p 0.5 keeps
    the ties whole in the reference too where they lie below its edge."""
    gen = torch.Generator().manual_seed(5)
    flat = torch.zeros(2, 4096)
    flat[1, :3] = 1.0
    spread = torch.randn(1, 8192, generator=gen)
    spread[0, 100:140] = spread[0, 2000:2040] = 5.0
    spread[0, 5000] = 9.0
    few = torch.full((1, 300), -torch.inf)
    few[0, 20:30] = torch.randn(10, generator=gen)
    for logits in (flat, spread, few) if top_p == 1.0 else (spread, few):
        for seed in range(3):
            g = sampled_state(logits, [1], allow_eos=True, penalty=None, temperature=1.0, top_p=top_p, top_k=50,
                              seed=seed)
            noise = noise_like(logits, seed)
            want = choose_tokens(logits, g, noise=noise)
            assert torch.equal(kernel_tokens(logits, noise, g), want), seed


@interpreted
def test_interpreted_top_k_without_tl_topk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Triton without ``tl.topk`` takes each chunk's largest keys from a full sort: same tokens."""
    from llm.kernels import token_top_k

    monkeypatch.setattr(token_top_k, "HAS_TOPK", False)
    logits = torch.randn(2, 3000, generator=torch.Generator().manual_seed(9)) * 3
    g = sampled_state(logits, [1], allow_eos=True, penalty=1.2, temperature=0.8, top_p=0.8, top_k=50)
    noise = noise_like(logits, 0)
    want = choose_tokens(logits, g, noise=noise)  # before the kernels mark their tokens seen
    assert torch.equal(kernel_tokens(logits, noise, g), want)


@interpreted
def test_interpreted_sampled_steps_take_the_kernels_and_equal_the_pytorch_choice(
    tiny_glm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny GLM's sampled steps (with a repetition penalty; a batch of two with generate's
    default top-k 50 through ``token_top_k``, one row of top-p alone through ``token_sampling``)
    launch the kernels once per token and, seeded alike, sample the tokens of the PyTorch choice
    (``sampling_kernel`` off): both race the same noise."""
    import llm.kernels.token_sampling as radix_module
    import llm.kernels.token_top_k as top_k_module

    launches = {None: count_calls(monkeypatch, top_k_module, "launch_top_k_choice"),
                0: count_calls(monkeypatch, radix_module, "launch_sampled_choice")}
    llm_ = ChatGLM.from_model_path(tiny_glm_dir, device="cpu", temperature=0.9, top_p=0.7, max_new_tokens=6)
    for top_k, prompts in ((None, ["曹操是谁？", "刘备"]), (0, ["曹操是谁？"])):  # top-p alone: one row
        kwargs = llm_._generate_kwargs(prompts, {"min_new_tokens": 6, "repetition_penalty": 1.2, "top_k": top_k})
        outs = []
        for options in (ONLY_TOKEN_KERNELS, ONLY_TOKEN_KERNELS.model_copy(update={"sampling_kernel": False})):
            torch.manual_seed(7)
            outs.append(run_generate(llm_.model, dict(kwargs), fast_decode=options))
        assert torch.equal(outs[0], outs[1]), top_k
        assert len(launches[top_k]) == 6  # the first token after the prompt pass, then 5 one-token steps


def test_without_the_kernels_sampled_steps_take_choose_tokens(fresh_llm: ChatGLM,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A sampled call goes through ``choose_tokens`` with ``sampling_kernel`` off, and where the
    kernels cannot run (CPU without the interpreter) with it on, the default."""
    import llm.fast_decode.decode_graph as decode_graph

    if INTERPRETED:
        pytest.skip("the interpreter runs the kernels here")
    assert FastDecodeOptions().sampling_kernel
    calls = count_calls(monkeypatch, decode_graph, "choose_tokens")
    settings = {"min_new_tokens": 4, "max_new_tokens": 4, "do_sample": True, "top_k": 5}
    kwargs = fresh_llm._generate_kwargs(["曹操是谁？"], settings)
    run_generate(fresh_llm.model, dict(kwargs), fast_decode=ON_CPU)
    run_generate(fresh_llm.model, dict(kwargs), fast_decode=ON_CPU.model_copy(update={"sampling_kernel": False}))
    assert len(calls) == 2 * 4


@pytest.mark.parametrize(("rows", "top_k", "module"), [
    (1, 50, "token_top_k"), (16, 128, "token_top_k"), (1, None, "token_sampling"), (1, 129, "token_sampling"),
    (2, None, None), (16, 129, None),
])
def test_sampled_choice_routes_by_top_k_and_rows(rows: int, top_k: int | None, module: str | None,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-k up to 128 takes ``token_top_k`` at any batch; top-p alone or a larger top-k takes the
    radix selects on one row only and PyTorch past it (False, nothing launched), where run 30 timed
    the radix selects slower than PyTorch's sort (16 rows: 448.5 against 373.2 us)."""
    import llm.kernels.token_choice_op as op

    launched: list[str] = []
    monkeypatch.setattr(op, "_launched", lambda name, *args, **kwargs: launched.append(name) or True)
    logits = torch.zeros(rows, 300)
    g = sampled_state(logits, [1], allow_eos=True, penalty=None, temperature=1.0, top_p=0.8, top_k=top_k)
    assert sampled_choice(logits, logits, g.token, g.eos, g.allow_eos, seen=None, penalty=g.penalty,
                          temperature=g.temperature, top_p=g.top_p, top_k=top_k, cur=None) is (module is not None)
    assert launched == ([module] if module else [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("top_k", [50, None])
def test_cuda_kernels_equal_the_reference_and_replay_in_a_cuda_graph(top_k: int | None) -> None:
    """On the GPU, captured in a CUDA graph and replayed on new logits and noise: the reference's
    tokens, at the 6B vocabulary, through ``token_top_k`` (generate's default top-k) and through
    ``token_sampling`` (top-p alone)."""
    vocab = 65024
    logits = (torch.randn(4, vocab) * torch.tensor([[12.0], [3.0], [1.0], [0.3]])).cuda()
    g = sampled_state(logits.cpu(), [5, 7], allow_eos=False, penalty=1.2, temperature=0.8, top_p=0.8, top_k=top_k)
    g = SimpleNamespace(**{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in vars(g).items()})
    static, noise = logits.clone(), torch.empty_like(logits).exponential_()
    assert kernel_tokens(static, noise, g) is not None  # compiles
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch_kernels(static, noise, g)
    for seed in range(3):
        static.copy_(logits[torch.randperm(4)] + torch.randn_like(logits))
        noise.copy_(torch.empty_like(logits).exponential_(generator=torch.Generator("cuda").manual_seed(seed)))
        want = choose_tokens(static, g, noise=noise)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(g.token.view(-1), want), seed


def test_the_kernels_compile_for_sm90() -> None:
    """Every kernel compiles for sm_90 with Triton's own toolchain, no GPU needed (run 28's greedy
    kernel ran under the interpreter and failed Triton's compiler on the GPU)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from llm.kernels import token_sampling as ts

    types = {"logits_ptr": "*fp32", "seen_ptr": "*u8", "penalty_ptr": "*fp32", "eos_ptr": "*i64", "allow_ptr": "*u8",
             "temperature_ptr": "*fp32", "top_p_ptr": "*fp32", "prefix_ptr": "*i32", "kth_ptr": "*i32",
             "where_ptr": "*i32"}
    common = {"BLOCK": ts.BLOCK, "PDL": True}
    levels = len(ts.LEVEL_BITS)
    cases = [(ts._scaled_maxima, {"PENALTY": True, "EOS": 8, **common}, 4),
             (ts._race, {"STAGE": 2 * levels, "LEVELS": levels, "STATE": 2 * levels + 1, "PREV_BITS": 6,
                         "BINS": ts.BINS, "BLOCK_C": 64, **common}, 4)]
    # top-k's first level, its second, top-p's first (after top-k), its second
    for stage, level, counting, prev_counting, shift, bits, prev in ((0, 0, True, False, 24, 7, 0),
                                                                      (1, 1, True, True, 18, 6, 7),
                                                                      (levels, 0, False, True, 24, 7, 6),
                                                                      (levels + 1, 1, False, False, 18, 6, 7)):
        cases.append((ts._select_level, {
            "STAGE": stage, "LEVEL": level, "PREV_LEVEL": levels - 1 if level == 0 else level - 1, "COUNTING": counting,
            "PREV_COUNTING": prev_counting, "READ_KTH": not counting and level > 0, "STATE": 2 * levels + 1,
            "SHIFT": shift, "BITS": bits, "PREV_BITS": prev, "BINS": ts.BINS, "SUB": ts.SUB, "BLOCK_C": 64, **common,
        }, 8))
    from llm.kernels import token_top_k as tk

    for has_topk in {hasattr(triton.language, "topk"), False}:  # tl.topk where this Triton has it, and a sort
        top = {"KEEP": 64, "HAS_TOPK": has_topk, "PDL": True}
        cases.append((tk._chunk_candidates, {"PENALTY": True, "EOS": 8, "BLOCK": 2048, **top}, 4))
        cases.append((tk._sample_candidates, {"CHUNKS_P2": 32, "PENALTY": True, "ADVANCE": True, **top}, 8))
    types.update(cand_ptr="*i64", token_ptr="*i64", cur_ptr="*i64")
    for fn, constexprs, warps in cases:
        signature = {p.name: "constexpr" if p.is_constexpr else types.get(p.name, "*fp32" if p.name.endswith("_ptr")
                                                                           else "i32") for p in fn.params}
        try:
            compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        except Exception as e:  # noqa: BLE001 - Triton's compile errors, or a Triton without its ptxas
            if "CompilationError" in type(e).__name__:
                raise
            pytest.skip(f"cannot compile for sm_90 here: {e}")
        assert compiled.asm["cubin"], fn.__name__
