"""Settings and limits, as frozen dataclasses.

Theory of operation: every number that bounds what a client can make the server do lives here,
with its unit in its name and the reason for its default beside it. The parser takes only
:class:`Limits`, so it can be fuzzed without the rest; the server takes a whole :class:`Config`.
Nothing here is mutated after start-up.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from .faults import Faults

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
DEFAULT_MAX_ZIPS = 4  # folder ZIP downloads at once (--max-zip-downloads)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on a request's head and body, the parser's whole view of configuration."""

    max_request_line_bytes: int = 8 * KIB  # common servers: 4-16 KiB; a URL longer is not a file
    max_head_bytes: int = 32 * KIB  # common servers: 8-80 KiB (nginx 32 KiB, Apache 8 KiB a line)
    max_header_count: int = 100  # Apache and h2o: 100
    max_upload_bytes: int = 1 * GIB  # PUT bodies go to disk, so this is about disk, not memory
    max_chunk_line_bytes: int = 4 * KIB  # a chunk-size line with extensions; size is 16 hex digits
    max_trailer_bytes: int = 16 * KIB  # trailers are discarded, but must be bounded

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Deadlines in seconds; the loop enforces them with one timer heap."""

    head_s: float = 10.0  # from a request's first byte to its blank line: defeats slowloris
    handshake_s: float = 10.0  # TLS: from accept to a finished handshake, however it trickles
    idle_s: float = 15.0  # a keep-alive connection with nothing pending
    stall_s: float = 30.0  # a body or a response that makes no progress at all
    min_rate_bytes_s: int = 1 * KIB  # below this average rate, a transfer is a stall too
    linger_s: float = 2.0  # draining a client's unread bytes after an error, before closing
    shutdown_s: float = 5.0  # grace for in-flight responses on Ctrl+C or SIGTERM


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs, as the command line gave it."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 8000
    read_only: bool = False
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 10_000
    # PUTs receiving at once; None: as many as connections. Set from the open-file limit at
    # start (descriptors.py): an upload holds three descriptors, a GET two.
    max_uploads: int | None = None
    # Folder ZIP downloads under way at once (beyond: 503). Each may hold a 16 MiB central
    # directory and two descriptors per folder level of two walks (descriptors.FDS_PER_ZIP).
    max_zips: int = DEFAULT_MAX_ZIPS
    use_sendfile: bool = True
    use_splice: bool = True  # PUT bodies: socket -> pipe -> file where the kernel can (transport)
    follow_symlinks: bool = False  # follow symlinks that leave the root
    dotfiles: bool = False
    fsync: bool = False
    stats_csv: Path | None = None
    response_log: Path | None = None
    quiet: bool = False
    trace: bool = False
    trace_form: str = "text"  # or "json": one object per line, for tools (see log.Tracer)
    trace_file: Path | None = None  # None: the trace goes to stderr with the other logs
    status: tuple[str, int] | None = None  # --status: (host, port) of the status listener
    # With --workers: the private folder where each worker leaves its snapshot for the others
    # (see watch.StatusShare); made and removed by the supervising parent.
    status_dir: Path | None = None
    faults: Faults | None = None  # teaching faults (faults.py); None when all are off
    listing: bool = False
    allow_delete: bool = False
    precompressed: bool = True
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    # Accounts and the safe defaults beyond loopback (see auth.py).
    auth_file: Path | None = None
    auth_scope: str = "write"  # "write": methods other than GET/HEAD/OPTIONS; "all"
    auth_realm: str = "evloop_httpd"
    public: bool = False  # bound to a non-loopback address: anonymous writes off by default
    allow_anonymous_writes: bool = False
    tls_cert: Path | None = None  # with it, the port serves HTTPS only (see tls.py)
    tls_key: Path | None = None  # None: the key is in the cert file
    tls_password_file: Path | None = None  # first line: the key's passphrase
    # Behind a load balancer (see docs/deployment.md): each connection starts with a PROXY
    # protocol header (proxyproto.py), and requests from these networks name their client in
    # Forwarded / X-Forwarded-For (forwarded.py).
    proxy_protocol: bool = False
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
