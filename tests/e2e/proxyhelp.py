"""PROXY protocol headers as balancers send them, and the CSV rows a request leaves."""

from __future__ import annotations

import csv
import ipaddress
import socket
import struct
from pathlib import Path

from ..helpers import DEADLINE_S, wait_until

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(family: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(
    command: int,
    family: int,
    src: str = "",
    dst: str = "",
    sport: int = 0,
    dport: int = 0,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: command 0 LOCAL / 1 PROXY; family 0 UNSPEC, 1 INET, 2 INET6 (STREAM)."""
    if family == 1:
        block = (
            ipaddress.IPv4Address(src).packed
            + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport)
        )
    elif family == 2:
        block = (
            ipaddress.IPv6Address(src).packed
            + ipaddress.IPv6Address(dst).packed
            + struct.pack("!HH", sport, dport)
        )
    else:
        block = b""
    payload = block + tlvs
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, (family << 4) | (1 if family else 0)])
        + struct.pack("!H", len(payload))
        + payload
    )


def csv_rows(path: Path, count: int) -> list[dict[str, str]]:
    """The first ``count`` rows of the stats CSV, once the server has written them."""

    def rows() -> list[dict[str, str]]:
        if not path.exists():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    assert wait_until(lambda: len(rows()) >= count, DEADLINE_S), rows()
    return rows()[:count]


def silent_close(sock: socket.socket, timeout: float = DEADLINE_S) -> bytes:
    """Everything the server sends before it closes (EOF or reset): b"" for a silent close."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        return got
