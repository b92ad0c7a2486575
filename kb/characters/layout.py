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
    # sqrt weights and a wide k: with raw weights the few heavy pairs (刘备-关羽) pull every
    # main character into one knot; a weak tie to the centre keeps isolated persons in view.
    for name in list(g.nodes):
        if g.degree(name) == 0:
            g.add_edge(name, "", weight=0.05)
    for a, b, data in g.edges(data=True):
        data["weight"] = data["weight"] ** 0.5
    pos = nx.spring_layout(g, weight="weight", seed=seed, k=2.5 / max(1, g.number_of_nodes()) ** 0.5, iterations=120)
    pos.pop("", None)
    return {n: (_rank_scale(pos, n, 0), _rank_scale(pos, n, 1)) for n in pos}


def _rank_scale(pos: dict[str, Any], name: str, axis: int) -> float:
    """Blend of min-max and rank position along ``axis``: outliers cannot squeeze the rest."""
    values = sorted(p[axis] for p in pos.values())
    low, high = values[0], values[-1]
    linear = (pos[name][axis] - low) / ((high - low) or 1.0)
    rank = values.index(pos[name][axis]) / max(1, len(values) - 1)
    return 0.5 * linear + 0.5 * rank
