from __future__ import annotations

from .conftest import SMALL
from .helpers import Client, RunningServer, get, request


def test_get_file(server: RunningServer) -> None:
    reply = request(server.port, get("/hello.txt"))
    assert reply.status == 200
    assert reply.body == SMALL
    assert reply.header("Content-Type") == "text/plain; charset=utf-8"


def test_large_file_small_reads(server: RunningServer) -> None:
    with Client(server.port, recv_size=65536) as c:
        c.send(get("/data.bin"))
        reply = c.read_response()
    assert reply.body == (server.root / "data.bin").read_bytes()
