"""Request semantics: what a parsed request means for the files under the root.

Theory of operation: :meth:`Handler.begin` is called once per request head and returns either
a finished :class:`Response` plan or, for a PUT that will be accepted, an :class:`Upload` to
stream the body into (for a POST to a folder, a :class:`FormUpload`); :meth:`Handler.finish_upload`
then produces the response. Every
refusal is an :class:`HttpError` raised from here and answered by the connection. The handler
holds no per-connection state and never touches a socket, so its tests need only a directory.

Method policy (RFC 9110 §9): GET, HEAD, OPTIONS, PUT and POST are served (PUT and POST
unless ``--read-only``; POST only to a folder, as a multipart/form-data upload), DELETE with
``--allow-delete``. The other methods RFC 9110 defines are known
but not allowed here: 405 with ``Allow``. Any other token is a method we do not implement: 501.

A file GET goes: resolve the path (404/403 first), pick the variant (a precompressed sidecar
when Accept-Encoding allows one), then the preconditions of RFC 9110 §13.2.2 on that variant's
validators (:mod:`conditional`), then Range and If-Range (:mod:`ranges`). Preconditions are
evaluated only once the response would otherwise be a 2xx, so a missing file stays a 404.
PUT and DELETE evaluate theirs before the body is read or anything is removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import time
from http import HTTPStatus
from urllib.parse import quote

from . import listing
from .conditional import Outcome, evaluate, if_range_allows
from .config import Config
from .errors import HttpError
from .files import (
    Found,
    check_hidden,
    content_type,
    decode_segments,
    last_modified,
    locate,
    open_folder,
    open_listable,
    open_regular,
    os_error_to_http,
    sidecar,
    strong_etag,
    under_root,
)
from .form_upload import FormUpload
from .listing_assets import HEADERS as LISTING_HEADERS
from .multipart import boundary_from_content_type
from .negotiate import SIDECARS, choose_coding, wants_json
from .parser import Request
from .ranges import content_range, multipart_spans, plan_ranges, unsatisfied_range
from .responses import Response, http_date, text_response
from .upload import Upload, lstat_in
from .zipstream import ZipStream

_GET, _HEAD, _PUT, _OPTIONS, _DELETE = b"GET", b"HEAD", b"PUT", b"OPTIONS", b"DELETE"
_POST = b"POST"
_KNOWN_NOT_ALLOWED = frozenset({b"POST", b"DELETE", b"PATCH", b"TRACE", b"CONNECT"})
_INDEX = "index.html"
# Says why, so that whoever runs the server sees at once what to change.
_NO_INDEX = "this folder has no index.html, and listings are off (the server's --listing)"
_CONDITIONS = (b"if-match", b"if-none-match", b"if-unmodified-since")


def attachment(filename: str) -> bytes:
    """Content-Disposition for a download named ``filename`` (RFC 6266): an ASCII fallback
    with anything outside plain printable ASCII (and quote, backslash, percent) as ``_``, and
    the exact name in ``filename*`` (RFC 8187), percent-encoded."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename)
    exact = quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}".encode("ascii")


def _precondition_failed() -> HttpError:
    return HttpError(HTTPStatus.PRECONDITION_FAILED, "precondition failed")


class Handler:
    """Turns requests into response plans for one root directory."""

    __slots__ = ("allow", "allow_files", "can_write", "config", "listings", "root_real")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root_real = os.path.realpath(config.root)
        self.listings = listing.ListingCache()
        methods = [_GET, _HEAD, _OPTIONS]
        if not config.read_only:
            methods.append(_PUT)
            if config.allow_delete:
                methods.append(_DELETE)
        # POST (a form upload) applies to folders only: Allow names it for a folder's URL, not
        # for a file's, a missing name's or "*" (OPTIONS *: what every resource allows).
        self.allow_files = b", ".join(methods)
        if not config.read_only:
            methods.append(_POST)
        self.allow = b", ".join(methods)
        # Whether a listing offers the upload form. The handler does not know who asks: with
        # --auth-scope write (the default) a GET is admitted without looking at credentials,
        # and a cached page is shared by everyone. So the form shows whenever some requester
        # may write (not --read-only, and not the public-without-accounts case that auth.Gate
        # refuses with 403); with accounts, submitting it without credentials gets the 401
        # challenge and the browser asks for them.
        self.can_write = not config.read_only and not (
            config.public and config.auth_file is None and not config.allow_anonymous_writes
        )

    def begin(self, req: Request, wall: float) -> Response | Upload | FormUpload:
        """Start answering ``req``: a complete plan, or an upload awaiting its body.

        ``wall`` is the wall-clock time the Date header shows (Last-Modified may not be later).
        """
        if req.expect is not None and req.expect != b"100-continue":
            raise HttpError(HTTPStatus.EXPECTATION_FAILED, "only 100-continue is supported")
        method = req.method
        if method in (_GET, _HEAD):
            return self._get(req, wall)
        if method == _PUT and not self.config.read_only:
            return self._begin_put(req, wall)
        if method == _POST and not self.config.read_only:
            return self._begin_post(req)
        if method == _DELETE and self.config.allow_delete and not self.config.read_only:
            return self._delete(req, wall)
        if method == _OPTIONS:
            allow = self._allow(req)
            return Response(HTTPStatus.OK, [(b"Allow", allow), (b"Content-Length", b"0")])
        if method == _PUT or method in _KNOWN_NOT_ALLOWED:
            raise HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{method.decode('ascii')} is not allowed here",
                headers=((b"Allow", self._allow(req)),),
            )
        raise HttpError(HTTPStatus.NOT_IMPLEMENTED, "unknown method")

    def _allow(self, req: Request) -> bytes:
        """The Allow value for the request's target (see ``allow_files``). A ``stat``: only
        OPTIONS and 405 answers pay it."""
        if self.allow == self.allow_files or not req.path.startswith(b"/"):
            return self.allow_files
        try:
            segments, _ = decode_segments(req.path)
        except HttpError:
            return self.allow_files
        is_folder = os.path.isdir(under_root(self.root_real, segments))
        return self.allow if is_folder else self.allow_files

    # GET and HEAD

    def _get(self, req: Request, wall: float) -> Response:
        head_only = req.method == _HEAD
        cfg = self.config
        segments, trailing = decode_segments(req.path)
        check_hidden(segments, cfg.dotfiles)
        # From here on, every name is held by a descriptor checked to be inside the root
        # (files.locate): what is served or listed is what was checked, whatever is swapped.
        found = locate(
            self.root_real,
            under_root(self.root_real, segments),
            follow_symlinks=cfg.follow_symlinks,
        )
        try:
            if stat.S_ISDIR(found.st.st_mode):
                if not trailing and segments:
                    return self._redirect_to_dir(segments, req.query, head_only)
                index = os.path.join(found.real, _INDEX)
                if not os.path.lexists(index):
                    if cfg.listing:
                        if req.query and listing.parse_view(req.query).download_zip:
                            return self._zip(req, found, segments)
                        return self._listing(req, found, segments, head_only)
                    raise HttpError(HTTPStatus.NOT_FOUND, _NO_INDEX)
                file = locate(self.root_real, index, follow_symlinks=cfg.follow_symlinks)
                os.close(found.fd)
                found = file
            elif trailing:
                raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
            fd, st = open_regular(found)
        finally:
            os.close(found.fd)
        fd, st, coding, vary = self._pick_variant(req, found.real, fd, st)
        sent = False
        try:
            resp = self._serve_file(req, found.real, fd, st, coding, vary, int(wall), head_only)
            sent = resp.file_fd >= 0
            return resp
        finally:
            if not sent:  # a 304, a HEAD, or a refusal: the connection will not close it
                os.close(fd)

    def _pick_variant(
        self, req: Request, real: str, fd: int, st: os.stat_result
    ) -> tuple[int, os.stat_result, bytes, list[tuple[bytes, bytes]]]:
        """Swap the open original for a precompressed sidecar when the client accepts one.

        Returns the descriptor to serve (the other one is closed), its stat, the content coding
        (``b""`` for identity) and the Vary header to send.
        """
        cfg = self.config
        if not cfg.precompressed:
            return fd, st, b"", []
        found = {}
        try:
            for c, suffix in SIDECARS:
                side = sidecar(
                    self.root_real, real, suffix, st, follow_symlinks=cfg.follow_symlinks
                )
                if side is not None:
                    found[c] = side
            if not found:
                return fd, st, b"", []
            # Every variant says it depends on Accept-Encoding, the identity one included, or a
            # cache could hand the identity bytes to a client that asked for br, or the reverse.
            vary = [(b"Vary", b"Accept-Encoding")]
            chosen = choose_coding(req.get(b"accept-encoding"), list(found))
            if chosen is None:
                return fd, st, b"", vary
            try:
                side_fd, side_st = open_regular(found[chosen])
            except HttpError:
                return fd, st, b"", vary  # unreadable: the original will do
            os.close(fd)
            return side_fd, side_st, chosen, vary
        finally:
            for side in found.values():
                os.close(side.fd)

    def _serve_file(
        self,
        req: Request,
        real: str,
        fd: int,
        st: os.stat_result,
        coding: bytes,
        vary: list[tuple[bytes, bytes]],
        wall: int,
        head_only: bool,
    ) -> Response:
        """The 200, 206 or 304 for an open file (or 412, 416 raised). Never closes ``fd``."""
        etag = strong_etag(st, coding)
        modified = last_modified(st, wall)
        validators = [(b"ETag", etag)]
        if modified is not None:
            validators.append((b"Last-Modified", http_date(modified)))
        outcome = evaluate(req.method, req.get, etag, modified)
        if outcome is Outcome.PRECONDITION_FAILED:
            raise _precondition_failed()
        if outcome is Outcome.NOT_MODIFIED:
            # RFC 9110 §15.4.5: the validators and Vary a 200 would carry, and no content.
            return Response(HTTPStatus.NOT_MODIFIED, validators + vary)
        ctype = content_type(real)  # the original's type, whatever the coding
        headers = [(b"Content-Type", ctype), *validators, (b"Accept-Ranges", b"bytes"), *vary]
        if coding:
            headers.append((b"Content-Encoding", coding))
        size = st.st_size
        # RFC 9110 §14.2: Range is for GET only; HEAD gets what a plain GET would.
        ranges = None
        range_value = req.get(b"range") if req.method == _GET else None
        if range_value is not None:
            if_range = req.get(b"if-range")
            # Without a Last-Modified, a date in If-Range can never match (0 < 0 is false).
            if if_range is None or if_range_allows(
                if_range, etag, modified or 0, wall if modified is not None else 0
            ):
                ranges = plan_ranges(range_value, size)
        if ranges == []:
            raise HttpError(
                HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                "range not satisfiable",
                headers=((b"Content-Range", unsatisfied_range(size)),),
            )
        if ranges is None:
            headers.append((b"Content-Length", b"%d" % size))
            if head_only:
                return Response(HTTPStatus.OK, headers)
            return Response(HTTPStatus.OK, headers, file_fd=fd, spans=[(b"", 0, size)])
        if len(ranges) == 1:
            first, last = ranges[0]
            headers.append((b"Content-Range", content_range(first, last, size)))
            headers.append((b"Content-Length", b"%d" % (last - first + 1)))
            return Response(
                HTTPStatus.PARTIAL_CONTENT,
                headers,
                file_fd=fd,
                spans=[(b"", first, last - first + 1)],
            )
        boundary = secrets.token_hex(12).encode("ascii")
        spans, trailer, length = multipart_spans(ranges, size, ctype, boundary)
        headers[0] = (b"Content-Type", b"multipart/byteranges; boundary=" + boundary)
        headers.append((b"Content-Length", b"%d" % length))
        return Response(
            HTTPStatus.PARTIAL_CONTENT, headers, file_fd=fd, spans=spans, trailer=trailer
        )

    def _listing(
        self, req: Request, folder: Found, segments: tuple[str, ...], head_only: bool
    ) -> Response:
        url_path = "/" + "".join(s + "/" for s in segments)
        is_json = wants_json(req.get(b"accept"))
        view = listing.parse_view(req.query)
        key = listing.page_key(folder.st, is_json, url_path, view, self.can_write)
        now = time.monotonic()
        page = self.listings.get(key, now)
        if page is None:
            page = self._build_listing(folder, url_path, is_json, view, now)
            self.listings.put(key, page)
        vary = (b"Vary", b"Accept")
        outcome = evaluate(req.method, req.get, page.etag, None)
        if outcome is Outcome.PRECONDITION_FAILED:
            raise _precondition_failed()
        if outcome is Outcome.NOT_MODIFIED:
            return Response(HTTPStatus.NOT_MODIFIED, [(b"ETag", page.etag), vary])
        headers = [
            (b"Content-Type", page.ctype),
            (b"Content-Length", b"%d" % len(page.body)),
            (b"ETag", page.etag),
            vary,
            *LISTING_HEADERS,
        ]
        return Response(HTTPStatus.OK, headers, b"" if head_only else page.body)

    def _zip(self, req: Request, folder: Found, segments: tuple[str, ...]) -> Response:
        """The folder's tree as a ZIP (``?download=zip``), where its listing would be shown.

        Tied to ``--listing``: the archive shows what the listing (and the listings below it)
        would, and with the listing off, or where an index.html stands in for it, the query is
        ignored as other unknown ones are. The plan carries the stream; the connection runs its
        check before the head (PREPARING) and pulls the body (see :mod:`connection`).
        """
        cfg = self.config
        name = segments[-1] if segments else os.path.basename(self.root_real) or "download"
        try:
            stream = ZipStream(
                folder.fd,
                folder.real,
                self.root_real,
                dotfiles=cfg.dotfiles,
                follow_symlinks=cfg.follow_symlinks,
                prefix=name + "/",
            )
        except OSError as exc:
            raise os_error_to_http(exc) from None
        # HTTP/1.0 has no chunked coding: the body ends with the connection (RFC 9112 §6.3).
        chunked = req.http_version != b"1.0"
        headers = [
            (b"Content-Type", b"application/zip"),
            (b"Content-Disposition", attachment(name + ".zip")),
        ]
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        return Response(HTTPStatus.OK, headers, producer=stream, chunked=chunked, close=not chunked)

    def _build_listing(
        self, folder: Found, url_path: str, is_json: bool, view: listing.View, now: float
    ) -> listing.Page:
        cfg = self.config
        key = listing.folder_key(folder.st)
        scanned = self.listings.get_scan(key, now)
        if scanned is None:
            list_fd = open_listable(folder)
            try:
                entries, truncated = listing.scan(
                    list_fd,
                    folder.real,
                    self.root_real,
                    dotfiles=cfg.dotfiles,
                    follow_symlinks=cfg.follow_symlinks,
                )
            except OSError as exc:
                raise os_error_to_http(exc) from None
            finally:
                os.close(list_fd)
            scanned = listing.Scan(entries, truncated, now)
            self.listings.put_scan(key, scanned)
        entries, truncated = scanned.entries, scanned.truncated
        if is_json:
            ctype = listing.JSON_TYPE
            body = listing.render_json(url_path, entries, truncated, view=view)
        else:
            ctype = listing.HTML_TYPE
            body = listing.render_html(
                url_path, entries, truncated, view=view, can_write=self.can_write
            )
        # A listing has no file to take validators from; a hash of its bytes is a strong ETag
        # (the two formats differ, so they never share one) and lets browsers revalidate. It
        # is computed once per build: a cached page carries it.
        etag = b'"l-%s"' % hashlib.blake2b(body, digest_size=12).hexdigest().encode("ascii")
        return listing.Page(ctype, body, etag, scanned.built)

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

    def _begin_put(self, req: Request, wall: float) -> Upload:
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
        # Symlinks are never followed out of the root for writing, whatever --follow-symlinks
        # says. From here on the folder is a checked descriptor, not a path (see upload.py).
        folder_fd = open_folder(self.root_real, segments[:-1])
        try:
            self._check_put_preconditions(req, lstat_in(folder_fd, segments[-1]), wall)
        except BaseException:
            os.close(folder_fd)
            raise
        return Upload(folder_fd, segments[-1], fsync=self.config.fsync)

    def _check_put_preconditions(
        self, req: Request, st: os.stat_result | None, wall: float
    ) -> None:
        """412 unless the conditions hold for the target whose ``lstat`` is ``st`` (None: absent,
        which is fine)."""
        if st is None:
            etag = modified = None
        else:
            if stat.S_ISDIR(st.st_mode):
                raise HttpError(HTTPStatus.CONFLICT, "the target is a directory", close=True)
            if not stat.S_ISREG(st.st_mode):
                raise HttpError(
                    HTTPStatus.FORBIDDEN, "the target is not a regular file", close=True
                )
            etag, modified = strong_etag(st), last_modified(st, wall)
        # Answered before the body is read; the connection then closes, since the unread
        # body would otherwise be taken for the next request.
        if evaluate(_PUT, req.get, etag, modified) is Outcome.PRECONDITION_FAILED:
            raise _precondition_failed()

    # POST: a form upload into a folder (see form_upload.py)

    def _begin_post(self, req: Request) -> FormUpload:
        # Refusals before the body is read do not force a close: the connection closes anyway
        # when a body was announced and is left unread, and keeps a bodiless request's.
        segments, _ = decode_segments(req.path)
        try:
            check_hidden(segments, self.config.dotfiles)
        except HttpError:
            raise HttpError(HTTPStatus.FORBIDDEN, "hidden names cannot be written") from None
        try:
            folder_fd = open_folder(self.root_real, segments)
        except HttpError as exc:
            if exc.status != HTTPStatus.CONFLICT:
                raise
            # open_folder's 409 means "no such folder": a file there is not a place to post
            # to (405, its Allow without POST), nothing there is a 404.
            if os.path.lexists(under_root(self.root_real, segments)):
                raise HttpError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    "POST uploads go to a folder's URL",
                    headers=((b"Allow", self.allow_files),),
                ) from None
            raise HttpError(HTTPStatus.NOT_FOUND, "no such folder") from None
        try:
            if not req.chunked and req.get(b"content-length") is None:
                raise HttpError(HTTPStatus.LENGTH_REQUIRED, "POST needs Content-Length or chunked")
            boundary = boundary_from_content_type(req.get(b"content-type"))
        except BaseException:
            os.close(folder_fd)
            raise
        # The folder's canonical URL, re-encoded from the decoded segments (never "//...").
        location = "/" + "".join(quote(s, safe="") + "/" for s in segments)
        return FormUpload(
            folder_fd,
            boundary,
            location.encode("ascii"),
            fsync=self.config.fsync,
            dotfiles=self.config.dotfiles,
            json_answer=wants_json(req.get(b"accept")),
        )

    def finish_upload(self, upload: Upload | FormUpload, req: Request) -> Response:
        if isinstance(upload, FormUpload):
            return upload.finish()
        if any(req.get(name) is not None for name in _CONDITIONS):
            # Another PUT or DELETE may have finished while this body arrived: check again
            # just before the rename, so If-Match really prevents a lost update.
            try:
                self._check_put_preconditions(req, upload.target_stat(), time.time())
            except HttpError:
                upload.abort()
                raise
        created, etag = upload.commit()
        if created:
            resp = text_response(HTTPStatus.CREATED, "201 Created\n")
            resp.headers.append((b"Location", req.path))
        else:
            resp = Response(HTTPStatus.NO_CONTENT)
        resp.headers.append((b"ETag", etag))
        return resp

    # DELETE

    def _delete(self, req: Request, wall: float) -> Response:
        segments, trailing = decode_segments(req.path)
        if not segments:
            raise HttpError(HTTPStatus.FORBIDDEN, "the served folder cannot be deleted")
        try:
            check_hidden(segments, self.config.dotfiles)
        except HttpError:
            raise HttpError(HTTPStatus.FORBIDDEN, "hidden names cannot be deleted") from None
        # As for PUT, symlinks are never followed out of the root to find what to delete, and
        # the name is removed relative to the descriptor of the folder that was checked: a
        # folder swapped for a symlink after the check changes nothing.
        parent = locate(
            self.root_real,
            under_root(self.root_real, segments[:-1]),
            follow_symlinks=False,
            outside=HTTPStatus.FORBIDDEN,
        )
        try:
            if not stat.S_ISDIR(parent.st.st_mode):
                raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
            self._delete_in(req, parent.fd, segments[-1], trailing, wall)
        finally:
            os.close(parent.fd)
        return Response(HTTPStatus.NO_CONTENT)

    def _delete_in(
        self, req: Request, folder_fd: int, name: str, trailing: bool, wall: float
    ) -> None:
        try:
            st = os.lstat(name, dir_fd=folder_fd)
        except OSError as exc:
            raise os_error_to_http(exc) from None
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not stat.S_ISREG(st.st_mode):
            raise HttpError(HTTPStatus.FORBIDDEN, "only files and empty folders can be deleted")
        if trailing and not is_dir:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such file")
        etag, modified = strong_etag(st), last_modified(st, wall)
        if evaluate(_DELETE, req.get, etag, modified) is Outcome.PRECONDITION_FAILED:
            raise _precondition_failed()
        try:
            if is_dir:
                os.rmdir(name, dir_fd=folder_fd)
            else:
                os.unlink(name, dir_fd=folder_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise HttpError(HTTPStatus.CONFLICT, "the folder is not empty") from None
            # The name was swapped for a folder after the lstat, or is a mount point: a state
            # the client can look at and retry, not a server fault.
            if exc.errno in (errno.EISDIR, errno.EBUSY):
                raise HttpError(HTTPStatus.CONFLICT, "the target changed or is in use") from None
            raise os_error_to_http(exc) from None
