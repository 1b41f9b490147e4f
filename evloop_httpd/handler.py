"""Request semantics: what a parsed request means for the files under the root.

Theory of operation: :meth:`Handler.begin` is called once per request head and returns either
a finished :class:`Response` plan or, for a PUT that will be accepted, an :class:`Upload` to
stream the body into; :meth:`Handler.finish_upload` then produces the PUT's response. Every
refusal is an :class:`HttpError` raised from here and answered by the connection. The handler
holds no per-connection state and never touches a socket, so its tests need only a directory.

Method policy (RFC 9110 §9): GET, HEAD, OPTIONS and PUT are served (PUT unless
``--read-only``). The other methods RFC 9110 defines are known but not allowed here: 405 with
``Allow``. Any other token is a method we do not implement: 501.
"""

from __future__ import annotations

import os
import stat
from http import HTTPStatus
from urllib.parse import quote

from .config import Config
from .errors import HttpError
from .files import (
    check_hidden,
    content_type,
    decode_segments,
    inside,
    open_regular,
    os_error_to_http,
    resolve,
    strong_etag,
)
from .parser import Request
from .responses import Response, http_date, text_response
from .upload import Upload

_GET, _HEAD, _PUT, _OPTIONS = b"GET", b"HEAD", b"PUT", b"OPTIONS"
_KNOWN_NOT_ALLOWED = frozenset({b"POST", b"DELETE", b"PATCH", b"TRACE", b"CONNECT"})
_INDEX = "index.html"


class Handler:
    """Turns requests into response plans for one root directory."""

    __slots__ = ("allow", "config", "root_real")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root_real = os.path.realpath(config.root)
        methods = [_GET, _HEAD, _OPTIONS] + ([] if config.read_only else [_PUT])
        self.allow = b", ".join(methods)

    def begin(self, req: Request, wall: float) -> Response | Upload:
        """Start answering ``req``: a complete plan, or an upload awaiting its body.

        ``wall`` is the wall-clock time the Date header shows (Last-Modified may not be later).
        """
        if req.expect is not None and req.expect != b"100-continue":
            raise HttpError(HTTPStatus.EXPECTATION_FAILED, "only 100-continue is supported")
        method = req.method
        if method in (_GET, _HEAD):
            return self._get(req, wall)
        if method == _PUT and not self.config.read_only:
            return self._begin_put(req)
        if method == _OPTIONS:
            resp = Response(HTTPStatus.OK, [(b"Allow", self.allow), (b"Content-Length", b"0")])
            return resp
        if method == _PUT or method in _KNOWN_NOT_ALLOWED:
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{method.decode('ascii')} is not allowed here",
                headers=((b"Allow", self.allow),),
            )
        raise HttpError(HTTPStatus.NOT_IMPLEMENTED, "unknown method")

    # GET and HEAD

    def _get(self, req: Request, wall: float) -> Response:
        head_only = req.method == _HEAD
        cfg = self.config
        found = resolve(
            self.root_real, req.path, dotfiles=cfg.dotfiles, follow_symlinks=cfg.follow_symlinks
        )
        real = found.real
        try:
            st = os.stat(real)
        except OSError as exc:
            raise os_error_to_http(exc) from None
        if stat.S_ISDIR(st.st_mode):
            if not found.trailing_slash and found.segments:
                return self._redirect_to_dir(found.segments, req.query, head_only)
            real = os.path.realpath(os.path.join(real, _INDEX))
            if not cfg.follow_symlinks and not inside(self.root_real, real):
                raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
        elif found.trailing_slash:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
        fd, st = open_regular(real)
        headers = [
            (b"Content-Type", content_type(real)),
            (b"Content-Length", b"%d" % st.st_size),
            (b"Last-Modified", http_date(min(st.st_mtime, wall))),
            (b"ETag", strong_etag(st)),
        ]
        if head_only:
            os.close(fd)
            return Response(HTTPStatus.OK, headers)
        return Response(HTTPStatus.OK, headers, file_fd=fd, spans=[(b"", 0, st.st_size)])

    def _redirect_to_dir(
        self, segments: tuple[str, ...], query: bytes | None, head_only: bool
    ) -> Response:
        # Built from the decoded segments, re-encoded: never starts with "//", so it can only
        # point at this site, whatever the client sent.
        location = "/" + "/".join(quote(s, safe="") for s in segments) + "/"
        if query is not None:
            location += "?" + query.decode("ascii")
        resp = text_response(HTTPStatus.MOVED_PERMANENTLY, f"see {location}\n", head_only=head_only)
        resp.headers.append((b"Location", location.encode("ascii")))
        return resp

    # PUT

    def _begin_put(self, req: Request) -> Upload:
        if not req.chunked and req.get(b"content-length") is None:
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "PUT needs Content-Length or chunked")
        segments, trailing = decode_segments(req.path)
        if not segments or trailing:
            raise HttpError(HTTPStatus.CONFLICT, "cannot PUT to a directory", close=True)
        try:
            check_hidden(segments, self.config.dotfiles)
        except HttpError:
            raise HttpError(
                HTTPStatus.FORBIDDEN, "hidden names cannot be written", close=True
            ) from None
        # Symlinks are never followed for writing, whatever --follow-symlinks says.
        parent = os.path.realpath(os.path.join(self.root_real, *segments[:-1]))
        if not inside(self.root_real, parent):
            raise HttpError(HTTPStatus.FORBIDDEN, "outside the served folder", close=True)
        if not os.path.isdir(parent):
            raise HttpError(HTTPStatus.CONFLICT, "the parent folder does not exist", close=True)
        target = os.path.join(parent, segments[-1])
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise os_error_to_http(exc) from None
        else:
            if stat.S_ISDIR(st.st_mode):
                raise HttpError(HTTPStatus.CONFLICT, "the target is a directory", close=True)
            if not stat.S_ISREG(st.st_mode):
                raise HttpError(
                    HTTPStatus.FORBIDDEN, "the target is not a regular file", close=True
                )
        return Upload(parent, target, fsync=self.config.fsync)

    def finish_upload(self, upload: Upload, req: Request) -> Response:
        created, etag = upload.commit()
        if created:
            resp = text_response(HTTPStatus.CREATED, "201 Created\n")
            resp.headers.append((b"Location", req.path))
        else:
            resp = Response(HTTPStatus.NO_CONTENT)
        resp.headers.append((b"ETag", etag))
        return resp
