"""POST uploads: a multipart/form-data body streamed into files of one folder.

Theory of operation
-------------------
A :class:`FormUpload` is what the handler returns for an accepted POST to a folder: the
connection feeds it the decoded body (:meth:`FormUpload.write`) as it arrives, and asks for the
response when the body is over (:meth:`FormUpload.finish`). The bytes go through
:class:`~evloop_httpd.multipart.MultipartParser`; each file part gets its own
:class:`~evloop_httpd.upload.Upload` (a temp file beside the target, renamed into place only
when the part is complete), all made in the one folder descriptor checked when the POST began.
At most one part is open at a time, so a form upload holds what a PUT holds (the folder and one
temp file) and memory is bounded by one ``recv`` whatever the part sizes.

Each part is committed at its own end. A failure of the *body* (a framing error, the client
leaving, a timeout, 413, 507) aborts the part in progress and refuses the request, but parts
already committed stay: each is a whole file, and the response the client misses would only have
listed them. A refusal of one *part* (a hostile file name: 400; an existing name without
``overwrite``: 409) skips that part's content, the others are still stored, and the answer at
the end carries the refusal's status and says which names were stored and which refused.

The ``overwrite`` field (value ``1`` or ``on``) applies to the file parts after it, which is
where the listing's form puts it and where its script sends it; a file part is decided when it
starts (the name is checked) and again at its commit (without overwrite the rename cannot
replace a file that appeared meanwhile: see :meth:`Upload.commit`).

Work: a ``recv`` of 64 KiB can hold hundreds of tiny parts, each a file to create, link and
unlink, and what a create costs depends on the filesystem: 70 us on tmpfs, 1.5-2 ms on this
project's test machine's disk (``tests/benchmarks/post_bench.py``). So a count alone cannot bound
a step. Events are kept in a backlog; one call of :meth:`work` starts at least one part and
then another only while ``may_continue`` (the reactor's work budget for this turn, set by the
connection) says there is time, and never more than ``PARTS_PER_STEP``. The connection reads
no more of the body while a backlog is left, and parks until the next turn when the budget is
spent, so a turn costs at most the budget plus one part.
"""

from __future__ import annotations

import json
import os
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from .errors import HttpError, bad_request
from .multipart import (
    Event,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_disposition,
    safe_filename,
)
from .responses import Response, text_response
from .upload import Upload, lstat_in

# Parts started per step at most, whatever the budget says. Each file part is an open, a link,
# an unlink and two closes: about 70 us on tmpfs, but 1.5-2 ms per create on a slow disk, so the
# time budget (may_continue) is what usually ends a step there.
PARTS_PER_STEP = 32
OVERWRITE_FIELD = "overwrite"
_YES = (b"1", b"on", b"true", b"yes")
MAX_FIELD_BYTES = 16  # of a field we read (overwrite); longer is not a yes. Others are dropped.
JSON_TYPE = b"application/json"


def _always() -> bool:
    return True


# What the current part's content goes to.
_SKIP, _FILE, _FIELD = range(3)


@dataclass(frozen=True, slots=True)
class Stored:
    name: str
    size: int
    etag: str
    created: bool


@dataclass(frozen=True, slots=True)
class Refused:
    name: str  # as the client sent it
    status: HTTPStatus
    reason: str


class FormUpload:
    """One POST of multipart/form-data in progress; see the module docstring."""

    __slots__ = (
        "_dir",
        "_dotfiles",
        "_events",
        "_field",
        "_fsync",
        "_json",
        "_location",
        "_parser",
        "_part",
        "_target",
        "_upload",
        "may_continue",
        "overwrite",
        "refused",
        "stored",
    )

    def __init__(
        self,
        folder_fd: int,
        boundary: bytes,
        location: bytes,
        *,
        fsync: bool,
        dotfiles: bool,
        json_answer: bool,
    ) -> None:
        """Takes ownership of ``folder_fd`` (see :func:`files.open_folder`), even on error."""
        self._dir = folder_fd
        try:
            self._parser = MultipartParser(boundary)
        except BaseException:
            self.abort()
            raise
        self._location = location
        self._fsync = fsync
        self._dotfiles = dotfiles
        self._json = json_answer
        self._events: deque[Event] = deque()
        self._part = _SKIP
        self._field = b""
        self._target = ""
        self._upload: Upload | None = None
        self.overwrite = False
        # Whether this turn's work budget allows starting another part (see the module
        # docstring); the connection sets the reactor's. Without one (unit tests), always.
        self.may_continue: Callable[[], bool] = _always
        self.stored: list[Stored] = []
        self.refused: list[Refused] = []

    @property
    def backlog(self) -> bool:
        """Whether events of bytes already given are still to be acted on."""
        return bool(self._events)

    def write(self, data: bytes) -> None:
        """The next piece of the body. Acts on at most ``PARTS_PER_STEP`` parts; the rest
        waits in the backlog for :meth:`work`."""
        try:
            self._events.extend(self._parser.feed(data))
        except BaseException:
            self.abort()
            raise
        self.work()

    def work(self, max_parts: int = PARTS_PER_STEP) -> None:
        """Act on the backlog: start at least one part, more while ``may_continue()`` says so,
        at most ``max_parts``. Raises HttpError (after aborting everything still open) when
        the body must be refused."""
        events = self._events
        parts = 0
        try:
            while events:
                ev = events[0]
                if isinstance(ev, PartStart):
                    if parts == max_parts or (parts and not self.may_continue()):
                        return
                    parts += 1
                    self._start(ev)
                elif isinstance(ev, PartData):
                    self._data(ev.data)
                elif isinstance(ev, PartEnd):
                    self._end()
                events.popleft()
        except BaseException:
            self.abort()
            raise

    def finish(self) -> Response:
        """The body is complete: the response (303 or JSON; or the first refusal's status)."""
        try:
            self._parser.close()
            if not self.stored and not self.refused:
                raise bad_request("the form holds no file")
        except BaseException:
            self.abort()
            raise
        self.abort()  # nothing is open any more: this only closes the folder
        return self._answer()

    def abort(self) -> None:
        """Drop the part in progress (its temp file) and the folder. Safe to call again."""
        self._events.clear()
        if self._upload is not None:
            self._upload.abort()
            self._upload = None
        if self._dir >= 0:
            os.close(self._dir)
            self._dir = -1

    # Acting on events.

    def _start(self, ev: PartStart) -> None:
        disp = parse_disposition(ev.get(b"content-disposition"))
        self._part = _SKIP
        if disp.filename is None:
            if disp.name == OVERWRITE_FIELD:
                self._part = _FIELD
                self._field = b""
            return
        try:
            name = safe_filename(disp.filename, dotfiles=self._dotfiles)
        except HttpError as exc:
            self.refused.append(Refused(disp.filename, HTTPStatus.BAD_REQUEST, exc.detail))
            return
        st = lstat_in(self._dir, name)
        if st is not None:
            why = None
            if stat.S_ISDIR(st.st_mode):
                why = "is a folder"
            elif not stat.S_ISREG(st.st_mode):
                why = "exists and is not a regular file"
            elif not self.overwrite:
                why = "exists (not overwritten: the form did not ask for it)"
            if why is not None:
                self.refused.append(Refused(name, HTTPStatus.CONFLICT, f"{name!a} {why}"))
                return
        self._upload = Upload(self._dir, name, fsync=self._fsync, own_dir=False)
        self._target = name
        self._part = _FILE

    def _data(self, data: bytes) -> None:
        part = self._part
        if part == _FILE:
            assert self._upload is not None
            self._upload.write(data)
        elif part == _FIELD and len(self._field) <= MAX_FIELD_BYTES:
            self._field += data[: MAX_FIELD_BYTES + 1]

    def _end(self) -> None:
        part = self._part
        self._part = _SKIP
        if part == _FIELD:
            self.overwrite = self._field.strip().lower() in _YES
        elif part == _FILE:
            upload = self._upload
            assert upload is not None
            size = upload.written
            try:
                created, etag = upload.commit(replace=self.overwrite)
            except HttpError as exc:
                if exc.status != HTTPStatus.CONFLICT:
                    raise
                self.refused.append(Refused(self._target, exc.status, exc.detail))
            else:
                self.stored.append(Stored(self._target, size, etag.decode("ascii"), created))
            finally:
                self._upload = None

    # The answer.

    def _answer(self) -> Response:
        refused = self.refused
        if refused:
            # A name refused as hostile is the client's error; a name taken is a conflict.
            status = min(r.status for r in refused)
            if self._json:
                return _json_response(
                    status,
                    {
                        "error": "; ".join(r.reason for r in refused),
                        "stored": [_stored_doc(s) for s in self.stored],
                        "refused": [
                            {"name": r.name, "status": r.status.value, "reason": r.reason}
                            for r in refused
                        ],
                    },
                )
            lines = [f"{status.value} {status.phrase}"]
            lines += [f"stored: {s.name!a} ({s.size} bytes)" for s in self.stored]
            lines += [f"refused ({r.status.value}): {r.reason}" for r in refused]
            return text_response(status, "\n".join(lines) + "\n")
        if self._json:
            return _json_response(HTTPStatus.OK, {"stored": [_stored_doc(s) for s in self.stored]})
        # A browser's form: back to the folder, whose listing now shows the files (RFC 9110
        # §15.4.4: the client follows with a GET).
        count = len(self.stored)
        resp = text_response(
            HTTPStatus.SEE_OTHER, f"303 See Other\n{count} file(s) stored; see the folder\n"
        )
        resp.headers.append((b"Location", self._location))
        return resp


def _stored_doc(s: Stored) -> dict[str, object]:
    return {"name": s.name, "size": s.size, "etag": s.etag, "created": s.created}


def _json_response(status: HTTPStatus, doc: dict[str, object]) -> Response:
    # ensure_ascii: any name goes out as \\u escapes, so the body is ASCII whatever was sent.
    body = (json.dumps(doc, ensure_ascii=True) + "\n").encode("ascii")
    headers = [(b"Content-Type", JSON_TYPE), (b"Content-Length", b"%d" % len(body))]
    return Response(status, headers, body)
