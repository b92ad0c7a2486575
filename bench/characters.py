"""Character graph build time on this CPU (target: 三国演义 <= 30 s), cold and from the cache.

    python -m bench.characters            # both novels from ../shared/corpus
    python -m bench.characters --tiny     # first 5 chapters only, to check the script

Each novel goes into a keyword-only KB first (not timed here: that is bench.ingest); then
``kb.characters.character_graph`` is timed cold (jieba tagging, naming patterns, window scan,
cache write; a fresh process has jieba's dictionary to load, reported separately) and warm
(parts read from the per-document cache, merged: what every later call costs).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.common import CORPUS, parser, print_table, write_result


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    import jieba

    from kb import KnowledgeBase, load_text
    from kb.characters import character_graph

    jieba.setLogLevel(60)
    start = time.perf_counter()
    jieba.initialize()
    jieba_load = time.perf_counter() - start
    rows, result = [], {"jieba_dictionary_load_s": jieba_load, "novels": {}}
    for name in ("sanguo.txt", "xiyouji.txt"):
        text = load_text(Path(os.environ.get("GLMKB_TEST_CORPUS", CORPUS)) / name)
        if args.tiny:
            text = text[: text.index("第六回")]
        with tempfile.TemporaryDirectory() as tmp:
            kb = KnowledgeBase(Path(tmp), "novels", create=True, embedding_model="none")
            kb.add_texts({name: text})
            start = time.perf_counter()
            graph = character_graph(kb)
            cold = time.perf_counter() - start
            warm = min(_timed(lambda kb=kb: character_graph(kb)) for _ in range(args.repeat))
            kb.close()
        result["novels"][name] = {
            "chars": len(text), "cold_s": cold, "warm_s": warm,
            "persons": len(graph.persons), "relations": len(graph.relations),
            "top10": [p.name for p in graph.persons[:10]],
        }
        rows.append((name, len(text), cold, warm, len(graph.persons), len(graph.relations)))
    print_table(
        f"character graph (jieba dictionary load {jieba_load:.2f} s, once per process)",
        rows, ("novel", "chars", "cold s", "cached s", "persons", "relations"),
    )
    print(write_result(args.out, "characters", result))


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
