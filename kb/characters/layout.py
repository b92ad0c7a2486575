"""Node positions for drawing a character graph (PNG export and the web tab's SVG)."""

from __future__ import annotations

from typing import Any

__all__ = ["layout"]


def layout(graph: Any, *, seed: int = 7) -> dict[str, tuple[float, float]]:
    """Positions in [0, 1]² from a force-directed layout weighted by co-occurrence (networkx)."""
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(p.name for p in graph.persons)
    top = max((r.weight for r in graph.relations), default=1)
    for r in graph.relations:
        g.add_edge(r.a, r.b, weight=r.weight / top)
    if not g.number_of_nodes():
        return {}
    pos = nx.spring_layout(g, weight="weight", seed=seed, k=1.2 / max(1, g.number_of_nodes()) ** 0.5, iterations=80)
    xs = [x for x, _ in pos.values()]
    ys = [y for _, y in pos.values()]
    span_x = (max(xs) - min(xs)) or 1.0
    span_y = (max(ys) - min(ys)) or 1.0
    return {n: ((x - min(xs)) / span_x, (y - min(ys)) / span_y) for n, (x, y) in pos.items()}
