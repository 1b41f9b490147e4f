"""Command line: parse options, check them, start the server, stop it on a signal.

Usage errors (a bad port, a root that is not a directory or cannot be read, a malformed size, a
log file that cannot be opened) print the error and a hint to ``--help``, not the whole usage
block, and exit with status 2, as argparse does. A clean stop exits 0. The program names itself
the way it was started: ``evloop-httpd`` or ``python -m evloop_httpd``.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__, activation
from .auth import AccountFileError, is_loopback, load_accounts
from .config import DEFAULT_MAX_ZIPS, KIB, Config, Limits, Timeouts
from .connection import Address
from .descriptors import raise_nofile_limit
from .faults import add_fault_options, faults_from
from .log import TRACE_FORMS, Logs
from .reactor import Server, open_listener
from .tls import TlsSetupError, make_context
from .upload import remove_stale_temps

DEFAULT_MAX_CONNECTIONS = 10_000
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


def worker_count(text: str) -> int:
    """``--workers``: a positive number, or ``auto`` for the CPUs this process may use."""
    if text == "auto":
        from .supervisor import cpu_count

        return cpu_count()
    return positive_int(text)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``--trusted-proxy``: a network (``10.0.0.0/8``, ``fd00::/8``) or one address."""
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not a network or address: {text!r} ({exc}; try 10.0.0.0/8, 192.0.2.7 or fd00::/8)"
        ) from None


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


DEFAULT_PORT = 8000
_OPEN_STATUS = (
    "warning: the status page is beyond loopback without --auth-file: anyone who can reach it"
    " sees every client's address and request"
)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are two lines: the error, and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nTry '{self.prog} --help' for more.\n")


def program_name() -> str:
    """How the user started us: ``python -m evloop_httpd`` or the name of the script."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name in ("", "__main__.py", "-c", "-m"):
        return "python -m evloop_httpd"
    return name


def build_parser(prog: str = "evloop-httpd") -> argparse.ArgumentParser:
    lim, tmo = Limits(), Timeouts()
    p = _Parser(
        prog=prog,
        description="Serve a directory over HTTP/1.1 (GET, HEAD, PUT, DELETE) from one event loop.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # As http.server takes it: `python -m evloop_httpd 8000`. -p says the same; not both.
    p.add_argument(
        "port_arg",
        nargs="?",
        type=port_number,
        metavar="PORT",
        help=f"port, as -p (default {DEFAULT_PORT})",
    )
    p.add_argument(
        "-p", "--port", type=port_number, help=f"port (0: any free one; default {DEFAULT_PORT})"
    )
    p.add_argument(
        "-d",
        "--root",
        "--directory",
        dest="root",
        default=".",
        help="directory to serve (default: .)",
    )
    p.add_argument("-b", "--bind", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--read-only", action="store_true", help="refuse PUT (405)")
    p.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="processes serving the same port (auto: one per CPU; default 1); SIGHUP reloads",
    )
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
        default=None,
        help=f"open connections before accept pauses (default {DEFAULT_MAX_CONNECTIONS})",
    )
    g.add_argument(
        "--max-zip-downloads",
        type=positive_int,
        default=DEFAULT_MAX_ZIPS,
        help="folder ZIPs (?download=zip) made at once, else 503 (default %(default)s)",
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
        "--no-splice",
        action="store_true",
        help="write PUT bodies with recv+write instead of splice from the socket",
    )
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
    a = p.add_argument_group("accounts (see README: Sharing on a network)")
    a.add_argument(
        "--auth-file",
        type=Path,
        help="accounts, one 'name:hash' per line (python -m evloop_httpd hash-password)",
    )
    a.add_argument(
        "--auth-scope",
        choices=("write", "all"),
        default="write",
        help="which requests need an account: writes (default) or all",
    )
    a.add_argument("--auth-realm", default="evloop_httpd", help="the realm shown at login")
    a.add_argument(
        "--allow-anonymous-writes",
        action="store_true",
        help="beyond loopback and without --auth-file, still let anyone PUT and DELETE",
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
    s = p.add_argument_group(
        "HTTPS (the port then serves HTTPS only; SIGHUP reloads the certificate)"
    )
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
        default=Timeouts().handshake_s,
        help="to finish the TLS handshake (default %(default)s)",
    )
    b = p.add_argument_group("behind a load balancer or reverse proxy (see docs/deployment.md)")
    b.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="every connection starts with a PROXY protocol v1 or v2 header (HAProxy send-proxy,"
        " nginx proxy_protocol, cloud L4 balancers); a connection without one is closed",
    )
    b.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        type=network,
        default=[],
        metavar="CIDR",
        help="requests from this network name their client in Forwarded or X-Forwarded-For"
        " (repeatable); from anywhere else those headers are ignored",
    )
    o = p.add_argument_group("output")
    o.add_argument("--stats-csv", type=Path, help="append one CSV row per request to this file")
    o.add_argument("--response-log", type=Path, help="append each response head to this file")
    o.add_argument("-q", "--quiet", action="store_true", help="no access log on stderr")
    o.add_argument(
        "--trace",
        nargs="?",
        const="text",
        default=None,
        choices=TRACE_FORMS,
        help="print what the loop does: wake-ups, bytes moved, EAGAIN, timers, transitions;"
        " text (the default) or json, one object per line",
    )
    o.add_argument(
        "--trace-file",
        type=Path,
        metavar="FILE",
        help="append the trace to FILE instead of stderr (needs --trace)",
    )
    o.add_argument(
        "--status",
        type=status_address,
        metavar="[ADDR:]PORT",
        help="serve the status page (/), /status.json and /metrics on this address, from the"
        " same loop (ADDR defaults to 127.0.0.1; with --auth-file, an account is needed)",
    )
    add_fault_options(p)
    return p


def status_address(text: str) -> tuple[str, int]:
    """``--status``: ``PORT``, ``HOST:PORT`` or ``[V6]:PORT``; loopback unless it says otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"write an IPv6 address in brackets: {text!r}")
    return host or "127.0.0.1", port_number(port_text)


def config_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    if args.port is not None and args.port_arg is not None:
        parser.error(f"the port is given twice ({args.port_arg} and -p {args.port}): give one")
    port = next((p for p in (args.port, args.port_arg) if p is not None), DEFAULT_PORT)
    root = Path(args.root)
    if not root.is_dir():
        parser.error(f"root {args.root!r} is not an existing directory")
    problem = unusable_root(root)
    if problem:
        parser.error(f"root {args.root!r}: {problem}")
    limits = Limits(
        max_request_line_bytes=args.max_request_line,
        max_head_bytes=args.max_head,
        max_header_count=args.max_headers,
        max_upload_bytes=args.max_upload,
    )
    if args.auth_file is not None:
        try:
            load_accounts(args.auth_file)
        except AccountFileError as exc:
            parser.error(str(exc))
    if not args.auth_realm.isprintable():
        parser.error("--auth-realm must be printable")
    if args.trace_file is not None and args.trace is None:
        parser.error("--trace-file needs --trace")
    faults = faults_from(args)
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
        port=port,
        read_only=args.read_only,
        limits=limits,
        timeouts=timeouts,
        max_connections=args.max_connections or DEFAULT_MAX_CONNECTIONS,
        max_zips=args.max_zip_downloads,
        use_sendfile=not args.no_sendfile,
        use_splice=not args.no_splice,
        follow_symlinks=args.follow_symlinks,
        dotfiles=args.dotfiles,
        fsync=args.fsync,
        stats_csv=args.stats_csv,
        response_log=args.response_log,
        quiet=args.quiet,
        trace=args.trace is not None,
        trace_form=args.trace or "text",
        trace_file=args.trace_file,
        status=args.status,
        faults=faults if faults.active else None,
        listing=args.listing,
        allow_delete=args.allow_delete,
        precompressed=not args.no_precompressed,
        extra_headers=tuple(args.headers),
        auth_file=args.auth_file,
        auth_scope=args.auth_scope,
        auth_realm=args.auth_realm,
        public=not is_loopback(args.bind),
        allow_anonymous_writes=args.allow_anonymous_writes,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_password_file=args.tls_password_file,
        proxy_protocol=args.proxy_protocol,
        trusted_proxies=tuple(args.trusted_proxies),
    )


def unusable_root(root: Path) -> str | None:
    """Why the server could not serve ``root`` (which is a directory), or None.

    Tried rather than inferred from the mode bits: root ignores them, a dropped capability or an
    ACL changes them, and the kernel's answer is the one the server will get for every request.
    Listing needs read permission; reaching anything inside needs search (execute) permission.
    """
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as exc:
        return f"cannot read it ({exc.strerror})"
    try:
        os.stat(os.path.join(root, "."))
    except OSError as exc:
        return f"cannot enter it ({exc.strerror})"
    return None


def url_for(address: Address, scheme: str = "http") -> str:
    host, port = address[0], address[1]
    return f"{scheme}://[{host}]:{port}/" if ":" in host else f"{scheme}://{host}:{port}/"


def safety_notes(config: Config) -> tuple[list[str], list[str]]:
    """What the start-up banner adds beyond loopback: (banner lines, warnings)."""
    banner: list[str] = []
    warnings: list[str] = []
    if not config.public:
        return banner, warnings
    if config.auth_file is not None:
        warnings.append(
            "warning: Basic credentials cross the network in cleartext here; serve over TLS "
            "(HTTPS) so that passwords cannot be read on the way"
        )
        banner.append(
            f"Accounts from {config.auth_file} are needed for writes"
            if config.auth_scope == "write"
            else f"Accounts from {config.auth_file} are needed for every request"
        )
    elif config.read_only:
        pass
    elif config.allow_anonymous_writes:
        warnings.append("warning: anyone who can reach this address may PUT and DELETE files")
    else:
        banner.append(
            "Writes are off (403): listening beyond loopback without --auth-file."
            " Add accounts with --auth-file, or pass --allow-anonymous-writes"
        )
    return banner, warnings


def _bare_trace(argv: Sequence[str]) -> list[str]:
    """``--trace`` followed by anything but a trace form is the bare flag (text).

    argparse would take the next word as the form, so ``--trace 8000`` (the positional port
    after it, a habit from the days when --trace took no value) would be an error.
    """
    out = list(argv)
    for i, word in enumerate(out[:-1]):
        if word == "--trace" and out[i + 1] not in TRACE_FORMS:
            out[i] = "--trace=text"
    return out


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["hash-password"]:
        from .hasher import hash_password_main

        return hash_password_main(argv[1:])
    parser = build_parser(prog or program_name())
    args = parser.parse_args(_bare_trace(argv))
    config = config_from(args, parser)
    if 0 < config.port < 1024:
        print(f"warning: port {config.port} is privileged (below 1024)", file=sys.stderr)
    budget = raise_nofile_limit(
        config.max_connections, warn=args.max_connections is not None, max_zips=config.max_zips
    )
    config = dataclasses.replace(config, max_uploads=budget.max_uploads)
    if config.tls_cert is not None:
        # Checked here, before any listener or worker: a certificate that cannot be used is a
        # usage error at start (status 2), not a worker that dies, nor a traceback.
        try:
            make_context(config)
        except TlsSetupError as exc:
            print(f"{parser.prog}: TLS: {exc}", file=sys.stderr)
            return 2
    scheme = "https" if config.tls_cert is not None else "http"
    stale = remove_stale_temps(str(config.root))
    if stale:
        print(f"removed {stale} unfinished upload(s) left by an earlier run", file=sys.stderr)
    try:
        passed = [p.sock for p in activation.listen_fds()]
    except activation.ActivationError as exc:
        print(f"{parser.prog}: socket activation: {exc}", file=sys.stderr)
        return 1
    if passed:
        where = ", ".join(activation.describe(s) for s in passed)
        print(f"socket activation: serving {where}; -p/--port and -b/--bind are ignored")
        # -b was ignored, so it cannot say whether we face the network: the sockets do. Without
        # this, a socket systemd bound to 0.0.0.0 took anonymous writes, as if on loopback.
        public = not all(is_loopback(str(s.getsockname()[0])) for s in passed)
        config = dataclasses.replace(config, public=public)
    try:
        # Opened here, before any worker, so that a log file we cannot open is named as such
        # (each worker opens its own later; the supervisor's parent serves no traffic).
        logs = Logs(config)
    except OSError as exc:
        logs_by_path = {
            str(config.stats_csv): "--stats-csv",
            str(config.response_log): "--response-log",
        }
        option = logs_by_path.get(exc.filename, "log")
        parser.error(f"cannot open the {option} file {exc.filename!r}: {exc.strerror}")
    if args.workers > 1:
        from . import supervisor

        logs.close()
        try:
            listeners = supervisor.listeners_for(config, args.workers, passed)
        except OSError as exc:
            print(
                f"{parser.prog}: cannot listen on {config.host}:{config.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        address = listeners[0][0].getsockname()
        status_sock = None
        if config.status is not None:
            try:
                status_sock = open_listener(*config.status)
            except OSError as exc:
                host, port = config.status
                print(f"{parser.prog}: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
                return 1
            # Where each worker leaves its snapshot for the others (watch.StatusShare).
            config = dataclasses.replace(
                config, status_dir=Path(tempfile.mkdtemp(prefix="evloop-status-"))
            )
        banner, warnings = safety_notes(config)
        for line in warnings:
            print(line, file=sys.stderr)
        print(
            f"Serving {config.root} on {url_for(address, scheme)} with {args.workers} workers",
            flush=True,
        )
        for line in banner:
            print(line, flush=True)
        if status_sock is not None:
            print(f"Status page on {url_for(status_sock.getsockname(), scheme)}", flush=True)
            if config.auth_file is None and not is_loopback(config.status[0]):  # type: ignore[index]
                print(_OPEN_STATUS, file=sys.stderr)
        try:
            return supervisor.run(config, listeners, status_sock)
        finally:
            if config.status_dir is not None:
                shutil.rmtree(config.status_dir, ignore_errors=True)
    try:
        server = Server(config, logs)
        address = server.adopt(passed) if passed else server.bind()
        if config.status is not None:
            status_at = server.bind_status()
    except TlsSetupError as exc:  # the files changed since the check above
        print(f"{parser.prog}: TLS: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f"{config.host}:{config.port}"
        print(f"{parser.prog}: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    banner, warnings = safety_notes(config)
    for line in warnings:
        print(line, file=sys.stderr)
    print(f"Serving {config.root} on {url_for(address, scheme)}", flush=True)
    for line in banner:
        print(line, flush=True)
    if config.status is not None:
        print(f"Status page on {url_for(status_at, scheme)}", flush=True)
        if config.auth_file is None and not is_loopback(config.status[0]):
            print(_OPEN_STATUS, file=sys.stderr)
    if config.faults is not None:
        print(f"warning: {config.faults.describe()} (a teaching aid: slower)", file=sys.stderr)

    signals = 0

    def stop(_signum: int, _frame: object) -> None:
        # The first asks for a graceful stop (the server says what it waits for), the second
        # stops now: the loop's finally still closes every socket and flushes the logs.
        nonlocal signals
        signals += 1
        if signals > 1:
            print("stopping now: transfers in flight are cut short", file=sys.stderr, flush=True)
            raise SystemExit(0)
        server.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    # SIGHUP re-reads the TLS certificate and key (new connections get them; with --workers
    # the supervisor's new generation does). Without TLS it is ignored rather than fatal.
    signal.signal(signal.SIGHUP, lambda _signum, _frame: server.request_reload())
    signal.set_wakeup_fd(server.wakeup_fd(), warn_on_full_buffer=False)
    server.serve_forever()
    return 0
