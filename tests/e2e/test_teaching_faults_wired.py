"""Each teaching fault, switched on in a real server, has the effect it promises (issue 16),
seen where a learner would see it: in the trace and on the status page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evloop_httpd.faults import Faults
from evloop_httpd.status import ITERATION_BUCKETS_S

from ..helpers import Client, connect, get, request, running, wait_until

BIG = 2 * 1024 * 1024


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello\n")
    (root / "big.bin").write_bytes(bytes(range(256)) * (BIG // 256))
    return root


def trace_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_recv_cap_assembles_a_head_from_pieces(site: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    config = dict(trace=True, trace_form="json", trace_file=trace, faults=Faults(recv_cap=8))
    head = get("/small.txt")
    with running(site, **config) as srv, Client(srv.port) as c:  # type: ignore[arg-type]
        c.send(head)  # in one send: the pieces are the server's doing
        reply = c.read_response()
        assert reply.status == 200 and reply.body == b"hello\n"
    recs = trace_of(trace)
    reads = [r["recv"] for r in recs if r["event"] == "io" and r.get("recv")]
    assert max(reads) <= 8  # type: ignore[type-var]
    assert sum(reads) == len(head) and len(reads) >= len(head) // 8  # type: ignore[arg-type]
    # Many reads, one request: the parser said "need more" until the blank line came.
    heads = [r for r in recs if r["event"] == "transition" and r["input"] == "HEAD_COMPLETE"]
    assert len(heads) == 1 and heads[0]["bytes"] == {"in": len(head), "out": 0}


def test_tiny_send_buffer_makes_partial_sends_and_eagain(site: Path, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    config = dict(trace=True, trace_form="json", trace_file=trace, faults=Faults(send_buffer=4096))

    def refused_a_send() -> bool:
        lines = trace.read_text().splitlines()
        return any('"eagain"' in line and '"recv"' not in line for line in lines)

    with running(site, **config) as srv:  # type: ignore[arg-type]
        with Client(connect(srv.port, rcvbuf=64 * 1024)) as c:
            c.send(get("/big.bin"))
            # Nothing is read until the server has met a full connection (the window and the
            # send buffer hold far less than the file): a client reading at once could keep
            # up with every send, leaving no EAGAIN to see.
            assert wait_until(refused_a_send)
            reply = c.read_response()
        assert reply.status == 200 and len(reply.body) == BIG
    recs = trace_of(trace)
    sends = [r["sent"] for r in recs if r["event"] == "io" and "sent" in r]
    # (An EAGAIN on recv may come first: the accept's turn reads before the request arrives.)
    eagains = [r for r in recs if r["event"] == "eagain" and r["op"] != "recv"]
    assert sum(sends) == len(reply.raw_head) + 4 + BIG  # type: ignore[arg-type]
    assert len(sends) >= 8 and max(sends) < BIG // 4  # type: ignore[type-var]
    assert eagains and {r["op"] for r in eagains} <= {"send", "sendfile"}
    # Each EAGAIN is followed by a wait for writability: a wake-up before the next send.
    i = recs.index(eagains[0])
    after = [r["event"] for r in recs[i + 1 :]]
    assert after.index("wakeup") < after.index("io")


def test_loop_delay_shows_in_every_iteration(site: Path) -> None:
    delay = 0.12
    with running(site, status=("127.0.0.1", 0), faults=Faults(loop_delay_s=delay)) as srv:
        with Client(srv.port) as c:
            for _ in range(3):  # three requests, each waiting for the last: three passes
                c.send(get("/small.txt"))
                assert c.read_response().status == 200
        reply = request(srv.status_port, get("/status.json"))
        snap = json.loads(reply.body)
    loop = snap["loop"]
    counts = loop["iteration_seconds"]["counts"]
    fast = sum(n for bound, n in zip(ITERATION_BUCKETS_S, counts, strict=False) if bound < delay)
    assert loop["iterations"] >= 3 and fast == 0  # no pass was quicker than the delay
    assert loop["iteration_seconds"]["sum"] >= delay * loop["iterations"]
    assert max(snap["recent"]["iteration_max_ms"]) >= delay * 1000
