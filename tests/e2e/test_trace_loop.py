"""--trace shows the loop (issue 16): wake-ups, bytes per step, EAGAIN, timers, transitions.

JSON lines must parse and follow the state table: for each connection, each transition starts
where the last one ended, is a pair of ``TRANSITIONS``, says what the connection waits for, and
its byte counts only grow."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from evloop_httpd.faults import Faults
from evloop_httpd.states import INTEREST, TRANSITIONS, ConnState, Input

from ..helpers import (
    DEADLINE_S,
    Client,
    connect,
    get,
    read_serving_port,
    running,
    spawn_cli,
    wait_until,
)

STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d{6} ")
NAMES = {0: "none", 1: "read", 2: "write", 3: "read|write"}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    return root


def finish(proc: subprocess.Popen[str]) -> str:
    """Stop the server as Ctrl+C does; its stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err
    return err


def records(path: Path) -> list[dict[str, object]]:
    lines = path.read_text().splitlines()
    assert lines
    out = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) for r in out)
    return out


def check_follows_the_table(recs: list[dict[str, object]]) -> dict[int, list[dict[str, object]]]:
    by_conn: dict[int, list[dict[str, object]]] = {}
    for r in recs:
        assert {"time", "worker", "event"} <= r.keys()
        if r["event"] == "transition":
            by_conn.setdefault(r["connection"], []).append(r)  # type: ignore[arg-type]
    for steps in by_conn.values():
        assert steps[0]["from"] == "READING_HEADERS"
        previous_bytes = (0, 0)
        for before, after in itertools.pairwise(steps):
            assert after["from"] == before["to"]
        for step in steps:
            old, inp, new = ConnState[step["from"]], Input[step["input"]], ConnState[step["to"]]  # type: ignore[misc]
            assert TRANSITIONS.get((old, inp), ConnState.CLOSED) is new
            assert step["interest"] in (NAMES[INTEREST[new]], "write")  # write: parked
            counts = (step["bytes"]["in"], step["bytes"]["out"])  # type: ignore[index]
            assert counts[0] >= previous_bytes[0] and counts[1] >= previous_bytes[1]
            previous_bytes = counts
        assert steps[-1]["to"] == "CLOSED"
    return by_conn


def test_json_trace_lines_parse_and_follow_the_table(site: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    proc = spawn_cli(
        "-p", "0", "-d", str(site), "-q", "--trace", "json", "--trace-file", str(trace),
        "--idle-timeout", "0.3",
    )  # fmt: skip
    port = read_serving_port(proc)
    with Client(port, recv_size=65536) as c:
        for path in ("/small.txt", "/missing", "/big.bin"):
            c.send(get(path))
            c.read_response()
    idle = Client(port)  # left to time out
    idle.send(get("/small.txt"))
    idle.read_response()
    assert idle.closed_by_peer()
    idle.close()
    err = finish(proc)
    assert "trace" not in err  # all of it went to the file
    recs = records(trace)
    by_conn = check_follows_the_table(recs)
    assert len(by_conn) == 2
    first = by_conn[min(by_conn)]
    served = [s for s in first if s["input"] in ("HEAD_COMPLETE", "ERROR")]  # 404: ERROR
    assert [s["request"] for s in served] == [
        "GET /small.txt HTTP/1.1",
        "GET /missing HTTP/1.1",
        "GET /big.bin HTTP/1.1",
    ]
    assert first[-1]["bytes"]["out"] > 1024 * 1024  # type: ignore[index,operator]
    events = {r["event"] for r in recs}
    assert {"wakeup", "io", "transition", "timer"} <= events
    timers = [r for r in recs if r["event"] == "timer"]
    assert timers[0]["what"] == "idle" and timers[0]["connection"] == max(by_conn)
    wakeups = [r for r in recs if r["event"] == "wakeup"]
    assert all(r["slept_s"] >= 0 and r["ready"] >= 0 for r in wakeups)  # type: ignore[operator]
    received = [r["recv"] for r in recs if r["event"] == "io" and "recv" in r]
    sent_by_clients = [get(p) for p in ("/small.txt", "/missing", "/big.bin", "/small.txt")]
    assert sum(received) == sum(map(len, sent_by_clients))  # type: ignore[arg-type]
    assert received.count(0) == 1  # the first client's end of stream; the idle one timed out


def test_text_trace_every_line_timestamped_with_the_loop_in_it(site: Path) -> None:
    with running(site, trace=True, faults=Faults(send_buffer=4096)) as srv:
        # The client reads nothing until the server has met a full connection: its window
        # (64 KiB) and the send buffer cannot hold the 1 MiB. A client that reads at once can
        # keep up with every sendfile, and then there is no EAGAIN to show (1 run in ~8).
        with Client(connect(srv.port, rcvbuf=64 * 1024)) as c:
            c.send(get("/big.bin"))
            assert wait_until(lambda: "EAGAIN on sendfile" in srv.stderr.getvalue())
            assert c.read_response().status == 200
        assert wait_until(lambda: "--PEER_EOF--> CLOSED" in srv.stderr.getvalue())
    lines = [line for line in srv.stderr.getvalue().splitlines() if " trace " in line]
    assert all(STAMP.match(line) for line in lines)
    text = "\n".join(lines)
    assert re.search(r"trace select woke after \d+\.\d{3} ms: \d+ ready", text)
    assert re.search(r"trace #1 recv \d+ B", text)
    assert re.search(r"trace #1 sent \d+ B", text)
    assert "trace #1 EAGAIN on sendfile: wait for the selector" in text
    assert "trace #1 recv end of stream" in text
    assert '"GET /big.bin HTTP/1.1"' in text
