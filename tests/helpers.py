"""Small helpers shared by the test modules (no fixtures: those live in tests/fixtures/)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``GLMKB_*`` setting (so a developer's own
    configuration cannot leak into a child process), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLMKB_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def served(app: Any, *, port: int | None = None, **options: Any) -> Iterator[str]:
    """The ASGI ``app`` served by uvicorn in a thread on 127.0.0.1 (``port``, else a free one);
    yields the base URL. ``options`` go to ``uvicorn.Config`` (e.g. log_level, lifespan)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "warning", **options}))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    if not wait_until(lambda: server.started or not thread.is_alive(), timeout=60) or not server.started:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def api_server(service: Any, *, port: int | None = None, **options: Any) -> Iterator[str]:
    """glmkb's API for ``service`` (``served``, lifespan off unless ``options`` say otherwise)."""
    from app.api import create_app

    with served(create_app(service), port=port, **{"lifespan": "off", **options}) as url:
        yield url


def http_ok(url: str) -> bool:
    """Whether ``url`` answers 200 within a second (a server that is up)."""
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def spy_batch(monkeypatch: Any, llm: Any) -> list[int]:
    """Record the size of every ``batch`` call on ``llm``'s class (the list fills as calls come)."""
    sizes: list[int] = []
    original = type(llm).batch

    def spy(self: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(inputs))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(type(llm), "batch", spy)
    return sizes


def hold_worker(model: Any) -> threading.Event:
    """Keep the model's worker busy until the returned event is set: requests pile up meanwhile."""
    from llm.streaming import model_worker

    release = threading.Event()
    model_worker(model).submit(lambda: release.wait(30))
    return release


def wait_pending(model: Any, n: int) -> None:
    """Wait until ``n`` requests queue in the model's batch scheduler."""
    from llm.batching import batch_scheduler

    assert wait_until(lambda: len(batch_scheduler(model)._pending) >= n, timeout=30)


def stream_together(llm: Any, questions: list[str]) -> dict[str, str]:
    """Each question streamed on its own thread while the model's worker is held, so all of them
    queue and start as one batch; returns each question's joined answer."""
    release = hold_worker(llm.model)
    out: dict[str, str] = {}
    threads = [threading.Thread(target=lambda q=q: out.__setitem__(q, "".join(llm.stream(q)))) for q in questions]
    for t in threads:
        t.start()
    wait_pending(llm.model, len(questions))
    release.set()
    for t in threads:
        t.join(60)
    return out


def searches_during_builds(kb: Any, search: Callable[[], object], excerpts: dict[str, Any]) -> int:
    """Run ``search`` in a loop on another thread while the same ``kb`` object adds excerpt b,
    removes it and adds c (excerpt a is in it already); re-raise the first failed search, else
    return how many searches ran."""
    errors: list[BaseException] = []
    searches = 0
    stop = threading.Event()

    def search_loop() -> None:
        nonlocal searches
        while not stop.is_set():
            try:
                search()
                searches += 1
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                return

    worker = threading.Thread(target=search_loop)
    worker.start()
    try:
        kb.add_files([excerpts["b"]])
        kb.remove(["sanguo_b.txt"])
        kb.add_files([excerpts["c"]])
    finally:
        stop.set()
        worker.join()
    if errors:
        raise errors[0]
    return searches


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # this process is the interpreter's (see below)


def interpreted_marker() -> Any:
    """``@interpreted`` for a kernel file's ``test_interpreted_*``: they run only in the subprocess
    ``assert_interpreted_tests_pass`` starts."""
    import pytest

    return pytest.mark.skipif(not INTERPRETED or find_spec("triton") is None,
                              reason="runs in test_kernels_under_triton_interpreter's subprocess (TRITON_INTERPRET=1)")


def assert_interpreted_tests_pass(test_file: str, keyword: str = "interpreted", *, workers: int = 1) -> None:
    """Run ``test_file``'s ``test_interpreted_*`` (those ``keyword``, a ``-k`` expression, selects) under
    Triton's interpreter (``TRITON_INTERPRET=1``, read when Triton is imported, hence a subprocess) and
    assert that they all ran and passed, on ``workers`` pytest-xdist workers where it is installed."""
    import pytest

    if find_spec("triton") is None:
        pytest.skip("triton is not installed")
    if not interpreter_indexes_scalars():
        pytest.skip("Triton < 3.7's interpreter cannot index a loop bound under NumPy >= 2.4 "
                    "(triton-lang/triton#9171): the interpreted kernel checks need Triton 3.7 or NumPy < 2.4")
    done = run_under_triton_interpreter("-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-k", keyword,
                                        *interpreter_workers(workers))
    assert done.returncode == 0 and " passed" in done.stdout and "skipped" not in done.stdout, \
        done.stdout[-4000:] + done.stderr[-2000:]


def interpreter_indexes_scalars() -> bool:
    """Whether Triton's interpreter can use a scalar argument as a ``range`` bound here. Triton before
    3.7 converts the argument's one-element array with ``int()``, which NumPy 2.4 made an error: every
    kernel with a runtime loop bound then fails with "only 0-dimensional arrays can be converted to
    Python scalars" (the GPU image's Triton 3.6 with NumPy 2.5; 43 of 71 interpreted checks)."""
    import numpy
    import triton

    major, minor = (int(part) for part in triton.__version__.split(".")[:2])
    if (major, minor) >= (3, 7):
        return True
    try:
        int(numpy.ones(1))
    except TypeError:
        return False
    return True


def interpreter_workers(workers: int) -> list[str]:
    """pytest-xdist options for an interpreted run: the interpreter is single-threaded Python and the
    main pytest process only waits on it, so a second worker uses a 2-core machine's idle core (the
    kernel checks were 25 of a 55-minute CI run, one process each; on two workers the long files
    took 13-37 % less, while files of a few seconds took twice as long: each worker imports torch).
    Work stealing (conftest's default for several workers) matters here: the cases' lengths differ by
    100x (a 7-token vocabulary to the 6B's 65,024)."""
    workers = min(workers, os.cpu_count() or 1)
    if workers < 2 or find_spec("xdist") is None:
        return []
    return ["-n", str(workers)]


def run_under_triton_interpreter(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the repository root with ``TRITON_INTERPRET=1``: Triton reads the switch
    when it is imported, so kernel checks on CPU run in a process of their own."""
    path = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ingest_hits(files: list[Path], question: str, *, root: Path, capsys: Any) -> list[dict[str, Any]]:
    """``ingest build`` of ``files`` into a keyword-only knowledge base under ``root``, then the
    passages ``ingest query --json`` returns for ``question`` (BM25)."""
    import json

    from ingest.cli import main

    kb = ["--kb", "docs", "--kb-root", str(root)]
    assert main(["build", *map(str, files), *kb, "--embedding", "none", "-q"]) == 0
    capsys.readouterr()
    assert main(["query", question, *kb, "--mode", "bm25", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def count_calls(monkeypatch: Any, module: Any, name: str) -> list[int]:
    """A list that grows by one at each call of ``module.name`` (which still runs)."""
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def fast_and_eager(llm_: Any, prompts: list[str], *, options: Any, **kwargs: Any) -> tuple[Any, Any]:
    """The token ids ``generate`` chooses for ``prompts`` (``kwargs``: generate options), then those
    the fast path with ``options`` (a ``FastDecodeOptions``) chooses, on the same model object."""
    from llm.streaming import run_generate

    generate_kwargs = llm_._generate_kwargs(prompts, dict(kwargs))
    eager = run_generate(llm_.model, dict(generate_kwargs))
    fast = run_generate(llm_.model, dict(generate_kwargs), fast_decode=options)
    return eager, fast


def assert_int4_model_on_the_fast_path_equals_generate(model_dir: Path, *, int4_kernel: str, group_size: int) -> None:
    """A bf16 INT4 model on the GPU with ``int4_kernel``'s form: every INT4 layer in that form, the
    captured decode step with fused q/k/v, and greedy tokens those of plain generate. bf16
    rounding of packed attention may flip a near-tie late in a random model's output (as in
    test_perf_fast_decode): the prompt and first two new tokens must match, half of the rest."""
    import torch

    from llm import ChatGLM
    from llm.fast_decode import FUSED_QKV, FastDecodeOptions, fast_decode_state
    from llm.quantization import WeightOnlyInt4Linear
    from llm.streaming import run_generate

    llm_ = ChatGLM.from_model_path(model_dir, device="cuda", dtype="bfloat16", quantization="int4",
                                   quantization_group_size=group_size, int4_kernel=int4_kernel, temperature=0.0,
                                   max_new_tokens=16)
    assert {m.kernel for m in llm_.model.modules() if isinstance(m, WeightOnlyInt4Linear)} == {int4_kernel}
    assert llm_.fast_decode_active and llm_.invoke("曹操是谁？")
    report = llm_.fast_decode_report
    assert report["decode_graph"] is None and report[FUSED_QKV] is None, report
    state = fast_decode_state(llm_.model)
    assert state.graphs and all(g.graph is not None for g in state.graphs.values())
    assert state.fused and state.fused[0].projection.kernel == int4_kernel and state.fused[0].intact()
    kwargs = llm_._generate_kwargs(["曹操是谁？"], {"max_new_tokens": 16, "min_new_tokens": 16})
    eager = run_generate(llm_.model, dict(kwargs))
    fast = run_generate(llm_.model, dict(kwargs), fast_decode=FastDecodeOptions())
    assert torch.equal(eager[:, :-14], fast[:, :-14])  # the prompt and the first new tokens
    assert (eager[:, -16:] == fast[:, -16:]).float().mean().item() > 0.5


def replay_slot_steps(write: Callable[[Any], object], *, start: int, times: int = 3) -> int:
    """Capture ``write(slot)`` (a kernel that writes the decode token at the one-element CUDA tensor
    ``slot``) followed by ``slot += 1`` in a CUDA graph, replay it ``times`` from ``start``; the final
    slot. Shows the slot is read on the GPU at each replay, not baked into the graph."""
    import torch

    from llm.fast_decode import capture_graph, warm_up_on_side_stream

    slot = torch.zeros(1, dtype=torch.long, device="cuda")

    def step() -> None:
        write(slot)
        slot.add_(1)

    with torch.inference_mode():
        warm_up_on_side_stream(step, times=1)
        slot.zero_()
        graph = capture_graph(step)
        slot.fill_(start)
        for _ in range(times):
            graph.replay()
        torch.cuda.synchronize()
    return int(slot)


def libreoffice_convert(sources: Iterable[Path], fmt: str, out: Path) -> None:
    """Convert ``sources`` with LibreOffice (``soffice --headless --convert-to fmt``) into ``out``:
    how the .doc, .ppt and OpenDocument fixtures are remade (CI does not install LibreOffice)."""
    soffice = shutil.which("soffice")
    if soffice is None:
        raise SystemExit("needs LibreOffice (soffice, with Writer, Calc and Impress) on PATH")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([soffice, "--headless", "--convert-to", fmt, "--outdir", str(out), *map(str, sources)], check=True)
