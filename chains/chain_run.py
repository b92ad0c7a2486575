"""Run a chain's event generator as one LangChain chain run.

A UI iterates events (``chains.events``) instead of calling ``invoke``, but callback handlers
(tracing, the progress handler) must still see one chain start, then its end with the same
outputs ``invoke`` returns, or its error: also ``GeneratorExit`` when the consumer stops
iterating, so a Stop in the UI shows up as an ended run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_classic.chains.base import Chain
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
    Callbacks,
)

from chains.events import Event

__all__ = ["astream_chain_run", "stream_chain_run"]

Outputs = Callable[[Sequence[Event]], dict[str, Any]]


def stream_chain_run(
    chain: Chain,
    inputs: dict[str, Any],
    *,
    events: Callable[[CallbackManagerForChainRun], Iterator[Event]],
    outputs: Outputs,
    callbacks: Callbacks,
) -> Iterator[Event]:
    """Yield ``events(run_manager)`` inside one run of ``chain``; ``outputs(all events)`` ends it."""
    manager = CallbackManager.configure(
        callbacks, chain.callbacks, chain.verbose, None, chain.tags, None, chain.metadata
    )
    run_manager = manager.on_chain_start(None, inputs, name=chain.get_name())
    seen: list[Event] = []
    try:
        for event in events(run_manager):
            seen.append(event)
            yield event
    except BaseException as e:
        run_manager.on_chain_error(e)
        raise
    run_manager.on_chain_end(outputs(seen))


async def astream_chain_run(
    chain: Chain,
    inputs: dict[str, Any],
    *,
    events: Callable[[AsyncCallbackManagerForChainRun], AsyncIterator[Event]],
    outputs: Outputs,
    callbacks: Callbacks,
) -> AsyncIterator[Event]:
    """Async twin of ``stream_chain_run``."""
    manager = AsyncCallbackManager.configure(
        callbacks, chain.callbacks, chain.verbose, None, chain.tags, None, chain.metadata
    )
    run_manager = await manager.on_chain_start(None, inputs, name=chain.get_name())
    seen: list[Event] = []
    try:
        async for event in events(run_manager):
            seen.append(event)
            yield event
    except BaseException as e:
        await run_manager.on_chain_error(e)
        raise
    await run_manager.on_chain_end(outputs(seen))
