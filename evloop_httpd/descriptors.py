"""The descriptor budget: how many connections and uploads the open-file limit can carry.

Theory of operation: a connection holds at most two descriptors while it answers a GET (its
socket and the file being sent) and three while it receives a PUT (its socket, the temp file,
and the folder the temp file is created in, see :mod:`upload`). Everything else the process
holds is fixed (the listener, the selector, the waker pair, standard streams, log files), and
the few descriptors a request opens and closes within one step of the loop (a precompressed
sidecar, a folder being listed or synced, an upload refused below) are opened one request at a
time, since the loop serves one connection at a time. ``FD_RESERVE`` covers both.

At start the soft ``RLIMIT_NOFILE`` is raised to ``3 * max_connections + FD_RESERVE`` when the
hard limit allows: then every connection may be an upload and no open can fail for lack of
descriptors. When the hard limit is lower, uploads are what gets capped, not GETs: each
connection keeps its two, and concurrent uploads get what is left (a PUT beyond the cap is
answered ``503`` with ``Retry-After``; see ``Connection``). If that leaves fewer than
``UPLOAD_FLOOR`` uploads (or an eighth of the connections, if more), the connection cap is
lowered to make room for them. Either way a
warning says what the limit allows and what to raise.

Sized only by descriptor count at one per connection, a third of the connections uploading
slowly used up the whole limit, and every uncached GET answered 503.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

FDS_PER_CONNECTION = 2  # a GET: the socket and the file being sent
FDS_PER_UPLOAD = 3  # a PUT: the socket, the temp file, the folder's descriptor
FD_RESERVE = 64  # fixed descriptors (~10) plus those opened and closed within one step (<= 3)
UPLOAD_FLOOR = 16  # uploads kept, at least, before connections give way (or an eighth of them)


@dataclass(frozen=True, slots=True)
class Budget:
    """What an open-file limit carries. ``max_uploads`` None: no cap beyond the connections."""

    max_connections: int
    max_uploads: int | None
    wanted: int  # the limit at which every connection could be an upload


def needed(max_connections: int) -> int:
    """The open-file limit at which every connection may hold an upload."""
    return FDS_PER_UPLOAD * max_connections + FD_RESERVE


def plan(max_connections: int, limit: int | None) -> Budget:
    """Split ``limit`` descriptors (None: unlimited) between connections and uploads."""
    wanted = needed(max_connections)
    if limit is None or limit >= wanted:
        return Budget(max_connections, None, wanted)
    spare = FDS_PER_UPLOAD - FDS_PER_CONNECTION  # what an upload holds beyond a GET
    floor = min(max_connections, max(UPLOAD_FLOOR, max_connections // 8))
    conns = min(max_connections, (limit - FD_RESERVE - floor * spare) // FDS_PER_CONNECTION)
    conns = max(1, conns)
    uploads = max(1, (limit - FD_RESERVE - conns * FDS_PER_CONNECTION) // spare)
    return Budget(conns, min(uploads, conns), wanted)


def raise_nofile_limit(max_connections: int) -> Budget:
    """Raise the soft RLIMIT_NOFILE towards :func:`needed`, up to the hard limit, and return
    the budget the resulting limit allows (warning on stderr when it is short)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed(max_connections)
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as exc:
            print(f"warning: cannot raise the open-file limit to {want}: {exc}", file=sys.stderr)
    budget = plan(max_connections, None if soft == resource.RLIM_INFINITY else soft)
    if budget.max_uploads is not None:
        print(
            f"warning: the open-file limit ({soft}) carries {budget.max_connections} connections"
            f" and {budget.max_uploads} uploads at a time; {budget.wanted} would let all"
            f" {max_connections} connections upload (raise it with ulimit -n)",
            file=sys.stderr,
        )
    return budget
