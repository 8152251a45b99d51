"""Bounds on what a client may send before the app sees a request: header bytes, and time to send them.

uvicorn's default parser (httptools) takes request headers of any size, buffering them in memory: one 64 MB
header was accepted, and eight connections each holding an unfinished one grew the workers by half a gigabyte.
Nor does anything bound how long a client may take to send its headers (slowloris). This protocol is uvicorn's
own, with both bounds: past ``max_header_bytes`` the client gets 431, past ``header_timeout_seconds`` 408, and the
connection is closed either way. (uvicorn's h11 parser is bounded by ``h11_max_incomplete_event_size``, which
`agentctl serve` sets to the same number.)
"""

from __future__ import annotations

import asyncio
import json
import uuid
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server.errors import PROBLEM_MEDIA_TYPE


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, max_header_bytes: int, header_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_header_bytes = max_header_bytes
        self._header_timeout_seconds = header_timeout_seconds
        self._awaiting_headers = True  # a request's head is being received (or the next one's may start)
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._head_seen = False  # a head was completed (or a message ended) while parsing the current read

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self._header_timeout_seconds, self._headers_too_slow)
        self._head_seen = False
        super().data_received(data)
        # Counted after parsing, and only reads that were head from end to end: a read that completes a head (or
        # ends a body) may carry a large body too, which is not ours to refuse here. What stays buffered is at most
        # the limit plus one read.
        if self._awaiting_headers and not self._head_seen and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self._max_header_bytes:
                self._refuse(
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"the request line and headers may take at most {self._max_header_bytes} bytes",
                )

    def on_headers_complete(self) -> None:
        self._head_received()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_seen = True
        self._awaiting_headers = True  # a kept-alive connection's next request

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_received()
        super().connection_lost(exc)

    def _head_received(self) -> None:
        self._head_seen = True
        self._awaiting_headers = False
        self._header_bytes = 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request line and headers must arrive within {self._header_timeout_seconds:g} s",
            )

    def _refuse(self, status: HTTPStatus, detail: str) -> None:
        """The one problem shape, written by the protocol itself: the app never saw this request."""
        self._head_received()
        request_id = uuid.uuid4().hex
        slug = "-".join(status.phrase.lower().split())
        body = json.dumps(
            {
                "type": f"urn:agentctl:problem:{slug}",
                "title": status.phrase,
                "status": int(status),
                "detail": detail,
                "request_id": request_id,
            }
        ).encode()
        head = (
            f"HTTP/1.1 {int(status)} {status.phrase}\r\n"
            f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\n"
            f"x-request-id: {request_id}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        self.logger.warning("refused a request from %s: %s", self.client, detail)
        self.transport.write(head + body)
        self.transport.close()
