"""The one exception type that carries an HTTP status.

Theory of operation: protocol code (parser, files, handler) never writes a response itself. It
raises :class:`HttpError` with the status the client should get, and the connection, the single
place that catches it, turns it into an error response or, if bytes have already gone out, an
abort. ``close`` says whether the connection can survive: a framing error leaves the byte stream
unusable, so it must close; a 404 does not.
"""

from __future__ import annotations

from http import HTTPStatus


class HttpError(Exception):
    """A request that must be answered with ``status``.

    ``detail`` is a short, human-readable reason that goes in the error body; it must never hold
    a traceback or anything secret. ``close`` forces ``Connection: close`` after the response.
    ``headers`` are extra response headers (for example ``Allow`` on a 405).
    """

    __slots__ = ("close", "detail", "headers", "status")

    def __init__(
        self,
        status: HTTPStatus,
        detail: str = "",
        *,
        close: bool = False,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(f"{status.value}: {detail}")
        self.status = status
        self.detail = detail
        self.close = close
        self.headers = headers


def bad_request(detail: str) -> HttpError:
    """A malformed message: the stream can no longer be trusted, so the connection closes."""
    return HttpError(HTTPStatus.BAD_REQUEST, detail, close=True)
