"""The connection state machine, driven by inputs only: no sockets, just a folder."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

from evloop_httpd.connection import Connection, Context
from evloop_httpd.responses import CONTINUE
from evloop_httpd.states import INTEREST, READ, TRANSITIONS, WRITE, ConnState, Input

from ..helpers import make_config

S = ConnState


class Recorder:
    """An Observer that remembers what it was told."""

    def __init__(self) -> None:
        self.bugs: list[BaseException] = []
        self.heads: list[bytes] = []
        self.done: list[tuple[int, int]] = []
        self.transitions: list[tuple[ConnState, Input, ConnState]] = []

    def transition(self, conn: Connection, old: ConnState, inp: Input, new: ConnState) -> None:
        self.transitions.append((old, inp, new))

    def response_head(self, conn: Connection, head: bytes) -> None:
        self.heads.append(head)

    def request_done(self, conn: Connection) -> None:
        self.done.append((conn.status, conn.sent))

    def bug(self, conn: Connection, exc: BaseException) -> None:
        self.bugs.append(exc)


def make(root: Path, **overrides: object) -> tuple[Connection, Recorder]:
    rec = Recorder()
    ctx = Context(make_config(root, trace=True, **overrides), rec)
    return Connection(ctx, now=0.0), rec


def flush_out(conn: Connection, now: float = 0.0) -> bytes:
    """Play the reactor: take everything the connection wants to send, file spans included."""
    sent = b""
    while conn.state in (S.WRITING_HEADERS, S.WRITING_CONTINUE, S.STREAMING_FILE):
        if conn.out:
            chunk = conn.out[conn.out_pos :][:5]  # short writes on purpose
            sent += chunk
            conn.wrote(len(chunk), now)
        else:
            data = os.pread(conn.file_fd, min(conn.file_remaining, 3), conn.file_offset)
            sent += data
            conn.streamed(len(data), now)
        if conn.state is S.WRITING_HEADERS and not conn.out and conn.file_remaining == 0:
            break
    return sent


BIG = bytes(range(256)) * 1024  # over response_cache.MAX_BODY_BYTES: streamed from the file


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "big.bin").write_bytes(BIG)
    return tmp_path


@pytest.mark.parametrize("state,inp", list(itertools.product(ConnState, Input)))
def test_every_state_input_pair_is_defined_or_closes_as_a_bug(
    root: Path, state: ConnState, inp: Input
) -> None:
    conn, rec = make(root)
    conn.state = state
    conn._fire(inp)
    expected = TRANSITIONS.get((state, inp))
    if expected is None:
        assert conn.state is S.CLOSED
        assert len(rec.bugs) == 1
    else:
        assert conn.state is expected
        assert rec.bugs == []
    assert conn.state in ConnState


def test_interest_follows_state_alone() -> None:
    assert INTEREST[S.READING_HEADERS] == READ
    assert INTEREST[S.READING_BODY] == READ
    assert INTEREST[S.LINGERING] == READ
    assert INTEREST[S.WRITING_HEADERS] == WRITE
    assert INTEREST[S.WRITING_CONTINUE] == WRITE
    assert INTEREST[S.STREAMING_FILE] == WRITE
    assert INTEREST[S.CLOSED] == 0
    assert set(INTEREST) == set(ConnState)


def test_every_state_is_reachable_and_can_close() -> None:
    # Where plain, TLS and PROXY-protocol connections start.
    reachable = {S.READING_HEADERS, S.HANDSHAKING, S.PROXY_HEADER}
    changed = True
    while changed:
        changed = False
        for (src, _), dst in TRANSITIONS.items():
            if src in reachable and dst not in reachable:
                reachable.add(dst)
                changed = True
    assert reachable == set(ConnState)
    for state in ConnState:
        if state is not S.CLOSED:
            assert (state, Input.ABORT) in TRANSITIONS


def test_small_file_goes_out_with_its_head(root: Path) -> None:
    conn, rec = make(root)
    conn.receive(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert conn.state is S.WRITING_HEADERS
    assert conn.out.endswith(b"\r\n\r\nalpha\n")
    assert conn.file_fd == -1
    wire = flush_out(conn)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert [t[1] for t in rec.transitions] == [Input.HEAD_COMPLETE, Input.RESPONSE_DONE]


def test_get_goes_through_headers_then_file_then_back(root: Path) -> None:
    conn, rec = make(root)
    conn.receive(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert conn.state is S.WRITING_HEADERS
    wire = flush_out(conn)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.endswith(b"\r\n\r\n" + BIG)
    assert conn.state is S.READING_HEADERS
    path = [(old, inp, new) for old, inp, new in rec.transitions]
    assert path == [
        (S.READING_HEADERS, Input.HEAD_COMPLETE, S.WRITING_HEADERS),
        (S.WRITING_HEADERS, Input.FILE_FOLLOWS, S.STREAMING_FILE),
        (S.STREAMING_FILE, Input.RESPONSE_DONE, S.READING_HEADERS),
    ]
    assert rec.done == [(200, len(wire))]


def test_head_sends_no_body_and_holds_no_file(root: Path) -> None:
    conn, _ = make(root)
    conn.receive(b"HEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert conn.file_fd == -1
    wire = flush_out(conn)
    assert b"Content-Length: 6\r\n" in wire
    assert wire.endswith(b"\r\n\r\n")
    assert conn.state is S.READING_HEADERS


def test_pipelined_requests_are_answered_in_order_without_new_input(root: Path) -> None:
    conn, _ = make(root)
    conn.receive(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        0.0,
    )
    # One receive, then only writes: each response ends by parsing the next buffered request.
    wire = flush_out(conn)
    statuses = re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", wire)
    assert statuses == [b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK"]
    assert conn.state is S.READING_HEADERS


def test_framing_error_answers_then_never_parses_again(root: Path) -> None:
    conn, rec = make(root)
    conn.receive(
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        0.0,
    )
    wire = flush_out(conn)
    assert wire.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in wire
    assert conn.state is S.LINGERING
    conn.receive(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert conn.state is S.LINGERING
    assert len(rec.heads) == 1  # the pipelined request was never answered
    conn.receive(b"", 0.0)
    assert conn.state is S.CLOSED


def test_idle_timeout_closes_quietly(root: Path) -> None:
    conn, rec = make(root)
    conn.on_timeout(conn.deadline - 0.001)
    assert conn.state is S.READING_HEADERS  # not yet
    conn.on_timeout(conn.deadline)
    assert conn.state is S.CLOSED
    assert rec.heads == []


def test_partial_head_timeout_answers_408(root: Path) -> None:
    conn, _rec = make(root)
    conn.receive(b"GET /a.txt HTTP/1.1\r\nHo", 1.0)
    assert conn.deadline == pytest.approx(1.0 + conn.ctx.config.timeouts.head_s)
    conn.on_timeout(conn.deadline)
    wire = flush_out(conn)
    assert wire.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert conn.state is S.LINGERING


def test_put_with_continue_then_body(root: Path) -> None:
    conn, _rec = make(root)
    conn.receive(
        b"PUT /new.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        0.0,
    )
    assert conn.state is S.WRITING_CONTINUE
    assert conn.out == CONTINUE
    conn.wrote(len(CONTINUE), 0.0)
    assert conn.state is S.READING_BODY
    conn.receive(b"12", 0.0)
    assert not (root / "new.txt").exists()  # nothing at the target until the body is whole
    conn.receive(b"345", 0.0)
    wire = flush_out(conn)
    assert wire.startswith(b"HTTP/1.1 201 Created\r\n")
    assert (root / "new.txt").read_bytes() == b"12345"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_put_aborted_by_eof_leaves_nothing(root: Path) -> None:
    conn, _ = make(root)
    conn.receive(b"PUT /a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial", 0.0)
    assert conn.state is S.READING_BODY
    conn.abort()
    assert conn.state is S.CLOSED
    assert (root / "a.txt").read_bytes() == b"alpha\n"
    assert sorted(p.name for p in root.iterdir()) == ["a.txt", "big.bin"]


def test_truncated_file_aborts_instead_of_finishing(root: Path) -> None:
    conn, _rec = make(root)
    conn.receive(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    conn.wrote(len(conn.out), 0.0)
    assert conn.state is S.STREAMING_FILE
    conn.streamed(0, 0.0)  # sendfile hit end of file before the promised length
    assert conn.state is S.CLOSED
    assert conn.file_fd == -1


def test_bug_in_handler_gives_500_and_keeps_state_machine_sane(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, rec = make(root)

    def explode(*args: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(type(conn.ctx.handler), "begin", explode)
    conn.receive(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    wire = flush_out(conn)
    assert wire.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"boom" not in wire and b"Traceback" not in wire
    assert len(rec.bugs) == 1
    assert conn.state is S.LINGERING


def test_stall_deadline_enforces_minimum_rate(root: Path) -> None:
    conn, _ = make(root, timeouts={"stall_s": 10.0, "min_rate_bytes_s": 100})
    conn.receive(b"PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n", 0.0)
    assert conn.state is S.READING_BODY
    # A byte every 5 s never trips a pure inactivity timer; the average-rate bound does.
    now = 0.0
    while conn.state is S.READING_BODY and now < 100:
        now += 5.0
        conn.on_timeout(now)
        if conn.state is S.READING_BODY:
            conn.receive(b"x", now)
    assert conn.state is S.WRITING_HEADERS
    assert now <= 15.0
    assert conn.out.startswith(b"HTTP/1.1 408 ")


def streaming_blocked(root: Path, min_rate: int) -> Connection:
    """A GET of big.bin whose head and first 200,000 bytes the kernel took at t=0, then no more."""
    conn, _ = make(root, timeouts={"stall_s": 10.0, "min_rate_bytes_s": min_rate})
    conn.receive(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    conn.wrote(len(conn.out), 0.0)
    conn.streamed(200_000, 0.0)
    assert conn.state is S.STREAMING_FILE
    return conn


def test_bytes_the_client_acknowledged_count_as_progress(root: Path) -> None:
    # History: wget and curl with --limit-rate were dropped as stalled after 30 s while reading
    # steadily: the kernel held megabytes of the file and the socket stayed unwritable.
    conn = streaming_blocked(root, min_rate=1)
    conn.check_delivery(conn.sent - 1_000, 10.0)  # the client acknowledged 1,000 bytes by now
    conn.on_timeout(10.0)
    assert conn.state is S.STREAMING_FILE
    assert conn.deadline == 20.0
    conn.check_delivery(conn.sent - 1_000, 20.0)  # nothing more since: that is a stall
    conn.on_timeout(20.0)
    assert conn.state is S.CLOSED


def test_acknowledged_bytes_do_not_relax_the_average_rate(root: Path) -> None:
    conn = streaming_blocked(root, min_rate=40_000)
    average_bound = 10.0 + 200_000 / 40_000  # phase start + stall + file bytes / min rate
    conn.check_delivery(conn.sent - 1_000, 10.0)
    conn.on_timeout(10.0)
    assert conn.deadline == average_bound
    conn.check_delivery(conn.sent - 2_000, average_bound)
    conn.on_timeout(average_bound)
    assert conn.state is S.CLOSED


def test_a_response_rate_counts_what_the_client_acknowledged(root: Path) -> None:
    # History: the rate bound counted bytes the kernel took, so 200,000 bytes in the send
    # buffer at t=0 bought 5 s beyond the stall time for a client that read 1,000 of them.
    conn, _ = make(root, timeouts={"stall_s": 10.0, "min_rate_bytes_s": 40_000})
    conn.ctx.acks_known = True
    conn.receive(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    conn.wrote(len(conn.out), 0.0)
    conn.streamed(200_000, 0.0)
    assert conn.deadline == 10.0  # nothing acknowledged yet: stall time only
    conn.check_delivery(backlog=conn.sent - 40_000, now=10.0)  # 40,000 bytes acknowledged
    conn.on_timeout(10.0)
    assert conn.state is S.STREAMING_FILE
    assert conn.deadline == 11.0  # 10 s + 40,000 bytes at 40,000 B/s, not 10 s + 5 s
    conn.check_delivery(backlog=conn.sent - 40_000, now=11.0)  # nothing more: the bound stands
    conn.on_timeout(11.0)
    assert conn.state is S.CLOSED


def test_more_follows_only_for_a_whole_bodyless_next_request(root: Path) -> None:
    from evloop_httpd.connection import more_follows

    conn, _ = make(root)
    get = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.receive(get + get, 0.0)  # the second waits in inbuf while the first is written
    assert conn.state is S.WRITING_HEADERS
    assert more_follows(conn)
    conn.inbuf = bytearray(get[:-2])  # incomplete: the batch must not wait on it
    assert not more_follows(conn)
    conn.inbuf = bytearray(b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n")
    assert not more_follows(conn)
    conn.inbuf = bytearray()
    assert not more_follows(conn)
    big, _ = make(root)
    big.receive(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n" + get, 0.0)
    assert big.file_remaining > 0
    assert not more_follows(big)  # a file follows this head


def test_lingering_lasts_the_configured_linger_time(root: Path) -> None:
    conn, _ = make(root, timeouts={"linger_s": 7.0})
    conn.receive(b"NOT HTTP\r\n\r\n", 100.0)
    assert conn.out.startswith(b"HTTP/1.1 400 ")
    conn.wrote(len(conn.out), 101.0)
    assert conn.state is S.LINGERING
    assert conn.deadline == 108.0
    conn.on_timeout(107.9)
    assert conn.state is S.LINGERING
    conn.on_timeout(108.0)
    assert conn.state is S.CLOSED


def test_a_tls_connection_starts_handshaking_with_its_own_deadline(root: Path) -> None:
    rec = Recorder()
    ctx = Context(make_config(root, trace=True, timeouts={"handshake_s": 3.0}), rec, b"https")
    conn = Connection(ctx, 100.0, handshake=True)
    assert conn.state is S.HANDSHAKING and conn.interest == READ
    assert conn.deadline == 103.0
    conn.on_timeout(102.9)
    assert conn.state is S.HANDSHAKING  # not yet
    conn.handshake_done(102.9)
    assert conn.state is S.READING_HEADERS
    assert conn.deadline == 102.9 + ctx.config.timeouts.head_s  # HTTP's own deadline now
    conn.receive(b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n", 103.0)
    assert flush_out(conn).endswith(b"alpha\n")


def test_a_handshake_that_times_out_closes_quietly(root: Path) -> None:
    rec = Recorder()
    ctx = Context(make_config(root, trace=True), rec, b"https")
    conn = Connection(ctx, 0.0, handshake=True)
    conn.on_timeout(conn.deadline)
    assert conn.state is S.CLOSED and not conn.cut_short and rec.heads == []
    assert rec.transitions == [(S.HANDSHAKING, Input.TIMEOUT, S.CLOSED)]


def test_plain_http_on_a_tls_connection_gets_a_400_then_lingers(root: Path) -> None:
    rec = Recorder()
    ctx = Context(make_config(root, trace=True), rec, b"https")
    conn = Connection(ctx, 0.0, handshake=True)
    conn.refuse_plain(b"GET / HT", 0.0)
    wire = flush_out(conn)
    assert wire.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in wire and b"https://" in wire
    assert conn.state is S.LINGERING
    head, _ = make(root)
    head.state = S.HANDSHAKING
    head.refuse_plain(b"HEAD / H", 0.0)
    assert flush_out(head).endswith(b"\r\n\r\n")  # no body after a HEAD


@pytest.mark.parametrize(
    "scheme,target,status",
    [
        (b"http", b"https://x/a.txt", 421),
        (b"http", b"HTTP://x/a.txt", 200),
        (b"https", b"http://x/a.txt", 421),
        (b"https", b"Https://x/a.txt", 200),
        (b"https", b"/a.txt", 200),
    ],
)
def test_the_target_scheme_must_be_the_connections(
    root: Path, scheme: bytes, target: bytes, status: int
) -> None:
    ctx = Context(make_config(root), Recorder(), scheme)
    conn = Connection(ctx, 0.0)
    conn.receive(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert flush_out(conn).startswith(b"HTTP/1.1 %d " % status)
    assert conn.state is S.READING_HEADERS  # a 421 keeps the connection: framing is intact


def test_out_of_budget_a_connection_parks_then_resumes_in_order(root: Path) -> None:
    conn, _ = make(root)
    budget = [True]
    conn.ctx.may_start = lambda: budget[0]
    get = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.receive(get + b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n" + get, 0.0)
    budget[0] = False  # the turn's budget is spent once the first response is under way
    first = flush_out(conn)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.count(b"HTTP/1.1 ") == 1
    assert conn.parked and conn.state is S.READING_HEADERS and conn.interest == WRITE
    conn.resume(0.0)  # a new turn starts one request whatever the budget says
    assert not conn.parked
    assert flush_out(conn).startswith(b"HTTP/1.1 404 ")
    assert conn.parked
    conn.resume(0.0)
    assert flush_out(conn).startswith(b"HTTP/1.1 200 OK\r\n")
    assert not conn.parked and not conn.inbuf and conn.interest == READ


def test_a_parked_connection_whose_client_reads_nothing_closes_quietly(root: Path) -> None:
    conn, _ = make(root)
    conn.ctx.may_start = lambda: False
    get = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.receive(get * 2, 0.0)
    flush_out(conn)
    assert conn.parked
    conn.on_timeout(conn.deadline)  # never writable all that while: no turn came
    assert conn.state is S.CLOSED and not conn.out and not conn.cut_short


def test_a_produced_body_is_never_held_back_for_a_batch(root: Path) -> None:
    # History: response_follows() inlined more_follows() before produced bodies (folder ZIPs)
    # existed, and the merge kept the inline copy without their check.
    conn, _ = make(root)
    get = b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    conn.receive(get + get, 0.0)
    assert conn.response_follows()  # a whole in-memory response, another GET waiting
    conn.produced = conn.request  # type: ignore[assignment]  # any plan: only None matters
    assert not conn.response_follows()
    conn.produced = None
