"""PUT throughput of evloop_httpd next to nginx (``dav_methods PUT``) and the machine's limit.

Theory of operation
-------------------
One body of ``--size-mib`` MiB (a 1 MiB block of random bytes, repeated: nothing compresses,
and the client spends no time making it) is PUT to each server twice, with ``Content-Length``
and with ``Transfer-Encoding: chunked`` (1 MiB chunks), from this process over 127.0.0.1. A
figure is the body's MiB over the time from connect to the last byte of the response: the
server has then put the whole file in place (ours renames its temp file; nginx renames its
``client_body_temp_path`` file, which is on the same disk, into the root).

The limit is the same bytes, written by this process into a pipe (with a 1 MiB pipe buffer) and
into a loopback TCP connection, that ``dd`` copies into a file on the same disk (``dd of=FILE
bs=1M``): one copy into the page cache, which is the least any server has to do with a body
that arrives on a socket; the ratios use the faster of the two. No run calls fsync (nginx does
not; ours only with ``--fsync``), so all of them measure writes into the page cache, and the
kernel's writeback of earlier rounds may overlap a later one: interleaved rounds spread that.

CPU: the server's own user+system time per upload (``/proc/PID/stat``), shown per GiB. Unlike
MiB/s it hardly depends on what else runs, so on a busy machine it is the figure to compare.

Memory: the server's VmRSS is sampled every 10 ms during each upload; the table shows the RSS
before and the highest sample. A server whose memory grows with the body shows it here.

Nothing is pinned: the client, the server and writeback share the machine's CPUs. The load
average and other processes' CPU during each upload (``run.OthersMeter``) are printed, since on
a shared machine the figures mean little when others are busy. Every upload has a deadline
(``--timeout``), each file is removed after it is checked, and servers are killed in a
``finally``. Only loopback.

Which path ours took: ours runs twice, as ``evloop_httpd`` (splice where the kernel can) and
``evloop_httpd-no-splice`` (``--no-splice``: recv + write), each with a ``--status`` listener;
after each upload the bench reads ``request_body_bytes`` from its /status.json and prints the
share of the body that was spliced (``path: splice 99.9%``) or read and written.

Usage: ``python tests/benchmarks/upload_bench.py [--size-mib 256] [--rounds 1] [--dir DIR]``
(``--size-mib 1024`` for the issue's 1 GiB; ours is started with ``--max-upload`` to match).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from run import OthersMeter, _nginx_binary, cpu_seconds, free_port, vm_rss_kib

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
HOST = "127.0.0.1"
MIB = 1024 * 1024
BLOCK = os.urandom(MIB)
START_DEADLINE_S = 20.0
RSS_SAMPLE_S = 0.01


@dataclass
class Figure:
    """One upload: MiB/s, the server's RSS before and at its peak (KiB), others' CPU."""

    mib_s: float | None
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    others_cpu: float | None = None
    note: str = ""
    server_cpu_s: float | None = None  # the server's user+system CPU for this upload
    path: str = ""  # ours: which way the body went, from /status.json


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path
    samples: list[int] = field(default_factory=list)
    status_port: int = 0  # ours: its --status listener


OURS = ("evloop_httpd", "evloop_httpd-no-splice")


def body_bytes(server: Server) -> tuple[int, int]:
    """Ours: request body bytes (spliced, copied) so far, from its /status.json."""
    url = f"http://{HOST}:{server.status_port}/status.json"
    with urllib.request.urlopen(url, timeout=10) as reply:
        counts = json.load(reply)["request_body_bytes"]
    return int(counts["spliced"]), int(counts["copied"])


def nginx_conf(work: Path, root: Path, port: int) -> Path:
    # One process, as in run.py; PUT through the DAV module; no body size limit; the body's
    # temp file on the same disk as the root, so nginx renames it into place as we do.
    temp = work / "nginx-temp"
    temp.mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_max_body_size 0;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {HOST}:{port};
        root {root};
        location / {{ dav_methods PUT; }}
    }}
}}
"""
    )
    return conf


@contextlib.contextmanager
def started(name: str, work: Path, size: int) -> Iterator[Server]:
    """Start server ``name`` over a fresh root in ``work``; wait (bounded) until it answers."""
    root = work / f"root-{name}"
    root.mkdir()
    port = free_port()
    log = work / f"{name}.log"
    status_port = 0
    if name in OURS:
        status_port = free_port()
        argv = [
            sys.executable, "-m", "evloop_httpd", "-p", str(port), "-d", str(root), "-b", HOST,
            "-q", "--max-upload", str(size + 64 * 1024),  # a form adds its part head
            "--status", f"{HOST}:{status_port}",  # to ask which path the body took
        ]  # fmt: skip
        if name.endswith("-no-splice"):
            argv.append("--no-splice")
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    else:
        binary = _nginx_binary() or "nginx"
        conf = nginx_conf(work, root, port)
        argv = [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")]
        env = dict(os.environ)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, proc, port, root, log, status_port=status_port)
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {log.read_text(errors='replace')[-800:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1.0):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not listening after {START_DEADLINE_S:.0f} s")
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)


def sample_rss(server: Server, stop: threading.Event) -> None:
    while not stop.wait(RSS_SAMPLE_S):
        with contextlib.suppress(OSError, RuntimeError):
            server.samples.append(vm_rss_kib(server.proc.pid))


FORM_BOUNDARY = b"----evloopbench7MA4YWxkTrZu0gW"  # about what a browser sends


def form_parts(name: str) -> tuple[bytes, bytes]:
    """What goes before and after the file's bytes in a one-part multipart/form-data body."""
    before = (
        b"--" + FORM_BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + name.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    return before, b"\r\n--" + FORM_BOUNDARY + b"--\r\n"


def put(
    server: Server, name: str, size: int, chunked: bool, timeout: float, form: bool = False
) -> Figure:
    """PUT ``size`` bytes to ``/name`` (or, with ``form``, POST them to ``/`` as the one file
    part of a multipart/form-data body, as a browser's upload form does); the figure, after
    checking the file that landed."""
    server.samples = []
    before = vm_rss_kib(server.proc.pid)
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(server, stop), daemon=True)
    prefix, suffix = form_parts(name) if form else (b"", b"")
    if form:
        framing = b"Content-Type: multipart/form-data; boundary=%s\r\nContent-Length: %d" % (
            FORM_BOUNDARY,
            len(prefix) + size + len(suffix),
        )
        head = b"POST / HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n\r\n" % (
            HOST.encode(),
            server.port,
            framing,
        )
    else:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % size
        head = b"PUT /%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n\r\n" % (
            name.encode(),
            HOST.encode(),
            server.port,
            framing,
        )
    counts_before = body_bytes(server) if server.status_port else (0, 0)
    meter = OthersMeter(server.proc.pid)
    cpu_before = cpu_seconds(server.proc.pid)
    sampler.start()
    try:
        started_at = time.monotonic()
        with socket.create_connection((HOST, server.port), timeout=timeout) as sock:
            sock.sendall(head + prefix)
            left = size
            while left:
                n = min(left, MIB)
                piece = BLOCK if n == MIB else BLOCK[:n]
                if chunked:
                    sock.sendmsg([b"%x\r\n" % n, piece, b"\r\n"])  # blocking: sends it all
                else:
                    sock.sendall(piece)
                left -= n
            if chunked:
                sock.sendall(b"0\r\n\r\n")
            if suffix:
                sock.sendall(suffix)
            reply = b""
            while b"\r\n\r\n" not in reply:
                data = sock.recv(65536)
                if not data:
                    break
                reply += data
        elapsed = time.monotonic() - started_at
    finally:
        stop.set()
        sampler.join()
    others = meter.stop()
    cpu = cpu_seconds(server.proc.pid) - cpu_before
    path = ""
    if server.status_port:
        counts = body_bytes(server)
        spliced, copied = (counts[0] - counts_before[0], counts[1] - counts_before[1])
        share = spliced / max(1, spliced + copied)
        path = f"splice {share:.1%}" if spliced else "read+write"
    status = reply[9:12]
    peak = max(server.samples, default=before)
    target = server.root / name
    if status not in (b"201", b"204", b"303") or target.stat().st_size != size:
        got = target.stat().st_size if target.exists() else None
        note = f"status {status!r}, {got} bytes on disk"
        return Figure(None, before, peak, others, note, cpu, path)
    with target.open("rb") as f:  # the last block is the block: the body landed whole
        f.seek(size - min(size, MIB))
        ok = f.read() == BLOCK[: min(size, MIB)]
    target.unlink()
    note = "" if ok else "content mismatch"
    return Figure(size / MIB / elapsed, before, peak, others, note, cpu, path)


def dd_limit(work: Path, size: int, timeout: float, source: str) -> Figure:
    """The same bytes from this process through a pipe (1 MiB of pipe buffer) or a loopback
    TCP connection into ``dd of=FILE``: the copy any server must make, and nothing else."""
    target = work / "dd.bin"
    meter = OthersMeter(None)  # dd is a child: counted when reaped
    started_at = time.monotonic()
    argv = ["dd", f"of={target}", "bs=1M", "iflag=fullblock", "status=none"]
    with contextlib.ExitStack() as stack:
        if source == "pipe":
            read_end, write_end = os.pipe()
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, MIB)
            proc = subprocess.Popen(argv, stdin=read_end)
            os.close(read_end)
            out = stack.enter_context(open(write_end, "wb", buffering=0))
            send = out.write
        else:
            listener = stack.enter_context(socket.create_server((HOST, 0)))
            client = stack.enter_context(socket.create_connection(listener.getsockname()))
            conn = stack.enter_context(listener.accept()[0])
            proc = subprocess.Popen(argv, stdin=conn.fileno())
            conn.close()
            send = client.sendall
        left = size
        while left:
            n = min(left, MIB)
            send(BLOCK if n == MIB else BLOCK[:n])
            left -= n
    proc.wait(timeout)
    elapsed = time.monotonic() - started_at
    others = meter.stop()
    ok = target.stat().st_size == size
    target.unlink()
    return Figure(size / MIB / elapsed if ok else None, 0, 0, others, "" if ok else "short")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="body size (1024: 1 GiB)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    parser.add_argument("--dir", type=Path, default=None, help="where roots and temps go")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per upload")
    parser.add_argument("--servers", nargs="+", default=[*OURS, "nginx"])
    args = parser.parse_args(argv)
    size = args.size_mib * MIB
    if "nginx" in args.servers and _nginx_binary() is None:
        print("skipped nginx: not installed (apt-get install -y nginx)")
        args.servers.remove("nginx")
    free = shutil.disk_usage(args.dir or tempfile.gettempdir()).free
    if free < 3 * size:
        print(f"refused: {free // MIB} MiB free where the bodies go, need {3 * size // MIB}")
        return 2
    load_before = os.getloadavg()[0]
    runs: dict[str, list[Figure]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="upload-bench-") as tmp:
        work = Path(tmp)
        for round_no in range(args.rounds):
            for server_name in args.servers:
                server_work = work / f"{server_name}-{round_no}"
                server_work.mkdir()
                with started(server_name, server_work, size) as server:
                    for chunked in (False, True):
                        label = f"{server_name} {'chunked' if chunked else 'Content-Length'}"
                        fig = put(server, f"body-{round_no}.bin", size, chunked, args.timeout)
                        runs.setdefault(label, []).append(fig)
                        print(f"round {round_no + 1}: {label}: {_describe(fig)}", flush=True)
                    if server_name == OURS[0]:  # the browser's way: one form part
                        label = "evloop_httpd POST multipart"
                        fig = put(server, f"form-{round_no}.bin", size, False, args.timeout, True)
                        runs.setdefault(label, []).append(fig)
                        print(f"round {round_no + 1}: {label}: {_describe(fig)}", flush=True)
            for source in ("pipe", "socket"):
                fig = dd_limit(work, size, args.timeout, source)
                runs.setdefault(f"dd from a {source}", []).append(fig)
                print(f"round {round_no + 1}: dd from a {source}: {_describe(fig)}", flush=True)
    report(runs, args, load_before)
    return 0


def _describe(fig: Figure) -> str:
    speed = "-" if fig.mib_s is None else f"{fig.mib_s:,.0f} MiB/s"
    rss = f", RSS {fig.rss_before_kib / 1024:.1f} -> peak {fig.rss_peak_kib / 1024:.1f} MiB"
    others = "?" if fig.others_cpu is None else f"{fig.others_cpu:.2f}"
    note = f" ({fig.note})" if fig.note else ""
    cpu = "" if fig.server_cpu_s is None else f", server CPU {fig.server_cpu_s:.2f} s"
    path = f", path: {fig.path}" if fig.path else ""
    return f"{speed}{rss if fig.rss_before_kib else ''}{cpu}{path}, others {others} CPU{note}"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def report(runs: dict[str, list[Figure]], args: argparse.Namespace, load_before: float) -> None:
    print()
    print(f"PUT of {args.size_mib} MiB, median over {args.rounds} round(s)")
    print(
        f"{'':40}{'MiB/s':>10}{'RSS before':>12}{'RSS peak':>10}{'CPU s/GiB':>11}{'others CPU':>12}"
    )
    medians: dict[str, float | None] = {}
    for label, figs in runs.items():
        medians[label] = _median([f.mib_s for f in figs])
        speed = "-" if medians[label] is None else f"{medians[label]:,.0f}"
        before = max(f.rss_before_kib for f in figs) / 1024
        peak = max(f.rss_peak_kib for f in figs) / 1024
        others = max((f.others_cpu or 0.0) for f in figs)
        rss = f"{before:>11.1f}M{peak:>9.1f}M" if peak else f"{'':>12}{'':>10}"
        cpu = _median([f.server_cpu_s for f in figs])
        per_gib = "" if cpu is None else f"{cpu * 1024 / args.size_mib:.2f}"
        print(f"{label:40}{speed:>10}{rss}{per_gib:>11}{others:>12.2f}")
    print()
    limits = [m for k, m in medians.items() if k.startswith("dd ") and m is not None]
    limit = max(limits, default=None)  # the better of pipe and socket
    for name in OURS:
        for framing in ("Content-Length", "chunked"):
            ours, theirs = medians.get(f"{name} {framing}"), medians.get(f"nginx {framing}")
            if ours is None:
                continue
            parts = []
            if theirs:
                parts.append(f"{ours / theirs:.2f}x nginx")
            if limit:
                parts.append(f"{ours / limit:.2f}x dd")
            if theirs is not None and limit:
                parts.append(f"(nginx {theirs / limit:.2f}x dd)")
            paths = sorted({f.path for f in runs[f"{name} {framing}"] if f.path})
            print(f"{name}, {framing}: {', '.join(parts) or 'n/a'}; path: {', '.join(paths)}")
    form, plain = medians.get("evloop_httpd POST multipart"), medians.get("nginx Content-Length")
    if form is not None and plain:
        print(f"ours, POST multipart: {form / plain:.2f}x nginx's PUT (Content-Length)")
    worst = max((f.others_cpu or 0.0) for figs in runs.values() for f in figs)
    print(
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
        f"other processes' CPU up to {worst:.2f}"
        + ("  WARNING: the machine was not quiet, rerun before quoting" if worst > 0.1 else "")
    )


if __name__ == "__main__":
    sys.exit(main())
