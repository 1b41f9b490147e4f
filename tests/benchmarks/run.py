"""Benchmark evloop_httpd against nginx, Twisted and http.server on loopback.

Theory of operation
-------------------
Each round starts every installed server in turn (A B C, A B C, ...) on a fresh port of
127.0.0.1, serving one temporary docroot of three files (1 KiB, 100 KiB, 10 MiB of random
bytes, so nothing compresses). Interleaving rounds spreads slow drift of the machine (page
cache, thermal, a neighbour's load) over all servers instead of charging it to whichever ran
last; the median over rounds then discards a single disturbed run.

The server is pinned to CPU 0 and the load generator to CPU 1, so each has one core and they
never fight for it; without two CPUs the runner says so and runs unpinned. The load generator is
``wrk`` when installed (one thread, Lua scripts for ``Connection: close`` and pipelining, and a
``done`` hook printing JSON) and otherwise ``loadgen.py``, which is slower and so flagged in
the output. Idle-connection memory is always measured in-process with ``loadgen.hold_idle``:
RSS of the server process (``/proc/PID/status`` VmRSS) before and after holding N idle
keep-alive connections, plus probe GETs on one of them while all are held.

Other processes' CPU: a figure is only as good as the quiet around it. For every load the
runner reads the machine's busy time (``/proc/stat``) over the measured window and takes away
what the measurement itself used: the server (``/proc/PID/stat``, which is gone once it is
stopped, so it is read right after the load), the load generator (a child the runner reaped:
``RUSAGE_CHILDREN``) and the runner. What is left, in CPUs (1.0 = one core busy all along), is
printed next to the figure and in its own table, and the report warns when any figure had more
than ``NOT_QUIET_CPUS`` of it: docs/performance.md quotes quiet runs only.

Everything is bounded: each load by ``--duration``, each server start by a deadline, the whole
run by ``--budget`` (an estimate is printed first). Every server is started in its own session
and killed in a ``finally``; SIGTERM and SIGHUP are turned into exceptions so that ``finally``
runs on them too. The runner reports, it never asserts: targets print as met or not met.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import loadgen

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
HOST = loadgen.HOST  # loopback only

KIB = 1024
MIB = 1024 * KIB
FILES = {"small.bin": 1 * KIB, "medium.bin": 100 * KIB, "large.bin": 10 * MIB}

SERVER_CPU = 0
CLIENT_CPU = 1
START_DEADLINE_S = 20.0  # Twisted imports a lot; 20 s is far beyond any healthy start
STOP_GRACE_S = 3.0  # SIGTERM, then SIGKILL after this
IDLE_HOLD_DEADLINE_S = 60.0  # opening 10,000 connections takes a few seconds, not a minute
PROBE_COUNT = 200
OURS = "evloop_httpd"
NOT_QUIET_CPUS = 0.1  # other processes' CPU during a load above this: the figure is suspect


@dataclass(frozen=True)
class Scenario:
    """One load pattern: which file, how many connections, which request cycle, which unit."""

    key: str
    title: str
    path: str
    connections: int
    mode: loadgen.Mode
    unit: str  # "req/s" or "MiB/s"
    tls: bool = False  # HTTPS scenarios run only on HTTPS servers, the others only on plain
    status: int = 200  # the answer every request must get (checked once before the load)
    # One more request field; "{etag}" becomes the ETag the server gave the file just before.
    header: str = ""


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("small_keepalive", "1 KiB keep-alive x50", "/small.bin", 50, "keepalive", "req/s"),
    Scenario("small_newconn", "1 KiB new conn x50", "/small.bin", 50, "close", "req/s"),
    Scenario("medium_keepalive", "100 KiB keep-alive x16", "/medium.bin", 16, "keepalive", "MiB/s"),
    Scenario("large_keepalive", "10 MiB keep-alive x4", "/large.bin", 4, "keepalive", "MiB/s"),
    Scenario("small_pipelined", "1 KiB pipelined 16 x50", "/small.bin", 50, "pipeline", "req/s"),
    Scenario(
        "missing_keepalive", "404 keep-alive x50", "/missing.bin", 50, "keepalive", "req/s",
        status=404,
    ),
    Scenario(
        "notmod_keepalive", "304 If-None-Match keep-alive x50", "/small.bin", 50, "keepalive",
        "req/s", status=304, header="If-None-Match: {etag}",
    ),
    Scenario(
        "tls_small_keepalive", "HTTPS 1 KiB keep-alive x50", "/small.bin", 50, "keepalive",
        "req/s", tls=True,
    ),
    Scenario(
        "tls_small_newconn", "HTTPS 1 KiB new conn x50", "/small.bin", 50, "close", "req/s",
        tls=True,
    ),
    Scenario(
        "tls_large_keepalive", "HTTPS 10 MiB keep-alive x4", "/large.bin", 4, "keepalive",
        "MiB/s", tls=True,
    ),
)  # fmt: skip
PIPELINE_DEPTH = 16
# The idle scenario yields three metrics; each is a row of the tables like a load scenario.
IDLE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("idle_bytes_per_conn", "idle memory per connection", "B/conn"),
    ("idle_probe_p50_ms", "probe p50 while idle held", "ms"),
    ("idle_probe_p99_ms", "probe p99 while idle held", "ms"),
    ("tls_idle_bytes_per_conn", "HTTPS idle memory per connection", "B/conn"),
)
TLS_IDLE = 2000  # idle HTTPS connections for the memory figure (each costs a full handshake)
OURS_TLS = "evloop_httpd-tls"
NGINX_TLS = "nginx-tls"


# --- servers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to find and start one server; ``missing`` returns why it cannot run, or None."""

    name: str
    missing: Callable[[], str | None]
    command: Callable[[int, Path, Path], list[str]]  # (port, docroot, workdir) -> argv
    cwd: Path | None = None
    env: dict[str, str] | None = None
    tls: bool = False  # serves HTTPS with the run's certificate (tls_files)


def tls_files(docroot: Path) -> tuple[Path, Path]:
    """The run's certificate and key: next to the docroot, made once by make_certificate."""
    return docroot.parent / "tls" / "cert.pem", docroot.parent / "tls" / "key.pem"


def make_certificate(docroot: Path) -> None:
    """A throwaway certificate for 127.0.0.1 (trustme, the test extra; else openssl)."""
    cert, key = tls_files(docroot)
    cert.parent.mkdir(exist_ok=True)
    try:
        import trustme
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return
    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))


def _ours_missing() -> str | None:
    if (REPO_ROOT / "evloop_httpd" / "__main__.py").exists():
        return None
    if importlib.util.find_spec("evloop_httpd") is not None:
        return None
    return "evloop_httpd/__main__.py not found (server not merged yet?)"


def _nginx_binary() -> str | None:
    # /usr/sbin is not on every user's PATH, and Debian puts nginx there.
    sbin = Path("/usr/sbin/nginx")
    return shutil.which("nginx") or (str(sbin) if sbin.exists() else None)


def _nginx_command(port: int, docroot: Path, work: Path, tls: bool = False) -> list[str]:
    # One worker in the foreground, with no master: one process whose RSS is the whole server,
    # matched to ours, which is also one process on one core. tcp_nopush stays at its default
    # (off): with it on, pipelined responses wait out the 40 ms delayed ACK (18k vs 57k req/s).
    temp = work / "nginx-temp"
    temp.mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {HOST}:{port}{" ssl" if tls else ""};
        root {docroot};
        {_nginx_tls(docroot) if tls else ""}
    }}
}}
"""
    )
    binary = _nginx_binary() or "nginx"
    # -e: even the error log of start-up goes to our temp dir, not /var/log/nginx.
    return [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")]


def _nginx_tls(docroot: Path) -> str:
    # The same policy as ours (tls.py): TLS 1.2 and 1.3, ECDHE with AES-GCM or ChaCha20 for
    # 1.2, server preference, resumption by tickets and a session cache.
    cert, key = tls_files(docroot)
    return f"""ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
        ssl_prefer_server_ciphers on;
        ssl_session_cache builtin:20480;
        ssl_session_tickets on;"""


def _ours_command(root: Path) -> Callable[[int, Path, Path], list[str]]:
    def command(port: int, docroot: Path, work: Path) -> list[str]:
        return [sys.executable, "-m", "evloop_httpd", "-p", str(port), "-d", str(docroot),
                "-b", HOST, "-q"]  # fmt: skip

    return command


def before_spec(ref: str, work: Path) -> ServerSpec:
    """Ours at an earlier commit (``git archive REF``), for a before/after in one run."""
    tree = work / f"before-{ref}"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", ref], capture_output=True, check=True, timeout=60
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True, timeout=60)
    return ServerSpec(
        f"{OURS}@{ref}", lambda: None, _ours_command(tree), cwd=tree, env={"PYTHONPATH": str(tree)}
    )


# ThreadingHTTPServer with HTTP/1.1 so keep-alive works; silent like the others; a listen
# backlog above the default 5 so the idle scenario's connects are not dropped at the door.
HTTP_SERVER_WRAPPER = """\
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
handler = functools.partial(Handler, directory=sys.argv[2])
Server(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
"""

SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(
        OURS,
        _ours_missing,
        lambda port, docroot, work: [
            sys.executable, "-m", "evloop_httpd", "-p", str(port), "-d", str(docroot),
            "-b", HOST, "-q",
        ],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT)},
    ),
    ServerSpec(
        "nginx",
        lambda: None if _nginx_binary() else "nginx not installed (apt-get install -y nginx)",
        _nginx_command,
    ),
    ServerSpec(
        OURS_TLS,
        _ours_missing,
        lambda port, docroot, work: [
            sys.executable, "-m", "evloop_httpd", "-p", str(port), "-d", str(docroot),
            "-b", HOST, "-q", "--tls-cert", str(tls_files(docroot)[0]),
            "--tls-key", str(tls_files(docroot)[1]),
        ],
        cwd=REPO_ROOT,
        env={"PYTHONPATH": str(REPO_ROOT)},
        tls=True,
    ),
    ServerSpec(
        NGINX_TLS,
        lambda: None if _nginx_binary() else "nginx not installed (apt-get install -y nginx)",
        lambda port, docroot, work: _nginx_command(port, docroot, work, tls=True),
        tls=True,
    ),
    ServerSpec(
        "twisted",
        lambda: None
        if importlib.util.find_spec("twisted") is not None
        else "twisted not installed (pip install twisted)",
        # --log-level=warn drops the per-request access log, as -q does for ours.
        lambda port, docroot, work: [
            sys.executable, "-m", "twisted", "--log-level=warn", "web",
            "--listen", f"tcp:{port}:interface={HOST}", "--path", str(docroot),
        ],
    ),
    ServerSpec(
        "http.server",
        lambda: None,
        lambda port, docroot, work: [
            sys.executable, "-c", HTTP_SERVER_WRAPPER, str(port), str(docroot),
        ],
    ),
)  # fmt: skip


class Terminated(Exception):
    """SIGTERM or SIGHUP arrived; raised so that every ``finally`` runs and kills servers."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def free_port() -> int:
    """Return a port the kernel just had free on 127.0.0.1 (racy, but only we bind here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pin(pid: int, cpu: int | None) -> None:
    """Pin a process to one CPU; silently a no-op where affinity is unavailable."""
    if cpu is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(pid, {cpu})


def pin_prefix(cpu: int | None) -> list[str]:
    """``taskset`` pins before exec, so even threads a program starts at once inherit it."""
    if cpu is None or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def client_tls() -> ssl.SSLContext:
    # Loopback to a certificate this run made: encryption is what is measured, not trust.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_get(port: int, path: str, timeout: float = 2.0, tls: bool = False) -> tuple[int, bytes]:
    """One blocking GET on a fresh connection; returns (status, body)."""
    raw = socket.create_connection((HOST, port), timeout=timeout)
    with client_tls().wrap_socket(raw) if tls else raw as sock:
        sock.sendall(loadgen.build_request(path, port, close=True))
        reader = loadgen.ResponseReader()
        chunks: list[bytes] = []
        while True:
            data = sock.recv(loadgen.RECV_BYTES)
            if not data:
                raise ConnectionError("EOF before a complete response")
            chunks.append(data)
            if reader.feed(data):
                break
        raw = b"".join(chunks)
        body = raw[raw.index(b"\r\n\r\n") + 4 :]
        return reader.last_status, body


def response_head(
    port: int, path: str, header: str = "", tls: bool = False, timeout: float = 2.0
) -> tuple[int, dict[str, str]]:
    """One blocking GET (with ``header``) on a fresh connection: the status and the fields."""
    raw = socket.create_connection((HOST, port), timeout=timeout)
    with client_tls().wrap_socket(raw) if tls else raw as sock:
        sock.sendall(loadgen.build_request(path, port, close=True, header=header))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(loadgen.RECV_BYTES)
            if not chunk:
                raise ConnectionError("EOF before a complete head")
            data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields


def scenario_header(scenario: Scenario, port: int) -> str:
    """The scenario's extra field for this server, checked to get the scenario's status."""
    header = scenario.header
    if "{etag}" in header:
        fields = response_head(port, scenario.path, tls=scenario.tls)[1]
        etag = fields.get("etag")
        if etag is not None:
            header = header.replace("{etag}", etag)
        elif "last-modified" in fields:
            # Twisted's static files have no ETag: its 304 is for If-Modified-Since, the
            # nearest like-for-like (a date compare instead of a tag compare).
            header = f"If-Modified-Since: {fields['last-modified']}"
        else:
            raise RuntimeError(f"{scenario.path}: no ETag or Last-Modified to send back")
    status = response_head(port, scenario.path, header, tls=scenario.tls)[0]
    if status != scenario.status:
        raise RuntimeError(f"{scenario.path} with {header!r}: {status}, not {scenario.status}")
    return header


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` and its threads, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(pid: int, max_s: float = 10.0, busy_fraction: float = 0.1) -> float:
    """Wait until ``pid`` uses under ``busy_fraction`` of a CPU; return the seconds waited.

    After the idle scenario closes N connections, a server may need a while to notice all the
    EOFs (http.server has N threads to wake and end); a load started meanwhile would measure
    that clean-up, not the server.
    """
    start = time.monotonic()
    window_s = 0.2
    with contextlib.suppress(OSError):
        while time.monotonic() - start < max_s:
            used = cpu_seconds(pid)
            time.sleep(window_s)
            if cpu_seconds(pid) - used < busy_fraction * window_s:
                break
    return time.monotonic() - start


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy (all CPUs), from /proc/stat; None without
    /proc. Busy is everything but idle and iowait; steal is another guest's, so also not us."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(f) for f in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest and guest_nice (fields 9-10) are already counted in user and nice
    total = sum(ticks[:8])
    return (total - idle) / os.sysconf("SC_CLK_TCK")


class OthersMeter:
    """Other processes' CPU over a window: machine busy time minus the measurement's own."""

    def __init__(self, server_pid: int | None) -> None:
        """``server_pid``: a process that is neither this one nor a child it will reap."""
        self.pid = server_pid
        self.busy = machine_busy_s()
        self.server = _cpu_or_none(server_pid)
        self.children = _rusage_s(resource.RUSAGE_CHILDREN)
        self.runner = _rusage_s(resource.RUSAGE_SELF)
        self.started = time.monotonic()

    def stop(self) -> float | None:
        """Other processes' CPU in CPUs (seconds of CPU per second of window), or None."""
        busy, server = machine_busy_s(), _cpu_or_none(self.pid)
        window = time.monotonic() - self.started
        if busy is None or self.busy is None or server is None or self.server is None:
            return None
        ours = (
            (server - self.server)
            + (_rusage_s(resource.RUSAGE_CHILDREN) - self.children)
            + (_rusage_s(resource.RUSAGE_SELF) - self.runner)
        )
        # Ticks are 10 ms, so a short window reads a little either way: never below zero.
        return max(0.0, (busy - self.busy) - ours) / window if window > 0 else None


def _cpu_or_none(pid: int | None) -> float | None:
    if pid is None:
        return 0.0
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


def _rusage_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def vm_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc (the kernel's own accounting)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RunningServer:
    """A started server: its process, port and log; ``stop`` is idempotent."""

    def __init__(self, spec: ServerSpec, proc: subprocess.Popen[bytes], port: int, log: Path):
        self.spec = spec
        self.proc = proc
        self.port = port
        self.log = log

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        # Own session, so the group is exactly this server and whatever it spawned.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_GRACE_S)


@contextlib.contextmanager
def running(
    spec: ServerSpec, docroot: Path, work: Path, server_cpu: int | None
) -> Iterator[RunningServer]:
    """Start ``spec``, wait (bounded) until it serves the small file, and always stop it."""
    port = free_port()
    log = work / f"{spec.name}.log"
    env = dict(os.environ)
    if spec.env:
        for name, value in spec.env.items():
            env[name] = value + (os.pathsep + env[name] if name in env else "")
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            pin_prefix(server_cpu) + spec.command(port, docroot, work),
            cwd=spec.cwd or work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(spec, proc, port, log)
    try:
        pin(proc.pid, server_cpu)
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if http_get(port, "/small.bin", timeout=1.0, tls=spec.tls)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not answering after {START_DEADLINE_S:.0f} s")
            time.sleep(0.05)
        yield server
    finally:
        server.stop()


def verify_files(port: int, docroot: Path, tls: bool = False) -> None:
    """Refuse to measure a server that serves the wrong bytes: speed of wrong answers is moot."""
    for name in FILES:
        status, body = http_get(port, "/" + name, timeout=10.0, tls=tls)
        want = hashlib.sha256((docroot / name).read_bytes()).hexdigest()
        if status != 200 or hashlib.sha256(body).hexdigest() != want:
            raise RuntimeError(f"/{name}: status {status}, {len(body)} bytes, content mismatch")


# --- load ----------------------------------------------------------------------------------


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %.0f, "bytes": %.0f, "duration_us": %.0f, "connect": %.0f, '
    .. '"read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}\\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""

WRK_SCRIPTS: dict[str, str] = {
    "keepalive": WRK_DONE,
    # wrk reconnects by itself when a response says Connection: close.
    "close": 'wrk.headers["Connection"] = "close"\n' + WRK_DONE,
    # wrk counts the requests in the returned buffer and waits for that many responses.
    "pipeline": f"""
init = function(args)
  local r = {{}}
  for i = 1, {PIPELINE_DEPTH} do r[i] = wrk.format() end
  req = table.concat(r)
end
request = function() return req end
"""
    + WRK_DONE,
}


@dataclass
class Measurement:
    """One scenario on one server in one round: the figure plus what could make it suspect."""

    value: float | None
    requests: int = 0
    errors: int = 0
    note: str = ""
    others_cpu: float | None = None  # other processes' CPU during the window (OthersMeter)


def run_wrk(
    scenario: Scenario,
    port: int,
    duration: int,
    work: Path,
    client_cpu: int | None,
    header: str = "",
) -> loadgen.LoadResult:
    scheme = "https" if scenario.tls else "http"
    script = work / f"wrk-{scenario.key}.lua"
    extra = ""
    if header:
        name, _, value = header.partition(":")
        # Lua long brackets: an ETag's quotes need no escaping.
        extra = f"wrk.headers[ [==[{name.strip()}]==] ] = [==[{value.strip()}]==]\n"
    script.write_text(extra + WRK_SCRIPTS[scenario.mode])
    argv = [
        *pin_prefix(client_cpu),
        "wrk", "-t1", f"-c{scenario.connections}", f"-d{duration}s", "--timeout", "5s",
        "-s", str(script), f"{scheme}://{HOST}:{port}{scenario.path}",
    ]  # fmt: skip
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 30, check=False
    ).stdout
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            raw = json.loads(line[len("WRKJSON ") :])
            result = loadgen.LoadResult(
                requests=int(raw["requests"]),
                bytes=int(raw["bytes"]),
                duration_s=raw["duration_us"] / 1e6,
            )
            for kind in result.errors:
                result.errors[kind] = int(raw[kind])
            return result
    raise RuntimeError(f"wrk printed no summary:\n{out[-800:]}")


def run_python_loadgen(
    scenario: Scenario, port: int, duration: float, client_cpu: int | None, header: str = ""
) -> loadgen.LoadResult:
    argv = [
        *pin_prefix(client_cpu),
        sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--path", scenario.path,
        "-c", str(scenario.connections), "-d", str(duration), "--mode", scenario.mode,
        "--depth", str(PIPELINE_DEPTH), "--header", header,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed:\n{proc.stderr[-800:]}")
    raw = json.loads(proc.stdout.strip().splitlines()[-1])
    return loadgen.LoadResult(**raw)


def measure_load(
    scenario: Scenario,
    port: int,
    duration: float,
    use_wrk: bool,
    work: Path,
    client_cpu: int | None,
    server_pid: int,
) -> Measurement:
    header = ""
    if scenario.header or scenario.status != 200:
        try:
            header = scenario_header(scenario, port)
        except (RuntimeError, OSError, ValueError, IndexError) as exc:
            return Measurement(None, note=f"not measured: {exc}")  # e.g. no ETag to send back
    meter = OthersMeter(server_pid)
    if use_wrk:
        result = run_wrk(scenario, port, max(1, round(duration)), work, client_cpu, header)
    else:
        result = run_python_loadgen(scenario, port, duration, client_cpu, header)
    others = meter.stop()
    if scenario.status != 200:
        # Both generators count any other status as an error (wrk: >= 400); the one expected
        # here was checked before the load.
        result.errors["status"] = 0
    errors = sum(result.errors.values())
    if result.duration_s <= 0 or result.requests == 0:
        note = f"no responses, errors {result.errors}"
        return Measurement(None, result.requests, errors, note, others)
    if scenario.unit == "MiB/s":
        # Bytes received, headers included: the same count from wrk and from loadgen.
        value = result.bytes / MIB / result.duration_s
    else:
        value = result.requests / result.duration_s
    note = "" if errors == 0 else f"errors {result.errors}"
    return Measurement(value, result.requests, errors, note, others)


def measure_idle(pid: int, port: int, count: int, probes: int) -> dict[str, Measurement]:
    """RSS per held idle keep-alive connection, and probe latency while they are held."""
    gc_settle_s = 0.5  # let the server finish any post-request frees before reading RSS
    time.sleep(gc_settle_s)
    before = vm_rss_kib(pid)
    held, failed = loadgen.hold_idle(port, "/small.bin", count, IDLE_HOLD_DEADLINE_S)
    try:
        time.sleep(gc_settle_s)
        after = vm_rss_kib(pid)
        samples: list[float] = []
        if held:
            # Probe on a held connection: the server is then at exactly N connections, so a
            # max_connections of N (ours defaults to 10,000) does not turn probes away.
            samples = loadgen.probe_latencies(held[0], port, "/small.bin", probes, 15.0)
        alive = loadgen.count_still_open(held[1:]) + (1 if held else 0)
    finally:
        for sock in held:
            sock.close()
    note = f"held {len(held)}/{count}"
    if failed or alive != len(held):
        note += f", failed {failed}, still open {alive}"
    per_conn = (after - before) * KIB / len(held) if held else None
    result = {"idle_bytes_per_conn": Measurement(per_conn, len(held), failed, note)}
    if len(samples) >= 10:
        ordered = sorted(samples)
        p99_index = min(len(ordered) - 1, int(len(ordered) * 0.99))
        result["idle_probe_p50_ms"] = Measurement(statistics.median(ordered), len(samples))
        result["idle_probe_p99_ms"] = Measurement(ordered[p99_index], len(samples))
    else:
        miss = Measurement(None, len(samples), note=f"only {len(samples)} probes answered")
        result["idle_probe_p50_ms"] = result["idle_probe_p99_ms"] = miss
    return result


def measure_tls_idle(pid: int, port: int, count: int) -> Measurement:
    """RSS per held idle HTTPS keep-alive connection (one full handshake and one GET each)."""
    time.sleep(0.5)
    before = vm_rss_kib(pid)
    ctx = client_tls()
    held: list[ssl.SSLSocket] = []
    failed = 0
    request = loadgen.build_request("/small.bin", port)
    end = time.monotonic() + IDLE_HOLD_DEADLINE_S
    try:
        while len(held) + failed < count and time.monotonic() < end:
            try:
                sock = ctx.wrap_socket(socket.create_connection((HOST, port), timeout=5.0))
                sock.sendall(request)
                reader = loadgen.ResponseReader()
                while not reader.feed(sock.recv(loadgen.RECV_BYTES) or b"!"):
                    pass
                held.append(sock)
            except (OSError, loadgen.ResponseError):
                failed += 1
        time.sleep(0.5)
        after = vm_rss_kib(pid)
    finally:
        for sock in held:
            sock.close()
    note = f"held {len(held)}/{count}" + (f", failed {failed}" if failed else "")
    per_conn = (after - before) * KIB / len(held) if held else None
    return Measurement(per_conn, len(held), failed, note)


# --- orchestration -------------------------------------------------------------------------


def make_docroot(path: Path) -> None:
    # Random bytes: no server can win by compressing, and no cache can dedupe blocks.
    for name, size in FILES.items():
        (path / name).write_bytes(os.urandom(size))


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit toward the hard one; return the soft limit in force.

    Servers inherit it, so ours, Twisted and http.server can hold the idle connections too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def estimate_seconds(
    n_servers: int, rounds: int, duration: float, idle: int, n_loads: int
) -> float:
    start_s = 1.5  # start, readiness, verification of three files
    idle_s = 1.5 + idle / 3000 + 0.5 if idle else 0.0  # observed opening rate here
    load_s = n_loads * (max(1, round(duration)) + 0.7)
    return n_servers * rounds * (start_s + idle_s + load_s)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    selected = [s for s in SERVERS if s.name in args.servers]
    tmp_root = Path(tempfile.mkdtemp(prefix="evloop-bench-before-"))
    if args.before:
        # Ours at the earlier commit runs right after ours in each round: interleaved A/B.
        selected.insert(selected.index(SERVERS[0]) + 1 if SERVERS[0] in selected else 0,
                        before_spec(args.before, tmp_root))  # fmt: skip
    specs: list[ServerSpec] = []
    skipped: dict[str, str] = {}
    for spec in selected:
        reason = spec.missing()
        if reason:
            skipped[spec.name] = reason
            print(f"skip {spec.name}: {reason}")
        else:
            specs.append(spec)
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk") is not None)
    if args.loadgen == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk, but wrk is not installed (apt-get install -y wrk)")
    if not use_wrk:
        print("load generator: loadgen.py (Python; wrk not installed or not chosen).")
        print("  Figures above ~15k req/s measure the client, not the server.")

    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    server_cpu: int | None = SERVER_CPU
    client_cpu: int | None = CLIENT_CPU
    if not {SERVER_CPU, CLIENT_CPU} <= cpus:
        print(f"only CPUs {sorted(cpus)} available: running unpinned")
        server_cpu = client_cpu = None
    pin(os.getpid(), client_cpu)  # the runner itself is the client in the idle scenario

    idle = args.idle
    fd_limit = raise_fd_limit(idle + 1024)
    if fd_limit < idle + 256:
        idle = max(0, fd_limit - 256)
        print(f"RLIMIT_NOFILE is {fd_limit}: idle connections reduced to {idle}")

    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        # Two cores and both are ours: anything else running shifts every figure.
        print(f"warning: load average {load_before:.1f} before start; figures will be noisy")
    if "idle" not in args.scenarios:
        idle = 0
    estimate = estimate_seconds(len(specs), args.rounds, args.duration, idle, len(args.loads))
    budget = args.budget if args.budget else 2 * estimate + 60
    print(
        f"servers: {', '.join(s.name for s in specs) or 'none'}; rounds {args.rounds}; "
        f"{args.duration:g} s per load; idle {idle}; "
        f"loadgen {'wrk' if use_wrk else 'loadgen.py'}"
    )
    print(f"estimated time: {estimate / 60:.1f} min (budget {budget / 60:.1f} min)")
    started = time.monotonic()

    rounds: list[dict[str, dict[str, dict[str, Any]]]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="evloop-bench-") as tmp:
        docroot = Path(tmp) / "root"
        docroot.mkdir()
        make_docroot(docroot)
        if any(spec.tls for spec in specs):
            make_certificate(docroot)
        for round_no in range(args.rounds):
            per_server: dict[str, dict[str, dict[str, Any]]] = {}
            rounds.append(per_server)
            for spec in specs:
                if time.monotonic() - started > budget:
                    failures.append(f"round {round_no + 1} {spec.name}: over budget, not run")
                    continue
                work = Path(tmp) / f"{spec.name}-r{round_no}"
                work.mkdir()
                print(f"round {round_no + 1}/{args.rounds}: {spec.name} ...", flush=True)
                results = per_server.setdefault(spec.name, {})
                try:
                    run_server(
                        spec, args, idle, use_wrk, docroot, work, server_cpu, client_cpu, results
                    )
                except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                    failures.append(f"round {round_no + 1} {spec.name}: {exc}")
                    print(f"  {spec.name} failed: {exc}")
    shutil.rmtree(tmp_root, ignore_errors=True)
    return {
        "meta": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "pinned": server_cpu is not None,
            "loadgen": "wrk" if use_wrk else "loadgen.py",
            "rounds": args.rounds,
            "duration_s": args.duration,
            "idle_connections": idle,
            "pipeline_depth": PIPELINE_DEPTH,
            "tls_idle_connections": args.tls_idle,
            "elapsed_s": round(time.monotonic() - started, 1),
            "loadavg_before": round(load_before, 2),
            "loadavg_after": round(os.getloadavg()[0], 2),
        },
        "servers": [s.name for s in specs],
        "before": args.before,
        "skipped": skipped,
        "failures": failures,
        "rounds": rounds,
    }


def run_server(
    spec: ServerSpec,
    args: argparse.Namespace,
    idle: int,
    use_wrk: bool,
    docroot: Path,
    work: Path,
    server_cpu: int | None,
    client_cpu: int | None,
    results: dict[str, dict[str, Any]],
) -> None:
    with running(spec, docroot, work, server_cpu) as server:
        verify_files(server.port, docroot, spec.tls)
        # Idle first, on a server that has served only a few requests: after the load
        # scenarios its heap has grown, and freed memory would hide new per-connection cost.
        if spec.tls and args.tls_idle:
            m = measure_tls_idle(server.proc.pid, server.port, args.tls_idle)
            results["tls_idle_bytes_per_conn"] = m.__dict__
            print(f"  HTTPS idle: {_fmt(m.value, 'B/conn')} B/conn, {m.note}", flush=True)
            wait_quiet(server.proc.pid)
        if idle and not spec.tls:
            for key, m in measure_idle(server.proc.pid, server.port, idle, args.probes).items():
                results[key] = m.__dict__
            m = results["idle_bytes_per_conn"]
            settled = wait_quiet(server.proc.pid)
            print(
                f"  idle: {_fmt(m['value'], 'B/conn')} B/conn, {m['note']}; "
                f"settled in {settled:.1f} s",
                flush=True,
            )
        for scenario in args.loads:
            if scenario.tls != spec.tls:
                continue
            if server.proc.poll() is not None:
                raise RuntimeError(f"server died:\n{server.log_tail()}")
            m = measure_load(
                scenario, server.port, args.duration, use_wrk, work, client_cpu, server.proc.pid
            )
            results[scenario.key] = m.__dict__
            note = f"  ({m.note})" if m.note else ""
            figure = f"{_fmt(m.value, scenario.unit)} {scenario.unit}  {_others(m.others_cpu)}"
            print(f"  {scenario.key}: {figure}{note}", flush=True)


# --- reporting -----------------------------------------------------------------------------


def metric_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, title, unit) of every metric some round measured, failed ones included."""
    measured = {key for r in report["rounds"] for metrics in r.values() for key in metrics}
    rows = [(s.key, s.title, s.unit) for s in SCENARIOS] + list(IDLE_METRICS)
    return [row for row in rows if row[0] in measured]


def summarize(report: dict[str, Any]) -> None:
    """Add medians, spreads, ratios and target checks to ``report`` in place."""
    rows = metric_rows(report)
    medians: dict[str, dict[str, float | None]] = {}
    spreads: dict[str, dict[str, float | None]] = {}
    for server in report["servers"]:
        medians[server] = {}
        spreads[server] = {}
        for key, _, _ in rows:
            values = [
                r[server][key]["value"]
                for r in report["rounds"]
                if server in r and key in r[server] and r[server][key]["value"] is not None
            ]
            med = statistics.median(values) if values else None
            medians[server][key] = med
            spreads[server][key] = (
                (max(values) - min(values)) / abs(med) if med and len(values) > 1 else None
            )
    report["metrics"] = [{"key": k, "title": t, "unit": u} for k, t, u in rows]
    report["medians"] = medians
    report["spreads"] = spreads
    ratios: dict[str, dict[str, float | None]] = {}
    if OURS in medians:
        for ref in medians:
            if ref == OURS:
                continue
            ratios[ref] = {
                key: _ratio(medians[OURS].get(key), medians[ref].get(key)) for key, _, _ in rows
            }
    report["ratios"] = ratios
    report["targets"] = check_targets(medians, report["meta"]["idle_connections"])
    report["targets"] += tls_targets(medians) + before_after(medians, report.get("before"))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def check_targets(medians: dict[str, dict[str, float | None]], idle: int) -> list[dict[str, Any]]:
    """The issue's targets as met / not met / n/a, with the figures they compare."""
    ours = medians.get(OURS, {})

    def rel(key: str, ref: str, factor: float, text: str) -> dict[str, Any]:
        a, b = ours.get(key), medians.get(ref, {}).get(key)
        if OURS not in medians or ref not in medians or a is None or b is None:
            missing = OURS if OURS not in medians or a is None else ref
            return {
                "target": text,
                "status": "n/a",
                "detail": f"no figure for {missing} (not run or failed)",
            }
        ratio = a / b
        status = "met" if ratio >= factor else "not met"
        return {"target": text, "status": status, "detail": f"{ratio:.2f}x", "ratio": ratio}

    # Issue 17's targets (the earlier issues' Twisted ones are still printed beside them).
    targets = [
        rel("small_keepalive", "twisted", 3.0, "small keep-alive >= 3x Twisted"),
        rel("small_keepalive", "nginx", 0.6, "small keep-alive >= 0.6x nginx"),
        rel("small_newconn", "twisted", 2.0, "new conn per request >= 2x Twisted"),
        rel("small_newconn", "nginx", 0.9, "new conn per request >= 0.9x nginx"),
        rel("medium_keepalive", "twisted", 3.0, "medium keep-alive >= 3x Twisted"),
        rel("medium_keepalive", "nginx", 0.9, "100 KiB keep-alive >= 0.9x nginx"),
        rel("large_keepalive", "nginx", 0.9, "10 MiB keep-alive >= 0.9x nginx"),
        rel("large_keepalive", "http.server", 1.1, "10 MiB keep-alive >= 1.1x http.server"),
    ]
    for key, what in (("missing_keepalive", "404"), ("notmod_keepalive", "304")):
        targets.append(rel(key, "twisted", 2.5, f"{what} keep-alive >= 2.5x Twisted"))
        a, b = ours.get(key), ours.get("small_keepalive")
        text = f"{what} keep-alive >= 0.8x our cached 200"
        if a is None or b is None:
            targets.append({"target": text, "status": "n/a", "detail": f"no figure for {OURS}"})
        else:
            status = "met" if a >= 0.8 * b else "not met"
            targets.append({"target": text, "status": status, "detail": f"{a / b:.2f}x"})
    pipe, keep = ours.get("small_pipelined"), ours.get("small_keepalive")
    text = "pipelined >= 2x our keep-alive"
    if pipe is None or keep is None:
        targets.append(
            {"target": text, "status": "n/a", "detail": f"no figure for {OURS} (not run or failed)"}
        )
    else:
        status = "met" if pipe >= 2 * keep else "not met"
        targets.append({"target": text, "status": status, "detail": f"{pipe / keep:.2f}x"})
    mem, p99 = ours.get("idle_bytes_per_conn"), ours.get("idle_probe_p99_ms")
    text = "idle <= 1 KiB/conn at 10,000, probe p99 < 5 ms"
    if mem is None or p99 is None:
        targets.append(
            {"target": text, "status": "n/a", "detail": f"no figure for {OURS} (not run or failed)"}
        )
    else:
        status = "met" if mem <= 1024 and p99 < 5.0 else "not met"
        detail = f"{mem:.0f} B/conn, p99 {p99:.2f} ms"
        if idle != 10_000:
            detail += f" (measured at {idle}; run --idle 10000 for the target)"
        targets.append({"target": text, "status": status, "detail": detail})
    return targets


def _relative(
    medians: dict[str, dict[str, float | None]], ours: str, ref: str, key: str, factor: float,
    text: str,
) -> dict[str, Any]:  # fmt: skip
    a, b = medians.get(ours, {}).get(key), medians.get(ref, {}).get(key)
    if a is None or b is None:
        missing = ours if a is None else ref
        return {"target": text, "status": "n/a", "detail": f"no figure for {missing}"}
    ratio = a / b
    status = "met" if ratio >= factor else "not met"
    return {"target": text, "status": status, "detail": f"{ratio:.2f}x", "ratio": ratio}


def tls_targets(medians: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    """Issue 12: HTTPS against nginx with the same certificate and policy."""
    targets = [
        _relative(medians, OURS_TLS, NGINX_TLS, "tls_small_keepalive", 0.4,
                  "HTTPS small keep-alive >= 0.4x nginx"),
        _relative(medians, OURS_TLS, NGINX_TLS, "tls_small_newconn", 0.6,
                  "HTTPS new conn per request >= 0.6x nginx"),
        _relative(medians, OURS_TLS, NGINX_TLS, "tls_large_keepalive", 0.6,
                  "HTTPS 10 MiB files >= 0.6x nginx"),
    ]  # fmt: skip
    ours = medians.get(OURS_TLS, {}).get("tls_idle_bytes_per_conn")
    theirs = medians.get(NGINX_TLS, {}).get("tls_idle_bytes_per_conn")
    if ours is not None or theirs is not None:
        detail = f"ours {_fmt(ours, 'B/conn')} B/conn, nginx {_fmt(theirs, 'B/conn')} B/conn"
        targets.append(
            {"target": "HTTPS idle memory (report)", "status": "report", "detail": detail}
        )
    return targets


def before_after(
    medians: dict[str, dict[str, float | None]], before: str | None
) -> list[dict[str, Any]]:
    """Plain figures after / before (``--before REF``): the split must not cost throughput."""
    if not before:
        return []
    ref = f"{OURS}@{before}"
    return [
        _relative(medians, OURS, ref, key, 0.95, f"plain {title} after/before >= 0.95")
        for key, title in (
            ("small_keepalive", "keep-alive"),
            ("small_pipelined", "pipelined"),
            ("large_keepalive", "10 MiB"),
        )
    ]


def _others(cpus: float | None) -> str:
    if cpus is None:
        return "[others: unknown]"
    flag = "  NOT QUIET" if cpus > NOT_QUIET_CPUS else ""
    return f"[others {cpus:.2f} CPU{flag}]"


def others_table(report: dict[str, Any]) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """The most other processes' CPU any round saw, per server and load; and the warnings."""
    worst: dict[str, dict[str, float | None]] = {}
    noisy: list[str] = []
    for server in report["servers"]:
        worst[server] = {}
        for m in report["metrics"]:
            seen = [
                r[server][m["key"]].get("others_cpu")
                for r in report["rounds"]
                if server in r and m["key"] in r[server]
            ]
            values = [v for v in seen if v is not None]
            worst[server][m["key"]] = max(values) if values else None
            if values and max(values) > NOT_QUIET_CPUS:
                noisy.append(f"{server} {m['title']}")
    return worst, noisy


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "req/s" or unit == "B/conn":
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:,.1f}"


def print_tables(report: dict[str, Any]) -> None:
    servers: list[str] = report["servers"]
    rows = [(m["key"], m["title"], m["unit"]) for m in report["metrics"]]
    title_w = max((len(t) for _, t, _ in rows), default=20) + 9
    col_w = 16
    print()
    print(
        f"Medians over {report['meta']['rounds']} round(s), loadgen {report['meta']['loadgen']}"
        " (± = range across rounds / median)"
    )
    print("scenario".ljust(title_w) + "".join(s.rjust(col_w) for s in servers))
    for key, title, unit in rows:
        cells = []
        for server in servers:
            cell = _fmt(report["medians"][server][key], unit)
            spread = report["spreads"][server][key]
            if spread is not None:
                cell += f" ±{spread * 100:.0f}%"
            cells.append(cell.rjust(col_w))
        print(f"{title} [{unit}]".ljust(title_w) + "".join(cells))
    if report["ratios"]:
        refs = list(report["ratios"])
        print()
        print("Ratios ours / reference (for B/conn and ms lower is better)")
        print("scenario".ljust(title_w) + "".join(f"/{r}".rjust(col_w) for r in refs))
        for key, title, unit in rows:
            cells = []
            for ref in refs:
                ratio = report["ratios"][ref][key]
                cells.append(("-" if ratio is None else f"{ratio:.2f}x").rjust(col_w))
            print(f"{title} [{unit}]".ljust(title_w) + "".join(cells))
    worst, noisy = others_table(report)
    loads = [row for row in rows if any(worst[s][row[0]] is not None for s in servers)]
    if loads:
        print()
        print("Other processes' CPU during the load, most over rounds [CPUs; 1.0 = one core]")
        print("scenario".ljust(title_w) + "".join(s.rjust(col_w) for s in servers))
        for key, title, unit in loads:
            cells = [
                ("-" if worst[s][key] is None else f"{worst[s][key]:.2f}").rjust(col_w)
                for s in servers
            ]
            print(f"{title} [{unit}]".ljust(title_w) + "".join(cells))
    if noisy:
        print()
        print(
            f"WARNING: the machine was not quiet (other processes above {NOT_QUIET_CPUS} CPU)"
            f" during {len(noisy)} figure(s), e.g. {'; '.join(noisy[:3])}: rerun before quoting."
        )
    print()
    print("Targets")
    for t in report["targets"]:
        print(f"  [{t['status']:>7}] {t['target']}: {t['detail']}")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    for failure in report["failures"]:
        print(f"failure: {failure.splitlines()[0]}")
    notes = [
        f"{server} {key} round {i + 1}: {m['note']}"
        for i, r in enumerate(report["rounds"])
        for server, metrics in r.items()
        for key, m in metrics.items()
        if m.get("errors")
    ]
    for note in notes:
        print(f"note: {note}")
    meta = report["meta"]
    print(
        f"elapsed {meta['elapsed_s']:.0f} s; load average {meta['loadavg_before']:.1f} before,"
        f" {meta['loadavg_after']:.1f} after (the run itself adds about 2)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark evloop_httpd against reference servers on 127.0.0.1."
    )
    names = [s.name for s in SERVERS]
    parser.add_argument("--quick", action="store_true", help="1 round, 2 s loads, 1,000 idle")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=names,
        default=names,
        metavar="NAME",
        help=f"servers to run, of: {' '.join(names)}",
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load (5)")
    parser.add_argument("--idle", type=int, default=None, help="idle connections (5000)")
    keys = [s.key for s in SCENARIOS] + ["idle"]
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=keys,
        default=keys,
        metavar="NAME",
        help=f"scenarios to run, of: {' '.join(keys)}",
    )
    parser.add_argument("--probes", type=int, default=PROBE_COUNT, help="probe GETs while idle")
    parser.add_argument(
        "--tls-idle", type=int, default=None, help=f"idle HTTPS connections ({TLS_IDLE})"
    )
    parser.add_argument(
        "--before",
        metavar="REF",
        default=None,
        help="also run ours at git commit REF, interleaved, for plain before/after ratios",
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds after which no server is started"
    )
    parser.add_argument("--json", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    args.duration = args.duration if args.duration is not None else (2.0 if quick else 5.0)
    args.idle = args.idle if args.idle is not None else (1000 if quick else 5000)
    args.loads = [s for s in SCENARIOS if s.key in args.scenarios]
    if args.tls_idle is None:
        args.tls_idle = (TLS_IDLE // 4 if quick else TLS_IDLE) if "idle" in args.scenarios else 0
    if args.rounds < 1 or args.duration <= 0 or args.idle < 0 or args.probes < 1:
        parser.error("--rounds, --duration and --probes must be positive, --idle non-negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        report = run_all(args)
    except (KeyboardInterrupt, Terminated) as exc:
        # Servers were stopped by the ``finally`` blocks on the way up.
        print(f"\ninterrupted ({type(exc).__name__}): every started server was stopped")
        return 130
    summarize(report)
    print_tables(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
