"""Command line: parse options, check them, start the server, stop it on a signal.

Usage errors (a bad port, a root that is not a directory, a malformed size) print a message
and exit with status 2, as argparse does. A clean stop exits 0.
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import KIB, Config, Limits, Timeouts
from .reactor import Server
from .tls import TlsSetupError
from .upload import remove_stale_temps

_SUFFIXES = {"": 1, "k": KIB, "m": KIB**2, "g": KIB**3}


def port_number(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return port


def byte_size(text: str) -> int:
    """``1048576``, ``64K``, ``10M``, ``2G`` (binary units)."""
    number, suffix = text[:-1], text[-1:].lower()
    if suffix not in _SUFFIXES or suffix == "":
        number, suffix = text, ""
    try:
        value = int(number, 10) * _SUFFIXES[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1048576, 64K, 10M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def header_line(text: str) -> tuple[bytes, bytes]:
    from . import grammar

    name, colon, value = text.partition(":")
    raw_name, raw_value = name.encode("latin-1"), value.strip().encode("latin-1")
    if not colon or not grammar.FIELD_LINE.fullmatch(raw_name + b": " + raw_value):
        raise argparse.ArgumentTypeError(f"not a valid 'Name: value' header: {text!r}")
    return raw_name, raw_value


# Headers the server computes per response: a fixed value from the command line would contradict
# the framing or the validators, so it is refused rather than sent twice.
_COMPUTED = frozenset(
    b"""accept-ranges allow connection content-encoding content-length content-range
    content-type date etag keep-alive last-modified location server te trailer transfer-encoding
    upgrade vary""".split()
)


def extra_header(text: str) -> tuple[bytes, bytes]:
    """A ``-H 'Name: value'`` option: a valid field line naming no header we compute."""
    name, value = header_line(text)
    if name.lower() in _COMPUTED:
        raise argparse.ArgumentTypeError(
            f"{name.decode('latin-1')} is set by the server for each response"
        )
    return name, value


def build_parser() -> argparse.ArgumentParser:
    lim, tmo = Limits(), Timeouts()
    p = argparse.ArgumentParser(
        prog="python -m evloop_httpd",
        description="Serve a directory over HTTP/1.1 (GET, HEAD, PUT, DELETE) from one event loop.",
    )
    p.add_argument("-p", "--port", type=port_number, default=8000, help="port (0: any free one)")
    p.add_argument("-d", "--root", default=".", help="directory to serve (default: .)")
    p.add_argument("-b", "--bind", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--read-only", action="store_true", help="refuse PUT (405)")
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-request-line",
        type=byte_size,
        default=lim.max_request_line_bytes,
        help="longest request line, else 414 (default %(default)s)",
    )
    g.add_argument(
        "--max-head",
        type=byte_size,
        default=lim.max_head_bytes,
        help="largest request head, else 431 (default %(default)s)",
    )
    g.add_argument(
        "--max-headers",
        type=positive_int,
        default=lim.max_header_count,
        help="most header fields, else 431 (default %(default)s)",
    )
    g.add_argument(
        "--max-upload",
        type=byte_size,
        default=lim.max_upload_bytes,
        help="largest request body, else 413 (default %(default)s = 1G)",
    )
    g.add_argument(
        "--max-connections",
        type=positive_int,
        default=10_000,
        help="open connections before accept pauses (default %(default)s)",
    )
    t = p.add_argument_group("timeouts (seconds)")
    t.add_argument(
        "--head-timeout",
        type=seconds,
        default=tmo.head_s,
        help="to receive a whole request head, else 408 (default %(default)s)",
    )
    t.add_argument(
        "--idle-timeout",
        type=seconds,
        default=tmo.idle_s,
        help="keep-alive connection with no request (default %(default)s)",
    )
    t.add_argument(
        "--stall-timeout",
        type=seconds,
        default=tmo.stall_s,
        help="body or response making no progress (default %(default)s)",
    )
    t.add_argument(
        "--min-rate",
        type=byte_size,
        default=tmo.min_rate_bytes_s,
        help="bytes/s a transfer must average (default %(default)s)",
    )
    t.add_argument(
        "--linger-timeout",
        type=seconds,
        default=tmo.linger_s,
        help="draining a client's unread bytes after the last response (default %(default)s)",
    )
    t.add_argument(
        "--shutdown-timeout",
        type=seconds,
        default=tmo.shutdown_s,
        help="grace for in-flight responses on stop (default %(default)s)",
    )
    f = p.add_argument_group("files")
    f.add_argument("--no-sendfile", action="store_true", help="use read+send instead of sendfile")
    f.add_argument(
        "--follow-symlinks", action="store_true", help="serve symlinks that point outside the root"
    )
    f.add_argument("--dotfiles", action="store_true", help="serve names starting with '.'")
    f.add_argument("--fsync", action="store_true", help="make each PUT durable before answering")
    f.add_argument(
        "--listing",
        action="store_true",
        help="list folders that have no index.html (HTML, or JSON on Accept: application/json)",
    )
    f.add_argument(
        "--allow-delete",
        action="store_true",
        help="let DELETE remove files and empty folders (refused with 405 by default)",
    )
    f.add_argument(
        "--no-precompressed",
        action="store_true",
        help="never serve foo.br / foo.gz sidecars in place of foo",
    )
    o_h = p.add_argument_group("responses")
    o_h.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        type=extra_header,
        default=[],
        metavar="'NAME: VALUE'",
        help="add this header to every response (repeatable), e.g. 'Cache-Control: no-cache'",
    )
    s = p.add_argument_group("HTTPS (the port then serves HTTPS only; SIGHUP reloads the files)")
    s.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate chain")
    s.add_argument(
        "--tls-key",
        type=Path,
        metavar="FILE",
        help="PEM private key (default: in the --tls-cert file)",
    )
    s.add_argument(
        "--tls-password-file",
        type=Path,
        metavar="FILE",
        help="file whose first line is the private key's password",
    )
    s.add_argument(
        "--handshake-timeout",
        type=seconds,
        default=tmo.handshake_s,
        help="to finish the TLS handshake (default %(default)s)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--stats-csv", type=Path, help="append one CSV row per request to this file")
    o.add_argument("--response-log", type=Path, help="append each response head to this file")
    o.add_argument("-q", "--quiet", action="store_true", help="no access log on stderr")
    o.add_argument(
        "--trace",
        action="store_true",
        help="print each connection's state transitions as they happen",
    )
    return p


def config_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    root = Path(args.root)
    if not root.is_dir():
        parser.error(f"root {args.root!r} is not an existing directory")
    limits = Limits(
        max_request_line_bytes=args.max_request_line,
        max_head_bytes=args.max_head,
        max_header_count=args.max_headers,
        max_upload_bytes=args.max_upload,
    )
    if args.tls_cert is None and (args.tls_key or args.tls_password_file):
        parser.error("--tls-key and --tls-password-file need --tls-cert")
    timeouts = Timeouts(
        handshake_s=args.handshake_timeout,
        head_s=args.head_timeout,
        idle_s=args.idle_timeout,
        stall_s=args.stall_timeout,
        min_rate_bytes_s=args.min_rate,
        linger_s=args.linger_timeout,
        shutdown_s=args.shutdown_timeout,
    )
    return Config(
        root=root.resolve(),
        host=args.bind,
        port=args.port,
        read_only=args.read_only,
        limits=limits,
        timeouts=timeouts,
        max_connections=args.max_connections,
        use_sendfile=not args.no_sendfile,
        follow_symlinks=args.follow_symlinks,
        dotfiles=args.dotfiles,
        fsync=args.fsync,
        stats_csv=args.stats_csv,
        response_log=args.response_log,
        quiet=args.quiet,
        trace=args.trace,
        listing=args.listing,
        allow_delete=args.allow_delete,
        precompressed=not args.no_precompressed,
        extra_headers=tuple(args.headers),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_password_file=args.tls_password_file,
    )


def url_for(address: tuple, scheme: str = "http") -> str:
    host, port = address[0], address[1]
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


FD_RESERVE = 64  # descriptors beyond one per connection: files being sent, uploads, logs


def raise_nofile_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards what ``max_connections`` needs, up to the hard limit.

    Many systems start processes with a soft limit of 1024 and a far higher hard limit; left
    alone, the server would hit EMFILE (and pause accepting) long before its connection cap.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_RESERVE
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (OSError, ValueError) as exc:
        print(f"warning: cannot raise the open-file limit to {want}: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from(args, parser)
    if 0 < config.port < 1024:
        print(f"warning: port {config.port} is privileged (below 1024)", file=sys.stderr)
    raise_nofile_limit(config.max_connections)
    stale = remove_stale_temps(str(config.root))
    if stale:
        print(f"removed {stale} unfinished upload(s) left by an earlier run", file=sys.stderr)
    try:
        server = Server(config)
    except TlsSetupError as exc:
        print(f"evloop_httpd: TLS: {exc}", file=sys.stderr)
        return 2
    try:
        address = server.bind()
    except OSError as exc:
        print(f"evloop_httpd: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    scheme = server.ctx.scheme.decode()
    print(f"Serving {config.root} on {url_for(address, scheme)}", flush=True)

    def stop(signum: int, _frame: object) -> None:
        if server.ctx.stopping:
            raise SystemExit(0)  # a second Ctrl+C: stop now, the loop's finally still closes
        server.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # SIGHUP re-reads the TLS certificate and key (new connections get them); without TLS it
    # is ignored rather than left to kill the server.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: server.request_reload())
    signal.set_wakeup_fd(server.wakeup_fd(), warn_on_full_buffer=False)
    server.serve_forever()
    return 0
