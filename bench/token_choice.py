"""One decode step's token choice alone, captured in a CUDA graph: PyTorch against the Triton kernels.

    python -m bench.token_choice --out DIR        # GPU machine: ~30 s with the kernels' compile
    python -m bench.token_choice --vocab 151552 --out DIR   # GLM-4's vocabulary
    python -m bench.token_choice --tiny           # check the script on CPU (nothing to time)

Why: ``bench.decode --sampled`` times what a user's default sampling (temperature 0.8, top_p 0.8,
and ``generate``'s top-k 50) costs end to end, where a change of a few microseconds per step is
within the run's spread; this times the choice itself, as the decode graph replays it after the LM
head: greedy, top-p, and top-k 50 + top-p, each as ``sampling.choose_tokens`` (PyTorch) and as
``llm.kernels.token_choice`` / ``token_sampling``, at batch 1 and 16 on a 65,024-token vocabulary.
Each case: one graph of 20 steps, replayed ``--repeat`` times, median us per step.
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace
from typing import Any

import torch

from bench.common import parser, print_table, write_result

VOCAB = 65024
CASES = {"greedy": (False, None, 1.0), "top_p 0.8": (True, None, 0.8), "top_k 50 + top_p 0.8": (True, 50, 0.8)}


def graph_state(rows: int, vocab: int, *, sample: bool, top_k: int | None, top_p: float, device: str) -> Any:
    """The decode graph's buffers the token choice reads and writes (penalty on: the default chat's
    repetition penalty is 1.0, so this is the heavier case)."""
    from llm.fast_decode.sampling import Sampling

    return SimpleNamespace(
        token=torch.zeros((rows, 1), dtype=torch.long, device=device),
        cur=torch.zeros(1, dtype=torch.long, device=device),
        eos=torch.tensor([2, 64795, 64797, 2], device=device) % vocab,  # ChatGLM3's eos ids, 4: a power of two
        allow_eos=torch.tensor(True, device=device),
        seen=torch.zeros((rows, vocab), dtype=torch.bool, device=device), penalty=torch.tensor(1.1, device=device),
        temperature=torch.tensor(0.8, device=device), top_p=torch.tensor(top_p, device=device),
        sampling=Sampling(sample, top_k, True), token_kernel=True, sampling_kernel=True,
    )


def step(logits: torch.Tensor, g: Any, *, kernel: bool) -> None:
    """``decode_graph.take_tokens`` with the kernels on or off."""
    from llm.fast_decode import decode_graph

    g.token_kernel = g.sampling_kernel = kernel
    decode_graph.take_tokens(logits, g, advance=True)


def time_case(rows: int, vocab: int, case: str, *, kernel: bool, repeat: int, device: str) -> float:
    """Median us per step of a captured graph of 20 steps (CPU: one eager step, not timed)."""
    sample, top_k, top_p = CASES[case]
    g = graph_state(rows, vocab, sample=sample, top_k=top_k, top_p=top_p, device=device)
    logits = torch.randn(rows, vocab, device=device) * 3
    step(logits, g, kernel=kernel)  # compile, warm
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(20):
            step(logits, g, kernel=kernel)
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / 20)
    return statistics.median(times)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=VOCAB, help="vocabulary size (GLM-4: 151552)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    vocab = 300 if args.tiny else args.vocab
    rows_list = (1, 2) if args.tiny else (1, 16)
    results: list[dict[str, Any]] = []
    for rows in rows_list:
        for case in CASES:
            r: dict[str, Any] = {"rows": rows, "case": case}
            for kernel in (False, True):
                r["kernel_us" if kernel else "torch_us"] = time_case(rows, vocab, case, kernel=kernel,
                                                                     repeat=args.repeat, device=device)
            results.append(r)
            print(r, flush=True)
    from llm.kernels import token_choice_op

    broken = list(token_choice_op._broken)
    print_table(f"token choice per decode step, vocabulary {vocab} ({device}), us",
                [(r["rows"], r["case"], f"{r['torch_us']:.1f}", f"{r['kernel_us']:.1f}") for r in results],
                ("rows", "case", "PyTorch", "Triton"))
    if broken:
        print(f"the kernels fell back to PyTorch: {broken[0]}")
    name = "token_choice" if vocab == VOCAB or args.tiny else f"token_choice_{vocab}"
    path = write_result(args.out, name, {"vocab": vocab, "results": results, "kernels_fell_back": broken})
    print(f"\n{path}")


if __name__ == "__main__":
    main()
