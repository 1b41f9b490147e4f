"""Regenerate the trace blocks of docs/tutorial.md from a real server (issue 16).

Each scenario starts ``python -m evloop_httpd --trace`` on 127.0.0.1 port 0 in a fresh folder,
plays one client step by step, and keeps the trace lines. A client step waits for the line that
says the server has finished with the previous one, so the order of events, and with it the
trace, is the same on every run. What changes from run to run is replaced by a placeholder: the
time of day (``HH:MM:SS.ffffff``), how long ``select`` slept (``… ms``) and client ports
(``PORT``).

Usage::

    python docs/tutorial_gen.py            # print the blocks
    python docs/tutorial_gen.py --write    # rewrite them in docs/tutorial.md
    python docs/tutorial_gen.py --check    # exit 1 (with a diff) if docs/tutorial.md is stale

tests/e2e/test_tutorial.py runs ``--check``, so the tutorial cannot drift from the server.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "tutorial.md"
DEADLINE_S = 15.0
MTIME_NS = 1_767_225_600 * 10**9  # 2026-01-01: fixed, so ETag and Last-Modified are too
BLOCK = re.compile(
    r"(<!-- BEGIN generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated -->)",
    re.DOTALL,
)


def normalise(line: str) -> str:
    line = re.sub(r"^\d\d:\d\d:\d\d\.\d{6}", "HH:MM:SS.ffffff", line)
    line = re.sub(r"woke after \d+\.\d{3} ms", "woke after … ms", line)
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", line)


_started: list[subprocess.Popen[str]] = []  # killed at the end if a scenario failed midway


class Traced:
    """One server process with --trace, its stderr collected line by line."""

    def __init__(self, root: Path, *extra: str) -> None:
        command = [sys.executable, "-m", "evloop_httpd", "-p", "0", "-d", str(root), "-q"]
        self.proc = subprocess.Popen(
            [*command, "--trace", *extra],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _started.append(self.proc)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("Serving "), line
        self.port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        self.status_port = 0
        if "--status" in extra:
            line = self.proc.stdout.readline()
            self.status_port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def wait_for(self, needle: str, count: int = 1) -> None:
        """Until ``needle`` is in ``count`` trace lines (the server is done with a step)."""
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            with self._lock:
                if sum(needle in line for line in self.lines) >= count:
                    return
            time.sleep(0.01)  # polling the server's output, not a guess at its timing
        raise TimeoutError(f"the trace never showed {needle!r}:\n" + "\n".join(self.lines))

    def stop(self) -> list[str]:
        """Stop the server; the trace up to the last line of the last step."""
        with self._lock:
            kept = [normalise(line) for line in self.lines if " trace " in line]
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=DEADLINE_S)
        self._reader.join(DEADLINE_S)
        return kept


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S)


_unread: dict[int, bytes] = {}  # bytes read past a response, per socket (a pipelined pair)


def read_response(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """One response with a Content-Length body (enough for these scenarios)."""
    data = _unread.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed early: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    length = int(match.group(1)) if match else 0
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    if rest[length:]:
        _unread[sock.fileno()] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


def site(folder: Path) -> Path:
    root = folder / "www"
    root.mkdir()
    files = {"hello.txt": b"Hello, loop!\n", "a.txt": b"A\n", "b.txt": b"B\n"}
    for name, body in files.items():
        (root / name).write_bytes(body)
        os.utime(root / name, ns=(MTIME_NS, MTIME_NS))
    return root


# The scenarios. Each returns the lines of its block.


def one_request(root: Path) -> list[str]:
    srv = Traced(root)
    with connect(srv.port) as c:
        srv.wait_for("accepted from")
        c.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        read_response(c)
        srv.wait_for("--RESPONSE_DONE-->")
    srv.wait_for("--PEER_EOF--> CLOSED")
    return srv.stop()


def pipelined(root: Path) -> list[str]:
    srv = Traced(root)
    with connect(srv.port) as c:
        srv.wait_for("accepted from")
        c.sendall(
            b"GET /a.txt HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /b.txt HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        read_response(c)
        read_response(c)
        srv.wait_for("--RESPONSE_DONE-->", 2)
    srv.wait_for("--PEER_EOF--> CLOSED")
    return srv.stop()


def expect_continue(root: Path) -> list[str]:
    srv = Traced(root)
    body = b"hello, disk\n"
    with connect(srv.port) as c:
        srv.wait_for("accepted from")
        c.sendall(
            b"PUT /notes.txt HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % len(body)
        )
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += c.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        srv.wait_for("--CONTINUE_SENT-->")
        c.sendall(body)
        read_response(c)
        srv.wait_for("--RESPONSE_DONE-->")
    srv.wait_for("--PEER_EOF--> CLOSED")
    return srv.stop()


def slow_client(root: Path) -> list[str]:
    srv = Traced(root, "--head-timeout", "0.5")  # ample: the head must come first
    with connect(srv.port) as c:
        srv.wait_for("accepted from")
        # Well after the accept: the head's deadline then moves by more than select's 1 ms
        # resolution, and the wake-up for the old one always shows (see the tutorial).
        time.sleep(0.05)
        c.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: loc")  # ... and nothing more
        srv.wait_for("recv ")
        srv.wait_for("timer fired")
        read_response(c)
        srv.wait_for("--RESPONSE_DONE_CLOSE--> LINGERING")
        assert c.recv(1) == b""  # the server's FIN: it will send nothing more
    srv.wait_for("--PEER_EOF--> CLOSED")
    return srv.stop()


def tls_handshake(root: Path) -> list[str]:
    import trustme  # a test dependency: throwaway certificates

    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    pem = root.parent / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    srv = Traced(root, "--tls-cert", str(pem))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with connect(srv.port) as raw:
        srv.wait_for("accepted from")
        with context.wrap_socket(raw, server_hostname="localhost") as c:  # the handshake
            srv.wait_for("--HANDSHAKE_DONE-->")
            c.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            read_response(c)
            srv.wait_for("--> CLOSED")  # the server ends it: the client asked to close
    lines = srv.stop()
    # The handshake takes one wake-up or two, as the kernel happens to deliver the client's
    # second flight (during the server's own call, or after it): shown as one line.
    first = next(i for i, line in enumerate(lines) if "accepted from" in line)
    done = next(i for i, line in enumerate(lines) if "--HANDSHAKE_DONE-->" in line)
    wakes = [line for line in lines[first + 1 : done] if "select woke" in line]
    assert wakes and len(wakes) == done - first - 1, lines
    hidden = "HH:MM:SS.ffffff trace select woke … (the handshake: one wake-up or two)"
    return [*lines[: first + 1], hidden, *lines[done:]]


def status_page(root: Path) -> list[str]:
    srv = Traced(root, "--status", "0")
    with connect(srv.port) as idle, connect(srv.port) as busy:
        for path in (b"/hello.txt", b"/a.txt", b"/missing"):
            busy.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path)
            read_response(busy)
        idle.sendall(b"GET /b.txt HTTP/1.1\r\nHost: localhost\r\n\r\n")
        read_response(idle)
        srv.wait_for("--RESPONSE_DONE-->", 4)
        with connect(srv.status_port) as s:
            s.sendall(b"GET /status.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
            _, _, body = read_response(s).partition(b"\r\n\r\n")
    srv.stop()
    snap = json.loads(body)
    for key in ("time", "uptime_s"):
        snap[key] = "…"
    for row in snap["connections"]["rows"]:
        row["age_s"] = row["in_state_s"] = "…"
        row["peer"] = "127.0.0.1:PORT"
    # The loop's own counts depend on how the kernel batched events: shown on the page, not here.
    return compact(snap)


def compact(snap: dict[str, object]) -> list[str]:
    """The snapshot as indented JSON, but one connection row per line."""
    conns = snap["connections"]
    assert isinstance(conns, dict)
    rows = conns.pop("rows")
    out = ["{"]
    out.append(f'  "worker": {json.dumps(snap["worker"])}, "time": "…", "uptime_s": "…",')
    out.append('  "connections": {')
    for key, value in conns.items():
        out.append(f'    "{key}": {json.dumps(value)},')
    out.append('    "rows": [')
    for i, row in enumerate(rows):
        comma = "," if i < len(rows) - 1 else ""
        out.append(f"      {json.dumps(row, ensure_ascii=False)}{comma}")
    out.append("    ]")
    out.append("  },")
    out.append(f'  "requests": {json.dumps(snap["requests"])},')
    out.append(f'  "bytes_served": {json.dumps(snap["bytes_served"])},')
    out.append('  "loop": "…", "timers_pending": ' + json.dumps(snap["timers_pending"]) + ",")
    out.append('  "recent": "…"')
    out.append("}")
    return out


SCENARIOS: dict[str, Callable[[Path], list[str]]] = {
    "one-request": one_request,
    "pipelined": pipelined,
    "expect-continue": expect_continue,
    "slow-client": slow_client,
    "tls-handshake": tls_handshake,
    "status": status_page,
}


def generate() -> dict[str, str]:
    blocks = {}
    for name, scenario in SCENARIOS.items():
        with tempfile.TemporaryDirectory(prefix="evloop-tutorial-") as tmp:
            try:
                lines = scenario(site(Path(tmp)))
            finally:
                for proc in _started:  # a scenario that failed left its server running
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                _started.clear()
        lang = "json" if name == "status" else "text"
        blocks[name] = f"```{lang}\n" + "\n".join(lines) + "\n```\n"
    return blocks


def render(doc: str, blocks: dict[str, str]) -> str:
    seen = set()

    def fill(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in blocks:
            raise KeyError(f"docs/tutorial.md has a block no scenario makes: {name}")
        seen.add(name)
        return m.group(1) + blocks[name] + m.group(4)

    out = BLOCK.sub(fill, doc)
    missing = set(blocks) - seen
    if missing:
        raise KeyError(f"docs/tutorial.md lacks the blocks {sorted(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite the blocks of docs/tutorial.md")
    g.add_argument("--check", action="store_true", help="exit 1 if docs/tutorial.md is stale")
    args = p.parse_args(argv)
    blocks = generate()
    if not (args.write or args.check):
        for name, text in blocks.items():
            print(f"--- {name}\n{text}")
        return 0
    doc = DOC.read_text()
    fresh = render(doc, blocks)
    if args.write:
        DOC.write_text(fresh)
        return 0
    if fresh != doc:
        sys.stdout.writelines(
            difflib.unified_diff(
                doc.splitlines(True), fresh.splitlines(True), "docs/tutorial.md", "regenerated"
            )
        )
        print("docs/tutorial.md is stale: run python docs/tutorial_gen.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
