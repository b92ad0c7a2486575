"""Write ``.benchdata/`` (git-ignored) for runs on the GPU machine, where ../shared/corpus is absent.

    python -m bench.prepare

- ``sanguo_chunks.json``: 三国演义 chunked exactly as ``ingest build`` does (``kb.split_document``, 400/80);
- ``tokenizer.model``: a small ChatGLM-shaped sentencepiece model (for the original-format load test).

Never commit ``.benchdata/``: it holds corpus text.
"""

from __future__ import annotations

import json

from bench.common import CORPUS, DATA


def main() -> None:
    from kb import load_text, split_document
    from tests.fixtures.chatglm_legacy import train_sentencepiece

    DATA.mkdir(exist_ok=True)
    text = load_text(CORPUS / "sanguo.txt")
    chunks = split_document(text, chunk_size=400, chunk_overlap=80)
    payload = {"source": "sanguo.txt", "chunk_size": 400, "chunk_overlap": 80, "chunks": [c.text for c in chunks]}
    (DATA / "sanguo_chunks.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    if not (DATA / "tokenizer.model").is_file():
        train_sentencepiece(CORPUS / "sanguo.txt", DATA / "tokenizer.model")
    print(f"{len(chunks)} chunks, {sum(len(c.text) for c in chunks)} characters -> {DATA}")


if __name__ == "__main__":
    main()
