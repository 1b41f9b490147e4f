"""Precompressed sidecars (foo.js.br, foo.js.gz) chosen by Accept-Encoding, over real sockets."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from ..helpers import get, request, running

JS = b"console.log('hello');\n" * 50


@pytest.fixture
def site(www: Path) -> Path:
    (www / "app.js").write_bytes(JS)
    (www / "app.js.gz").write_bytes(gzip.compress(JS))
    (www / "app.js.br").write_bytes(b"pretend-brotli:" + JS[:40])
    (www / "only.css").write_bytes(b"body{}\n")
    (www / "only.css.gz").write_bytes(gzip.compress(b"body{}\n"))
    return www


def ae(value: str) -> str:
    return f"Accept-Encoding: {value}\r\n"


def test_brotli_preferred_then_gzip_then_identity(site: Path) -> None:
    with running(site) as srv:
        br = request(srv.port, get("/app.js", ae("gzip, deflate, br")))
        assert br.status == 200
        assert br.header("Content-Encoding") == "br"
        assert br.body == (site / "app.js.br").read_bytes()
        assert br.header("Content-Type") == "text/javascript; charset=utf-8"
        assert br.header("Vary") == "Accept-Encoding"
        gz = request(srv.port, get("/app.js", ae("gzip")))
        assert gz.header("Content-Encoding") == "gzip"
        assert gzip.decompress(gz.body) == JS
        assert gz.header("Vary") == "Accept-Encoding"
        plain = request(srv.port, get("/app.js"))
        assert plain.header("Content-Encoding") is None
        assert plain.body == JS
        assert plain.header("Vary") == "Accept-Encoding"  # a sidecar exists: still varies
        etags = {br.header("ETag"), gz.header("ETag"), plain.header("ETag")}
        assert len(etags) == 3


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("br;q=0, gzip", "gzip"),
        ("br;q=0.2, gzip;q=0.9", "gzip"),
        ("*", "br"),
        ("*;q=0", None),
        ("identity", None),
        ("gzip;q=0, br;q=0", None),
    ],
)
def test_q_values(site: Path, accept: str, coding: str | None) -> None:
    with running(site) as srv:
        reply = request(srv.port, get("/app.js", ae(accept)))
        assert reply.header("Content-Encoding") == coding


def test_only_gzip_sidecar(site: Path) -> None:
    with running(site) as srv:
        assert request(srv.port, get("/only.css", ae("br"))).header("Content-Encoding") is None
        assert request(srv.port, get("/only.css", ae("br, gzip"))).header("Content-Encoding") == (
            "gzip"
        )
        no_sidecar = request(srv.port, get("/hello.txt", ae("br, gzip")))
        assert no_sidecar.header("Vary") is None
        assert no_sidecar.header("Content-Encoding") is None


def test_validators_and_ranges_apply_to_the_variant(site: Path) -> None:
    with running(site) as srv:
        gz = request(srv.port, get("/app.js", ae("gzip")))
        etag = gz.header("ETag")
        again = request(srv.port, get("/app.js", ae("gzip") + f"If-None-Match: {etag}\r\n"))
        assert again.status == 304
        assert again.header("ETag") == etag
        assert again.header("Vary") == "Accept-Encoding"
        # The gzip variant's ETag does not validate the identity variant.
        other = request(srv.port, get("/app.js", f"If-None-Match: {etag}\r\n"))
        assert other.status == 200
        assert other.body == JS
        part = request(srv.port, get("/app.js", ae("gzip") + "Range: bytes=0-9\r\n"))
        assert part.status == 206
        assert part.header("Content-Encoding") == "gzip"
        size = len((site / "app.js.gz").read_bytes())
        assert part.header("Content-Range") == f"bytes 0-9/{size}"
        assert part.body == (site / "app.js.gz").read_bytes()[:10]


def test_head_of_variant(site: Path) -> None:
    with running(site) as srv:
        reply = request(srv.port, get("/app.js", ae("br"), method="HEAD"), head_request=True)
        assert reply.header("Content-Encoding") == "br"
        assert reply.header("Content-Length") == str((site / "app.js.br").stat().st_size)


def test_flag_turns_it_off(site: Path) -> None:
    with running(site, precompressed=False) as srv:
        reply = request(srv.port, get("/app.js", ae("br, gzip")))
        assert reply.header("Content-Encoding") is None
        assert reply.header("Vary") is None
        assert reply.body == JS


def test_unsafe_or_stale_sidecars_are_ignored(site: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.br"
    outside.write_bytes(b"secret")
    (site / "app.js.br").unlink()
    (site / "app.js.br").symlink_to(outside)
    os.mkfifo(site / "only.css.gz.tmp")
    (site / "only.css.gz").unlink()
    (site / "only.css.gz").symlink_to(site / "only.css.gz.tmp")  # a FIFO inside the root
    with running(site) as srv:
        reply = request(srv.port, get("/app.js", ae("br")))
        assert reply.header("Content-Encoding") is None
        assert reply.body == JS
        fifo = request(srv.port, get("/only.css", ae("gzip")))
        assert fifo.header("Content-Encoding") is None
        assert fifo.body == b"body{}\n"
    # A sidecar older than its original no longer matches it.
    (site / "app.js.br").unlink()
    (site / "app.js.br").write_bytes(b"old")
    old = (site / "app.js").stat().st_mtime - 100
    os.utime(site / "app.js.br", (old, old))
    with running(site) as srv:
        stale = request(srv.port, get("/app.js", ae("br")))
        assert stale.header("Content-Encoding") is None
        assert stale.body == JS


def test_sidecar_requested_directly_is_a_plain_file(site: Path) -> None:
    with running(site) as srv:
        reply = request(srv.port, get("/app.js.gz", ae("gzip")))
        assert reply.header("Content-Encoding") is None
        assert reply.header("Content-Type") == "application/gzip"


def test_sendfile_off_serves_variant(site: Path) -> None:
    with running(site, use_sendfile=False) as srv:
        reply = request(srv.port, get("/app.js", ae("gzip")))
        assert gzip.decompress(reply.body) == JS


def test_refused_and_bodyless_variant_responses_leak_no_descriptor(site: Path) -> None:
    # History: a 412 on a sidecar variant closed the original's descriptor a second time and
    # leaked the sidecar's.
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with running(site) as srv:
        etag = request(srv.port, get("/app.js", ae("br"))).header("ETag")
        before = open_fds()
        for _ in range(40):
            assert request(srv.port, get("/app.js", ae("br") + 'If-Match: "x"\r\n')).status == 412
            assert (
                request(srv.port, get("/app.js", ae("br") + f"If-None-Match: {etag}\r\n")).status
                == 304
            )
            assert (
                request(srv.port, get("/app.js", ae("br") + "Range: bytes=99999-\r\n")).status
                == 416
            )
            head = request(srv.port, get("/app.js", ae("br"), method="HEAD"), head_request=True)
            assert head.status == 200
        assert open_fds() <= before + 5
        assert request(srv.port, get("/app.js", ae("gzip"))).header("Content-Encoding") == "gzip"
