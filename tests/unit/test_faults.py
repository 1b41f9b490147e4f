"""The teaching faults (issue 16), on their own: real sockets for the send buffer, and the
effects a learner should see (partial sends, capped reads, a slower loop). Wiring comes later."""

from __future__ import annotations

import argparse
import socket
import time

import pytest

from evloop_httpd import faults as faults_mod
from evloop_httpd.faults import (
    NO_FAULTS,
    Faults,
    add_fault_options,
    apply_to_socket,
    faults_from,
    maybe_delay,
    recv_size,
)
from evloop_httpd.status import StatsCollector

DEADLINE_S = 5.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_fault_options(p)
    return p


def test_off_by_default() -> None:
    faults = faults_from(parser().parse_args([]))
    assert faults == NO_FAULTS == Faults() and not faults.active
    assert faults.describe() == "no faults"
    assert recv_size(65536, faults) == 65536


def test_options_parse_into_faults() -> None:
    args = parser().parse_args(
        ["--fault-send-buffer", "2048", "--fault-recv-cap", "7", "--fault-loop-delay", "0.05"]
    )
    faults = faults_from(args)
    assert faults == Faults(send_buffer=2048, recv_cap=7, loop_delay_s=0.05) and faults.active
    assert (
        faults.describe()
        == "teaching faults on: send buffer 2048 B, recv cap 7 B, loop delay 50 ms"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--fault-send-buffer", "0"],
        ["--fault-recv-cap", "-1"],
        ["--fault-recv-cap", "lots"],
        ["--fault-loop-delay", "nan"],
        ["--fault-loop-delay", "60"],
        ["--fault-loop-delay", "-0.1"],
    ],
)
def test_bad_values_are_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(argparse.ArgumentError):
        parser().parse_args(argv)


def test_bad_values_are_refused_by_the_config_too() -> None:
    for kwargs in ({"send_buffer": 0}, {"recv_cap": 0}, {"loop_delay_s": -1.0}):
        with pytest.raises(ValueError):
            Faults(**kwargs)  # type: ignore[arg-type]


def _pair() -> tuple[socket.socket, socket.socket]:
    # A real TCP connection on loopback: SO_SNDBUF on a Unix socketpair means something else.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=DEADLINE_S)
        server, _ = listener.accept()
    return server, client


def _fill(sock: socket.socket) -> int:
    """Bytes a non-blocking send takes before EAGAIN, the peer not reading."""
    sock.setblocking(False)
    total = 0
    chunk = b"x" * 65536
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total
    raise AssertionError("the socket never filled")


def test_tiny_send_buffer_is_set_and_makes_sends_partial() -> None:
    server, client = _pair()
    normal_server, normal_client = _pair()
    try:
        before = server.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        apply_to_socket(server, Faults(send_buffer=4096))
        after = server.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        # Linux doubles the value for its bookkeeping; other kernels keep it.
        assert after in (4096, 8192) and after < before
        # What a learner sees: EAGAIN after far fewer bytes than with the default buffer.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        normal_client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert _fill(server) < _fill(normal_server)
    finally:
        for s in (server, client, normal_server, normal_client):
            s.close()


def test_send_buffer_untouched_when_off() -> None:
    server, client = _pair()
    try:
        before = server.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        apply_to_socket(server, NO_FAULTS)
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before
    finally:
        server.close()
        client.close()


def test_recv_cap_splits_a_head_into_pieces() -> None:
    faults = Faults(recv_cap=7)
    assert recv_size(65536, faults) == 7
    assert recv_size(4, faults) == 4  # never more than the loop asked for
    server, client = _pair()
    try:
        head = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
        client.sendall(head)
        server.settimeout(DEADLINE_S)
        pieces = []
        got = b""
        while len(got) < len(head):
            piece = server.recv(recv_size(65536, faults))
            assert piece, "peer closed early"
            pieces.append(piece)
            got += piece
        assert got == head and max(map(len, pieces)) <= 7 and len(pieces) >= len(head) // 7
    finally:
        server.close()
        client.close()


def test_loop_delay_sleeps_and_shows_in_the_iteration_histogram() -> None:
    faults = Faults(loop_delay_s=0.03)
    stats = StatsCollector(time.monotonic())
    for _ in range(3):
        start = time.monotonic()
        maybe_delay(faults)
        took = time.monotonic() - start
        assert 0.03 <= took < DEADLINE_S
        stats.iteration(took, 0, time.monotonic())
    assert stats.iteration_sum_s >= 0.09


def test_loop_delay_off_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(faults_mod.time, "sleep", slept.append)
    maybe_delay(NO_FAULTS)
    assert slept == []
    maybe_delay(Faults(loop_delay_s=0.25))
    assert slept == [0.25]
