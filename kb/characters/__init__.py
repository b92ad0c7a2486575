"""Persons and their relations in a knowledge base's novels, found without an LLM.

``character_graph(kb)`` -> ``CharacterGraph`` (``persons`` with ``aliases``, ``relations``
weighted by co-occurrence with chapters and evidence chunks); ``to_dict()`` is the
``ingest characters --json`` shape. Parts are computed per document and cached beside the
KB's versions (``kb.characters.store``); ``render_png`` draws the graph; ``label_relations``
names strong relations with an LLM.
"""

from kb.characters.document import EXTRACTOR_VERSION, DocumentCharacters, extract_document
from kb.characters.graph import CharacterGraph, Person, Relation, build_graph, load_aliases, resolve_aliases
from kb.characters.store import character_graph, document_parts, prune

__all__ = [
    "EXTRACTOR_VERSION",
    "CharacterGraph",
    "DocumentCharacters",
    "Person",
    "Relation",
    "build_graph",
    "character_graph",
    "document_parts",
    "extract_document",
    "load_aliases",
    "prune",
    "resolve_aliases",
]
