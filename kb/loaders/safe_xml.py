"""XML parts of documents (EPUB, OpenDocument) parsed without entities, DTDs or the network."""

from __future__ import annotations

from collections.abc import Callable

import lxml.etree

from kb.errors import DocumentLoadError


def parse_part(data: bytes, *, damaged: Callable[[str], str]) -> lxml.etree._Element:
    """``data`` parsed with entity expansion, DTD loading and network access off (XML bombs and
    external entities never resolve); a syntax error is a DocumentLoadError whose one line
    ``damaged(reason)`` says."""
    parser = lxml.etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )
    try:
        return lxml.etree.fromstring(data, parser=parser)
    except lxml.etree.XMLSyntaxError as e:
        raise DocumentLoadError(damaged(str(e))) from e
