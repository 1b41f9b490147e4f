"""DELETE (--allow-delete) over real sockets: statuses, files on disk, preconditions."""

from __future__ import annotations

from pathlib import Path

import pytest

from evloop_httpd.cli import build_parser, config_from

from ..helpers import Client, get, request, running


def delete(path: str, extra: str = "") -> bytes:
    return get(path, extra, method="DELETE")


def test_off_by_default(www: Path) -> None:
    with running(www) as srv:
        reply = request(srv.port, delete("/hello.txt"))
        assert reply.status == 405
        assert reply.header("Allow") == "GET, HEAD, OPTIONS, PUT"
    assert (www / "hello.txt").exists()


def test_allow_lists_delete_when_on_but_not_read_only(www: Path) -> None:
    with running(www, allow_delete=True) as srv:
        options = request(srv.port, get("*", method="OPTIONS"))
        assert options.header("Allow") == "GET, HEAD, OPTIONS, PUT, DELETE"
    with running(www, allow_delete=True, read_only=True) as srv:
        reply = request(srv.port, delete("/hello.txt"))
        assert reply.status == 405
        assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    assert (www / "hello.txt").exists()


def test_delete_file_then_404(www: Path) -> None:
    with running(www, allow_delete=True) as srv, Client(srv.port) as c:
        c.send(delete("/hello.txt"))
        reply = c.read_response()
        assert reply.status == 204
        assert reply.header("Connection") == "keep-alive"
        assert not (www / "hello.txt").exists()
        c.send(delete("/hello.txt"))
        assert c.read_response().status == 404
        c.send(get("/hello.txt"))
        assert c.read_response().status == 404


def test_never_root_nor_non_empty_folder(www: Path) -> None:
    (www / "empty").mkdir()
    with running(www, allow_delete=True) as srv:
        assert request(srv.port, delete("/")).status == 403
        assert request(srv.port, delete("/sub/")).status == 409
        assert request(srv.port, delete("/sub")).status == 409
        assert request(srv.port, delete("/empty/")).status == 204
        assert request(srv.port, delete("/hello.txt/")).status == 404
    assert (www / "sub" / "index.html").exists()
    assert not (www / "empty").exists()
    assert (www / "hello.txt").exists()


def test_hidden_names_and_symlinks_are_refused(www: Path, tmp_path: Path) -> None:
    (www / ".env").write_bytes(b"secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"v")
    (www / "link").symlink_to(outside)
    with running(www, allow_delete=True) as srv:
        assert request(srv.port, delete("/.env")).status == 403
        assert request(srv.port, delete("/link/victim")).status == 403
        assert request(srv.port, delete("/link")).status == 403
    assert (www / ".env").exists()
    assert (outside / "victim").exists()


def test_if_match(www: Path) -> None:
    with running(www, allow_delete=True) as srv:
        etag = request(srv.port, get("/hello.txt")).header("ETag")
        stale = request(srv.port, delete("/hello.txt", 'If-Match: "stale"\r\n'))
        assert stale.status == 412
        assert (www / "hello.txt").exists()
        weak = request(srv.port, delete("/hello.txt", f"If-Match: W/{etag}\r\n"))
        assert weak.status == 412
        ok = request(srv.port, delete("/hello.txt", f"If-Match: {etag}\r\n"))
        assert ok.status == 204
        assert not (www / "hello.txt").exists()


def test_cli_flags_reach_the_config(www: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "-d",
            str(www),
            "--listing",
            "--allow-delete",
            "--no-precompressed",
            "-H",
            "Cache-Control: max-age=60",
            "--header",
            "X-A:b",
        ]
    )
    config = config_from(args, parser)
    assert config.listing and config.allow_delete and not config.precompressed
    assert config.extra_headers == ((b"Cache-Control", b"max-age=60"), (b"X-A", b"b"))
    defaults = config_from(parser.parse_args(["-d", str(www)]), parser)
    assert not defaults.listing and not defaults.allow_delete and defaults.precompressed
    assert defaults.extra_headers == ()


@pytest.mark.parametrize(
    "bad", ["Content-Length: 5", "etag: x", "Transfer-Encoding: chunked", "no colon", "X: a\rb"]
)
def test_cli_refuses_headers_the_server_computes(
    www: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["-d", str(www), "-H", bad])
    assert exc.value.code == 2
    assert "--header" in capsys.readouterr().err
