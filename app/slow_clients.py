"""uvicorn's HTTP/1.1 protocol with a deadline for a request's headers.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for a
new connection's first request or for headers that trickle in a byte at a time (issue 20
#16: 300 trickling connections were held for 60 s, each a socket and a task). Here a
connection whose request headers are not complete within ``HEADER_TIMEOUT_S`` is closed, and so
is a kept-alive one whose next request's headers are not complete within ``HEADER_TIMEOUT_S`` of
the last response (uvicorn cancels its keep-alive timer at the first byte of that request).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HEADER_TIMEOUT_S", "HeaderTimeoutH11Protocol"]

HEADER_TIMEOUT_S = 10.0


class HeaderTimeoutH11Protocol(H11Protocol):
    """``H11Protocol`` that closes a connection whose next request's headers take too long."""

    header_timeout_s: float = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: Any = None
        self._arm_header_deadline()

    def _arm_header_deadline(self) -> None:
        """Close the connection unless a request newer than the current one arrives in time."""
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_overdue, self.cycle)

    def _headers_overdue(self, last_cycle: Any) -> None:
        if self.cycle is last_cycle and not self.transport.is_closing():  # no complete new request yet
            self.transport.close()

    def on_response_complete(self) -> None:
        """Re-arm the deadline for a kept-alive connection's next request (before the parent
        starts any pipelined one, which then counts as arrived)."""
        if not self.transport.is_closing():
            self._arm_header_deadline()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline.cancel()
        super().connection_lost(exc)


def protocol_with_timeout(seconds: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class with ``seconds`` as its header deadline (uvicorn takes a class)."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": seconds})
