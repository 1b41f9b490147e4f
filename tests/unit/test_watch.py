"""watch.py without sockets: sharing snapshots between workers, timer names, the request line,
and the status listener's gate."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from evloop_httpd import status
from evloop_httpd.cli import build_parser, status_address
from evloop_httpd.config import Config
from evloop_httpd.connection import Context
from evloop_httpd.errors import HttpError
from evloop_httpd.parser import parse_head
from evloop_httpd.states import ConnState
from evloop_httpd.watch import (
    STALE_S,
    StatusShare,
    WatchedConnection,
    _EveryRequestGate,
    deadline_name,
    dump_snapshot,
    load_snapshot,
    request_line,
)

S = ConnState
HOSTILE = b"GET /\x1b[2J\xff\xe2\x80\xae\\x41 HTTP/1.1"


class Quiet:
    def transition(self, *args: object) -> None: ...
    def response_head(self, *args: object) -> None: ...
    def request_done(self, *args: object) -> None: ...
    def bug(self, conn: object, exc: BaseException) -> None:
        raise exc

    def debug(self, text: str) -> None: ...


def a_snapshot(worker: str = "1", wall: float = 1_790_000_000.5) -> status.Snapshot:
    stats = status.StatsCollector(100.0, worker)
    stats.request_done(200, 1234, 101.0)
    stats.request_done(404, 99, 101.5)
    stats.iteration(0.002, 3, 101.5)
    rows = [
        status.ConnRow(
            7, "10.0.0.1:5555", "STREAMING_FILE", 3.5, 1.25, 80, 9000, HOSTILE, 2, (9000, 100_000)
        ),
        status.ConnRow(8, "[::1]:6", "READING_HEADERS", 9.0, 9.0, 40, 300, None, 1),
    ]
    return status.build_snapshot(stats, rows, 102.0, wall, 2)


def test_a_shared_snapshot_renders_exactly_as_the_original() -> None:
    snap = a_snapshot()
    back = load_snapshot(dump_snapshot(snap))
    assert back == snap
    assert status.render_json(back) == status.render_json(snap)
    # The client's bytes stay escaped when the reader renders them.
    row = json.loads(status.render_json(back))["connections"]["rows"][0]
    assert row["request"] == "GET /\\x1b[2J\\xff\\u202e\\x5cx41 HTTP/1.1"  # the \\ too


@pytest.mark.parametrize("raw", [b"", b"{}", b"[1]", b'{"rows": [{"number": 1}]}', b"\xff"])
def test_a_malformed_shared_snapshot_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        load_snapshot(raw)


def test_the_others_are_read_but_not_mine_nor_stale_nor_garbage(tmp_path: Path) -> None:
    now = time.time()
    (tmp_path / "worker-1.json").write_bytes(dump_snapshot(a_snapshot("1", now)))
    (tmp_path / "worker-2.json").write_bytes(dump_snapshot(a_snapshot("2", now - 1)))
    (tmp_path / "worker-3.json").write_bytes(dump_snapshot(a_snapshot("3", now - STALE_S - 1)))
    (tmp_path / "worker-4.json").write_bytes(b"{not json")
    (tmp_path / ".worker-5.tmp").write_bytes(dump_snapshot(a_snapshot("5", now)))
    others = StatusShare(tmp_path, 1).others(now)
    assert [s.worker for s in others] == ["2"]
    os.chmod(tmp_path, 0o000)
    try:
        if os.geteuid() != 0:  # root reads it anyway
            assert StatusShare(tmp_path, 1).others(now) == []
    finally:
        os.chmod(tmp_path, 0o700)


def test_merged_snapshots_add_up() -> None:
    merged = status.merge_snapshots([a_snapshot("1"), a_snapshot("2")])
    assert merged.worker == "1,2"
    assert merged.requests_by_class["2xx"] == 2 and merged.requests_by_class["4xx"] == 2
    assert merged.open_connections == 4 and len(merged.rows) == 4


def watched(tmp_path: Path, **kw: object) -> WatchedConnection:
    ctx = Context(Config(root=tmp_path, **kw), Quiet())  # type: ignore[arg-type]
    return WatchedConnection(ctx, 50.0, ("127.0.0.1", 4000), ("127.0.0.1", 80), 3)


def test_a_watched_connection_counts_bytes_in_and_knows_its_times(tmp_path: Path) -> None:
    conn = watched(tmp_path)
    assert conn.opened_at == conn.changed_at == 50.0 and conn.bytes_in == 0
    conn.receive(b"GET / HTTP/1.1\r\n", 51.0)
    conn.receive(b"Host: x\r\n\r\n", 51.5)
    assert conn.bytes_in == 27
    assert request_line(conn) == b"GET / HTTP/1.1"  # the request being answered


def test_deadline_names(tmp_path: Path) -> None:
    conn = watched(tmp_path)
    assert deadline_name(conn) == "idle"
    conn.inbuf += b"GET"
    assert deadline_name(conn) == "head"
    for state, name in [
        (S.HANDSHAKING, "handshake"),
        (S.AUTHENTICATING, "password check"),
        (S.READING_BODY, "stall"),
        (S.STREAMING_FILE, "stall"),
        (S.LINGERING, "linger"),
    ]:
        conn.state = state
        assert deadline_name(conn) == name


def test_the_status_gate_asks_for_an_account_on_every_request(tmp_path: Path) -> None:
    from evloop_httpd import auth, hasher

    salt = b"0123456789abcdef"
    key = hasher._scrypt(b"pw", salt, 4, 8, 1, 32)
    accounts = tmp_path / "accounts"
    accounts.write_text(
        f"ann:$scrypt$ln=4,r=8,p=1${hasher._b64encode(salt)}${hasher._b64encode(key)}\n"
    )
    gate = auth.Gate(Config(root=tmp_path, auth_file=accounts), spawn=lambda: (None, None))  # type: ignore[arg-type,return-value]
    req = parse_head(b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n", Config(root=tmp_path).limits)
    assert req is not None
    conn = watched(tmp_path)
    assert gate.admit(conn, req, "127.0.0.1", 1.0) is None  # scope "write": GET is anonymous
    with pytest.raises(HttpError) as refused:
        _EveryRequestGate(gate).admit(conn, req, "127.0.0.1", 1.0)
    assert refused.value.status == 401


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("8001", ("127.0.0.1", 8001)),
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:9", ("0.0.0.0", 9)),
        ("[::1]:9", ("::1", 9)),
        (":9", ("127.0.0.1", 9)),
    ],
)
def test_status_address(text: str, want: tuple[str, int]) -> None:
    assert status_address(text) == want


@pytest.mark.parametrize("argv", [["--status", "::1:9"], ["--status", "x"], ["--status", "9:99999"],
                                  ["--trace", "yaml"], ["--fault-loop-delay", "9"],
                                  ["--fault-recv-cap", "0"]])  # fmt: skip
def test_bad_watch_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2


def test_trace_forms_on_the_command_line() -> None:
    p = build_parser()
    assert p.parse_args([]).trace is None
    assert p.parse_args(["--trace"]).trace == "text"
    assert p.parse_args(["8000", "--trace"]).trace == "text"
    assert p.parse_args(["--trace", "json"]).trace == "json"
    assert p.parse_args(["--trace=json", "8000"]).port_arg == 8000
