"""The keyword a transformers ``forward`` takes the KV cache by, for the pinned range of versions.

transformers 5.2x renamed ``past_key_values`` to ``cache`` (the old name still works there but
warns, and GLM's forward drops it in 5.40); 5.17, the pin's lower bound, has only
``past_key_values``. A cache passed by the keyword a forward does not name lands in its
``**kwargs`` unused, so every caller that forwards a cache asks here.
"""

from __future__ import annotations

import functools
import inspect


@functools.cache
def cache_kwarg_of(owner: type) -> str:
    """``cache`` or ``past_key_values``: what ``owner.forward`` (a model, decoder or attention
    module class) names its cache parameter."""
    parameters = inspect.signature(owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
