"""The descriptor budget: how many connections and uploads the open-file limit can carry.

Theory of operation: a connection holds at most two descriptors while it answers a GET (its
socket and the file being sent) and three while it receives a PUT (its socket, the temp file,
and the folder the temp file is created in, see :mod:`upload`). Everything else the process
holds is fixed (the listener, the selector, the waker pair, the splice pipe that all uploads of
the loop share, see ``transport.SplicePipe``, standard streams, log files, and the log's own
non-blocking view of a stderr pipe, see ``log._nonblocking_view``), and
the few descriptors a request opens and closes within one step of the loop (a precompressed
sidecar, a folder being listed or synced, an upload refused below) are opened one request at a
time, since the loop serves one connection at a time. ``FD_RESERVE`` covers both.

At start the soft ``RLIMIT_NOFILE`` is raised to ``3 * max_connections + FD_RESERVE`` when the
hard limit allows: then every connection may be an upload and no open can fail for lack of
descriptors. When the hard limit is lower, uploads are what gets capped, not GETs: each
connection keeps its two, and concurrent uploads get what is left (a PUT beyond the cap is
answered ``503`` with ``Retry-After``; see ``Connection``), but never fewer than
``UPLOAD_FLOOR`` (or an eighth of the connections, if more). ``--max-connections`` is the
operator's choice and is not lowered: where the limit does not even cover two per connection
and the floor, opens near the connection cap may fail, and the server falls back on what it
does at EMFILE (pause accepting, ``503`` with ``Retry-After``). A warning at start says so and
what limit would lift the caps. Many systems start processes with a soft limit of 1024 and a far
higher hard limit, so usually raising the soft limit is all it takes.

A folder's ZIP download (``?download=zip``) holds, beyond its socket, two descriptors per
folder level of each of its two walks while it checks the tree, and one walk plus the file
being read while it streams: at most ``FDS_PER_ZIP``. Downloads at once are capped
(``Config.max_zips``, a 503 beyond), and that many are set aside before the split below.

Sized only by descriptor count at one per connection, a third of the connections uploading
slowly used up the whole limit, and every uncached GET answered 503.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

from .zipstream import MAX_DEPTH

FDS_PER_CONNECTION = 2  # a GET: the socket and the file being sent
FDS_PER_UPLOAD = 3  # a PUT: the socket, the temp file, the folder's descriptor
# Beyond the socket: the checking walk at MAX_DEPTH levels (two each) and the stream's first
# level while it prepares; the stream's walk and the file being read afterwards.
FDS_PER_ZIP = 2 * MAX_DEPTH + 2
# Fixed descriptors (~13, the loop's splice pipe and the log's view of stderr included) plus
# those opened and closed within one step (<= 3).
FD_RESERVE = 64
UPLOAD_FLOOR = 16  # the upload cap is never lower (nor below an eighth of the connections)


@dataclass(frozen=True, slots=True)
class Budget:
    """What an open-file limit carries. ``max_uploads`` None: no cap beyond the connections."""

    max_uploads: int | None
    wanted: int  # the limit at which every connection could be an upload
    covered: bool  # whether the limit covers every connection's GET and the upload cap


def needed(max_connections: int, max_zips: int = 0) -> int:
    """The open-file limit at which every connection may hold an upload, with ``max_zips``
    ZIP downloads on top."""
    return FDS_PER_UPLOAD * max_connections + FD_RESERVE + FDS_PER_ZIP * max_zips


def plan(max_connections: int, limit: int | None, max_zips: int = 0) -> Budget:
    """Split ``limit`` descriptors (None: unlimited) between connections and uploads, once
    ``max_zips`` ZIP downloads have had theirs."""
    wanted = needed(max_connections, max_zips)
    if limit is None or limit >= wanted:
        return Budget(None, wanted, True)
    spare = FDS_PER_UPLOAD - FDS_PER_CONNECTION  # what an upload holds beyond a GET
    floor = min(max_connections, max(UPLOAD_FLOOR, max_connections // 8))
    fixed = FD_RESERVE + FDS_PER_ZIP * max_zips
    left = (limit - fixed - max_connections * FDS_PER_CONNECTION) // spare
    uploads = min(max_connections, max(floor, left))
    return Budget(uploads, wanted, left >= floor)


def raise_nofile_limit(max_connections: int, *, warn: bool = True, max_zips: int = 0) -> Budget:
    """Raise the soft RLIMIT_NOFILE towards :func:`needed`, up to the hard limit, and return
    the budget the resulting limit allows (warning on stderr when it is short and ``warn``).

    The CLI warns only when the operator chose ``--max-connections``: with the default, a
    machine whose hard limit is below 30,064 (many are) would print the warning at every start
    for a cap nobody asked for, and the server copes either way (uploads capped, 503 at EMFILE).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed(max_connections, max_zips)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as exc:
            print(f"warning: cannot raise the open-file limit to {want}: {exc}", file=sys.stderr)
    budget = plan(max_connections, None if soft == resource.RLIM_INFINITY else soft, max_zips)
    if warn and budget.max_uploads is not None:
        short = (
            ""
            if budget.covered
            else f"; near {max_connections} connections, opening files may fail (503)"
        )
        print(
            f"warning: with {soft} open files, at most {budget.max_uploads} uploads at a time"
            f"{short}; {budget.wanted} would lift this (ulimit -Hn), or lower --max-connections",
            file=sys.stderr,
        )
    return budget
