"""``run.sh --check``: the GPU, the chat model load and the knowledge bases on one screen, so
a server that will not answer is diagnosed before serving (python -m app.bundle.check)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from configs import load_settings
from configs.errors import one_line


def line(label: str, text: str, *, ok: bool = True) -> bool:
    print(f"{'ok ' if ok else 'BAD'} {label:<11} {text}")
    return ok


def check_gpu() -> bool:
    import torch

    if not torch.cuda.is_available():
        return line("gpu", f"none visible (torch {torch.__version__}): the model runs on CPU, slowly; "
                    "check nvidia-smi, the driver and docker --gpus all", ok=True)
    names = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        names.append(f"cuda:{i} {props.name} {props.total_memory / 2**30:.0f} GiB")
    return line("gpu", f"{'; '.join(names)} (torch {torch.__version__}, CUDA {torch.version.cuda})")


def check_model(settings: object) -> bool:
    from llm import ChatGLM

    llm_settings = settings.llm  # type: ignore[attr-defined]
    if llm_settings.backend != "local":
        return line("model", f"served by {llm_settings.base_url} (backend openai); not loaded here")
    if not llm_settings.model_path:
        return line("model", "none configured: answers show the retrieved passages only")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one screen: no "Loading weights" bars
    start = time.perf_counter()
    llm = ChatGLM.from_settings(llm_settings)
    seconds = time.perf_counter() - start
    model = llm.model
    params = sum(p.numel() for p in model.parameters())
    size = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
    device = next(model.parameters()).device
    return line("model", f"{llm_settings.model_path}: {size} parameters on {device}, loaded in {seconds:.1f} s")


def check_kbs(settings: object) -> bool:
    from kb import KnowledgeBase

    root = settings.kb_root  # type: ignore[attr-defined]
    names = KnowledgeBase.list_names(root) if root.is_dir() else []
    if not names:
        return line("kb", f"none under {root}")
    ok = True
    for name in names:
        kb = KnowledgeBase.from_settings(settings, name=name)
        try:
            docs = kb.list_documents()
            # The configured model, not the build machine's path the manifest recorded.
            mode = "keyword-only" if kb.keyword_only else f"embedding {settings.embedding.model}"  # type: ignore[attr-defined]
            line("kb", f"{name}: {len(docs)} documents, {sum(d.chunks for d in docs)} chunks, {mode}, {kb.version}")
        except Exception as e:  # noqa: BLE001 - one line per damaged KB, then the others
            ok = line("kb", f"{name}: {one_line(e)}", ok=False)
        finally:
            kb.close()
    return ok


def main() -> int:
    settings = load_settings()
    results = []
    steps: list[tuple[str, Callable[[], bool]]] = [
        ("gpu", check_gpu),
        ("model", lambda: check_model(settings)),
        ("kb", lambda: check_kbs(settings)),
    ]
    for label, step in steps:
        try:
            results.append(step())
        except Exception as e:  # noqa: BLE001 - the check reports every failure on its line
            results.append(line(label, one_line(e), ok=False))
    print("ready: ./run.sh to serve" if all(results) else "not ready: fix the BAD lines above")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
