"""multipart.py: the push parser (whole, byte by byte, random splits), its limits, and the
Content-Type, Content-Disposition and file-name helpers."""

from __future__ import annotations

import random
from http import HTTPStatus

import pytest

from evloop_httpd.errors import HttpError
from evloop_httpd.multipart import (
    BodyEnd,
    Disposition,
    MultipartLimits,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
    parse_disposition,
    safe_filename,
)

B = b"XyZ"
CD_A = b'Content-Disposition: form-data; name="a"'


def events(chunks: list[bytes], boundary: bytes = B, limits: MultipartLimits | None = None):
    """Feed ``chunks``, then close; return the events with adjacent data joined."""
    parser = MultipartParser(boundary, limits)
    out: list[object] = []
    for chunk in chunks:
        for ev in parser.feed(chunk):
            if isinstance(ev, PartData):
                assert ev.data, "empty data event"
                if out and isinstance(out[-1], PartData):
                    out[-1] = PartData(out[-1].data + ev.data)
                    continue
            out.append(ev)
    parser.close()
    return out


def all_ways(body: bytes, boundary: bytes = B, limits: MultipartLimits | None = None):
    """The events for ``body`` fed whole, byte by byte and in random pieces: all must agree."""
    whole = events([body], boundary, limits)
    assert events([body[i : i + 1] for i in range(len(body))], boundary, limits) == whole
    rng = random.Random(len(body))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(1, 6))))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        assert events(pieces, boundary, limits) == whole, cuts
    return whole


def error_all_ways(body: bytes, boundary: bytes = B, limits: MultipartLimits | None = None):
    """The error for ``body``, the same whole and byte by byte."""
    with pytest.raises(HttpError) as whole:
        events([body], boundary, limits)
    with pytest.raises(HttpError) as bytewise:
        events([body[i : i + 1] for i in range(len(body))], boundary, limits)
    assert (whole.value.status, whole.value.detail) == (
        bytewise.value.status,
        bytewise.value.detail,
    )
    return whole.value


def form(*parts: tuple[bytes, bytes], boundary: bytes = B) -> bytes:
    return (
        b"".join(b"--" + boundary + b"\r\n" + h + b"\r\n\r\n" + d + b"\r\n" for h, d in parts)
        + b"--"
        + boundary
        + b"--\r\n"
    )


def test_two_parts() -> None:
    body = form((CD_A, b"hello"), (b'Content-Disposition: form-data; name="b"', b"world"))
    assert all_ways(body) == [
        PartStart(((b"content-disposition", b'form-data; name="a"'),)),
        PartData(b"hello"),
        PartEnd(),
        PartStart(((b"content-disposition", b'form-data; name="b"'),)),
        PartData(b"world"),
        PartEnd(),
        BodyEnd(),
    ]


def test_header_names_lowercased_values_stripped_and_several_fields() -> None:
    body = form((CD_A + b"  \r\nCONTENT-TYPE:\ttext/plain \t\r\nX-Empty:", b"x"))
    (start, *_) = all_ways(body)
    assert start.headers == (
        (b"content-disposition", b'form-data; name="a"'),
        (b"content-type", b"text/plain"),
        (b"x-empty", b""),
    )
    assert start.get(b"content-type") == b"text/plain"
    assert start.get(b"nope") is None


def test_empty_part_and_part_without_headers() -> None:
    body = b"--XyZ\r\n\r\n\r\n--XyZ\r\n" + CD_A + b"\r\n\r\n\r\n--XyZ--"
    assert all_ways(body) == [
        PartStart(()),
        PartEnd(),
        PartStart(((b"content-disposition", b'form-data; name="a"'),)),
        PartEnd(),
        BodyEnd(),
    ]


def test_preamble_and_epilogue_are_ignored() -> None:
    body = b"This is a preamble x--XyZ\r\n-XyZ\r\n--Xy\r\n" + form((CD_A, b"v"))[:-2]
    body += b"\r\nepilogue --XyZ\r\n garbage \x00\xff"
    assert all_ways(body) == [
        PartStart(((b"content-disposition", b'form-data; name="a"'),)),
        PartData(b"v"),
        PartEnd(),
        BodyEnd(),
    ]


def test_body_must_start_a_line_with_the_boundary() -> None:
    # "x--XyZ" is preamble: a delimiter starts a line. Nothing ever follows: no closing boundary.
    err = error_all_ways(b"x--XyZ\r\n\r\ndata\r\n--XyZ--"[:-7])
    assert err.status == HTTPStatus.BAD_REQUEST
    assert "before its first boundary" in err.detail


def test_crlf_before_delimiter_belongs_to_the_delimiter() -> None:
    # Content ending in CRLF keeps it: only the CRLF right before "--boundary" is eaten.
    body = form((CD_A, b"line\r\n"), (CD_A, b"\r\n"), (CD_A, b"\r"), (CD_A, b"\n"))
    data = [ev.data for ev in all_ways(body) if isinstance(ev, PartData)]
    assert data == [b"line\r\n", b"\r\n", b"\r", b"\n"]


def test_boundary_string_inside_data_is_data() -> None:
    payload = b"XyZ --XyZ \r\n-XyZ \r--XyZ \n--XyZ \r\n--Xy \r\n--X"
    body = form((CD_A, payload))
    assert [ev.data for ev in all_ways(body) if isinstance(ev, PartData)] == [payload]


def test_delimiter_followed_by_garbage_is_refused() -> None:
    # RFC 2046: the boundary must not appear in the content. "\r\n--XyZz" is a delimiter
    # followed by neither "--", padding nor CRLF.
    err = error_all_ways(form((CD_A, b"a\r\n--XyZz")))
    assert err.status == HTTPStatus.BAD_REQUEST
    assert err.detail == "multipart boundary followed by something other than CRLF"
    error_all_ways(b"--XyZ-x")
    error_all_ways(b"--XyZ \t x\r\n")
    error_all_ways(b"--XyZ\r\r\n")


def test_transport_padding_after_boundary() -> None:
    # RFC 2046 §5.1.1: delimiter transport-padding CRLF, with LWSP as padding.
    body = b"--XyZ \t \r\n" + CD_A + b"\r\n\r\nv\r\n--XyZ\t\r\n\r\nw\r\n--XyZ--  \r\n"
    assert all_ways(body) == [
        PartStart(((b"content-disposition", b'form-data; name="a"'),)),
        PartData(b"v"),
        PartEnd(),
        PartStart(()),
        PartData(b"w"),
        PartEnd(),
        BodyEnd(),
    ]


def test_bare_lf_and_bad_header_lines_are_refused() -> None:
    cases = {
        b"--XyZ\nContent-Disposition: x\r\n\r\n": "multipart boundary followed by",
        b"--XyZ\r\nA: b\nC: d\r\n\r\n": "bare",
        b"--XyZ\r\nA b\r\n\r\n": "without a colon",
        b"--XyZ\r\nA : b\r\n\r\n": "not a token",
        b"--XyZ\r\n folded: x\r\n\r\n": "folding",
        b"--XyZ\r\nA: \x01\r\n\r\n": "control character",
        b"--XyZ\r\nA: b\rc\r\n\r\n": "bare CR or LF",
    }
    for body, words in cases.items():
        err = error_all_ways(body + b"x\r\n--XyZ--")
        assert err.status == HTTPStatus.BAD_REQUEST, body
        assert words in err.detail, (body, err.detail)


def test_truncated_bodies_are_refused_at_close() -> None:
    full = form((CD_A, b"data"))
    for n in range(len(full) - len(b"--XyZ--\r\n") + 2):
        parser = MultipartParser(B)
        parser.feed(full[:n])
        assert not parser.finished
        with pytest.raises(HttpError) as exc:
            parser.close()
        assert exc.value.status == HTTPStatus.BAD_REQUEST
    parser = MultipartParser(B)
    parser.feed(full[: len(full) - 2])
    assert parser.finished
    parser.close()


def test_feed_after_the_end_and_empty_feeds_do_nothing() -> None:
    parser = MultipartParser(B)
    assert parser.feed(b"") == []
    parser.feed(form((CD_A, b"v")))
    assert parser.feed(b"--XyZ\r\n\r\nmore") == []
    parser.close()


def test_part_header_section_limit() -> None:
    limits = MultipartLimits(max_part_header_bytes=64)
    # Exactly at the limit: after "--XyZ", CRLF + line + CRLF CRLF = 64 bytes.
    line = b"A: " + b"x" * (64 - 2 - 3 - 4)
    body = b"--XyZ\r\n" + line + b"\r\n\r\nv\r\n--XyZ--"
    assert all_ways(body, limits=limits)[0] == PartStart(((b"a", line[3:]),))
    err = error_all_ways(body.replace(line, line + b"x"), limits=limits)
    assert err.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert "header section over 64 bytes" in err.detail
    # Padding counts too: it cannot go on for ever.
    err = error_all_ways(b"--XyZ" + b" " * 100, limits=limits)
    assert err.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    # A section that never ends is refused at the limit, not buffered.
    parser = MultipartParser(B, limits)
    parser.feed(b"--XyZ\r\nA: ")
    with pytest.raises(HttpError):
        for _ in range(100):
            parser.feed(b"y")


def test_part_header_count_limit() -> None:
    limits = MultipartLimits(max_part_header_count=3)
    fields = b"\r\n".join(b"F%d: v" % i for i in range(3))
    all_ways(form((fields, b"v")), limits=limits)
    err = error_all_ways(form((fields + b"\r\nF3: v", b"v")), limits=limits)
    assert err.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert err.detail == "more than 3 header fields in a multipart part"


def test_part_count_limit() -> None:
    limits = MultipartLimits(max_parts=3)
    all_ways(form(*[(CD_A, b"v")] * 3), limits=limits)
    err = error_all_ways(form(*[(CD_A, b"v")] * 4), limits=limits)
    assert err.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert err.detail == "more than 3 multipart parts"


def test_memory_is_bounded_whatever_the_part_size() -> None:
    # A 4 MiB part with no delimiter: the tail kept between feeds never grows past the
    # delimiter's length, and every content byte comes out.
    parser = MultipartParser(B)
    parser.feed(b"--XyZ\r\n" + CD_A + b"\r\n\r\n")
    chunk = bytes(range(256)) * 256  # holds CR and "-" everywhere
    out = 0
    for _ in range(64):
        out += sum(len(ev.data) for ev in parser.feed(chunk) if isinstance(ev, PartData))
        assert len(parser._tail) < len(b"\r\n--XyZ")
    tail = len(parser._tail)
    assert out + tail == 64 * len(chunk)
    # A piece that cannot start a delimiter goes out whole, without a copy.
    parser = MultipartParser(B)
    parser.feed(b"--XyZ\r\n\r\n")
    piece = b"a" * 1000
    (ev,) = parser.feed(piece)
    assert isinstance(ev, PartData) and ev.data is piece


def test_seventy_character_boundary_and_bytewise_data_with_near_delimiters() -> None:
    boundary = b"'()+_,-./:=?" + b"a" * 57 + b"Z"
    assert len(boundary) == 70
    payload = b"\r\n--" + boundary[:-1] + b"\r\n-" + boundary + b"!"
    body = form((CD_A, payload), boundary=boundary)
    data = [ev.data for ev in all_ways(body, boundary) if isinstance(ev, PartData)]
    assert data == [payload]


def test_boundary_with_spaces_inside() -> None:
    boundary = b"a b c"
    body = form((CD_A, b"v"), boundary=boundary)
    assert PartData(b"v") in all_ways(body, boundary)


@pytest.mark.parametrize(
    "boundary", [b"", b"a" * 71, b"ends in space ", b"semi;colon", b'quote"', b"\xff", b"a\r\n"]
)
def test_invalid_boundaries_are_refused(boundary: bytes) -> None:
    with pytest.raises(HttpError) as exc:
        MultipartParser(boundary)
    assert exc.value.status == HTTPStatus.BAD_REQUEST


# Content-Type.


@pytest.mark.parametrize(
    ("value", "boundary"),
    [
        (
            b"multipart/form-data; boundary=----WebKitFormBoundaryAbC1",
            b"----WebKitFormBoundaryAbC1",
        ),
        (b"Multipart/Form-Data;boundary=abc", b"abc"),
        (b'multipart/form-data; charset=utf-8; BOUNDARY="a b:c"', b"a b:c"),
        (b'multipart/form-data; boundary="a\\b"', b"ab"),  # a quoted-pair
        (b"multipart/form-data ; boundary=abc ", b"abc"),
        (b"multipart/form-data; boundary=" + b"a" * 70, b"a" * 70),
    ],
)
def test_boundary_from_content_type(value: bytes, boundary: bytes) -> None:
    assert boundary_from_content_type(value) == boundary


@pytest.mark.parametrize(
    ("value", "status", "words"),
    [
        (None, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "multipart/form-data"),
        (b"text/plain; boundary=abc", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "multipart/form-data"),
        (b"multipart/mixed; boundary=abc", HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "form-data"),
        (b"multipart/form-data", HTTPStatus.BAD_REQUEST, "without a boundary"),
        (b"multipart/form-data; charset=utf-8", HTTPStatus.BAD_REQUEST, "without a boundary"),
        (b"multipart/form-data; boundary=", HTTPStatus.BAD_REQUEST, "malformed"),
        (b'multipart/form-data; boundary=""', HTTPStatus.BAD_REQUEST, "empty"),
        (b"multipart/form-data; boundary=" + b"a" * 71, HTTPStatus.BAD_REQUEST, "over 70"),
        (b"multipart/form-data; boundary=a; boundary=b", HTTPStatus.BAD_REQUEST, "twice"),
        (b"multipart/form-data; boundary=a{b", HTTPStatus.BAD_REQUEST, "malformed"),
        (b'multipart/form-data; boundary="a;b"', HTTPStatus.BAD_REQUEST, "not allow"),
        (b'multipart/form-data; boundary="abc', HTTPStatus.BAD_REQUEST, "malformed"),
        (b"multipart/form-data; boundary abc", HTTPStatus.BAD_REQUEST, "malformed"),
    ],
)
def test_boundary_from_content_type_refusals(
    value: bytes | None, status: HTTPStatus, words: str
) -> None:
    with pytest.raises(HttpError) as exc:
        boundary_from_content_type(value)
    assert exc.value.status == status
    assert words in exc.value.detail


# Content-Disposition.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'form-data; name="field"', Disposition("field", None)),
        (b'form-data; name="f"; filename="a b.txt"', Disposition("f", "a b.txt")),
        # Chrome and Firefox: '"', CR and LF percent-encoded, the rest raw UTF-8.
        (
            b'form-data; name="f"; filename="%22quoted%22 %25 \xc3\xa9t\xc3\xa9.txt"',
            Disposition("f", '"quoted" %25 été.txt'),
        ),
        (b'form-data; name="a%0D%0Ab"', Disposition("a\r\nb", None)),
        # A literal backslash is literal (a Windows path from an old browser).
        (b'form-data; name="f"; filename="C:\\dir\\x.txt"', Disposition("f", "C:\\dir\\x.txt")),
        # Quoted-pairs from a client that escapes with backslashes.
        (
            b'form-data; name="f"; filename="say \\"hi\\" \\\\.txt"',
            Disposition("f", 'say "hi" \\.txt'),
        ),
        (b"FORM-DATA ; NAME=token;filename=t.txt", Disposition("token", "t.txt")),
        (b'form-data; name=""', Disposition("", None)),
        (b'form-data; name="f"; filename=""', Disposition("f", "")),
        # filename* next to filename: ignored (RFC 7578 §4.2).
        (
            b"form-data; name=f; filename=\"a.txt\"; filename*=UTF-8''b.txt",
            Disposition("f", "a.txt"),
        ),
    ],
)
def test_parse_disposition(value: bytes, expected: Disposition) -> None:
    assert parse_disposition(value) == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "without a Content-Disposition"),
        (b"attachment; name=f", "not form-data"),
        (b"form-data", "no name"),
        (b'form-data; filename="a"', "no name"),
        (b"form-data; name=f; filename*=UTF-8''a.txt", "filename*"),
        (b'form-data; name="f"; name="g"', "twice"),
        (b'form-data; name="\xff"', "not valid UTF-8"),
        (b'form-data; name="f"; filename="\xc3"', "not valid UTF-8"),
        (b'form-data; name="f', "malformed"),
        (b"form-data; name=f g", "malformed"),
    ],
)
def test_parse_disposition_refusals(value: bytes | None, words: str) -> None:
    with pytest.raises(HttpError) as exc:
        parse_disposition(value)
    assert exc.value.status == HTTPStatus.BAD_REQUEST
    assert words in exc.value.detail


# File names.


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("report.pdf", "report.pdf"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("a/b\\c/d.txt", "d.txt"),
        ("cafe\u0301.txt", "caf\u00e9.txt"),  # NFD (macOS) becomes NFC
        ("日本語.txt", "日本語.txt"),
        ("100%.txt", "100%.txt"),
        ("a" * 251 + ".txt", "a" * 251 + ".txt"),
    ],
)
def test_safe_filename(raw: str, safe: str) -> None:
    assert safe_filename(raw) == safe


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "is empty"),
        ("dir/", "is empty"),
        ("C:\\dir\\", "is empty"),
        (".", "dot-segment"),
        ("a/..", "dot-segment"),
        ("a\x00b", "control character"),
        ("a\nb.txt", "control character"),
        ("a\x7fb", "control character"),
        ("a\x85b", "control character"),
        ("a" * 252 + ".txt", "over 255 bytes"),
        ("é" * 128, "over 255 bytes"),
        (".env", "starts with a dot"),
        ("x/.htaccess", "starts with a dot"),
        (".evloop-upload-0123456789abcdef.tmp", "reserved"),
        ("a%2e%2e", "encoded"),
        ("a%2Fb", "encoded"),
        ("a\ud800b", "not valid Unicode"),
    ],
)
def test_safe_filename_refusals(raw: str, words: str) -> None:
    with pytest.raises(HttpError) as exc:
        safe_filename(raw)
    assert exc.value.status == HTTPStatus.BAD_REQUEST
    assert words in exc.value.detail
    assert "file name " in exc.value.detail  # says which name
    assert all(" " <= c <= "~" for c in exc.value.detail)  # escaped for a body or a log


def test_safe_filename_dotfiles_allowed_but_never_our_temp_files() -> None:
    assert safe_filename(".env", dotfiles=True) == ".env"
    with pytest.raises(HttpError):
        safe_filename(".evloop-upload-0123456789abcdef.tmp", dotfiles=True)
    with pytest.raises(HttpError):
        safe_filename("..", dotfiles=True)


# Where we differ from the multipart package (the fuzzer's oracle), each on purpose; the
# oracle's side is asserted too, so that a change on either side shows up.


def _oracle(body: bytes, boundary: bytes = B) -> list[object]:
    import multipart as mp

    parser = mp.PushMultipartParser(boundary)
    out: list[object] = []
    for chunk in (body, b""):
        out.extend(parser.parse(chunk))
    return out


def test_m1_transport_padding_is_accepted_where_the_oracle_refuses() -> None:
    import multipart as mp

    body = b"--XyZ \r\n" + CD_A + b"\r\n\r\nv\r\n--XyZ--"
    assert PartData(b"v") in all_ways(body)
    with pytest.raises(mp.ParserError):
        _oracle(body)


def test_m2_folded_part_header_is_refused_where_the_oracle_unfolds() -> None:
    body = b"--XyZ\r\n" + CD_A + b"\r\n x\r\n\r\nv\r\n--XyZ--"
    assert "folding" in error_all_ways(body).detail
    assert _oracle(body)[0].headerlist == [("Content-Disposition", 'form-data; name="a" x')]


def test_m3_any_token_is_a_header_name_where_the_oracle_takes_fewer() -> None:
    import multipart as mp

    body = b"--XyZ\r\n" + CD_A + b"\r\nX!: 1\r\n\r\nv\r\n--XyZ--"
    assert all_ways(body)[0].get(b"x!") == b"1"
    with pytest.raises(mp.ParserError):
        _oracle(body)


def test_m4_boundary_inside_the_preamble_line_is_preamble_where_the_oracle_refuses() -> None:
    import multipart as mp

    body = b"note: --XyZ\r\n--XyZ\r\n" + CD_A + b"\r\n\r\nv\r\n--XyZ--"
    assert PartData(b"v") in all_ways(body)
    with pytest.raises(mp.ParserError):
        _oracle(body)


def test_bytearray_and_memoryview_input_are_copied_not_pinned() -> None:
    # The connection feeds its bytearray and then deletes what it consumed: a memoryview kept
    # by the parser would make that resize fail (BufferError), and data would change under it.
    buf = bytearray(b"--XyZ\r\n\r\nabc\r\n--X")
    parser = MultipartParser(B)
    got = parser.feed(buf) + parser.feed(memoryview(b"yZ--"))
    del buf[:]
    assert got == [PartStart(()), PartData(b"abc"), PartEnd(), BodyEnd()]
    assert all(type(ev.data) is bytes for ev in got if isinstance(ev, PartData))


class _CountingPattern:
    """Wraps a compiled pattern and counts the bytes its ``match`` calls may scan."""

    def __init__(self, pattern: object) -> None:
        self.pattern = pattern
        self.scanned = 0

    def match(self, buf: bytes, pos: int = 0, endpos: int = 1 << 62):  # type: ignore[no-untyped-def]
        self.scanned += min(len(buf), endpos) - pos
        return self.pattern.match(buf, pos, endpos)  # type: ignore[attr-defined]


def test_trickled_header_section_is_scanned_in_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # History: the one-regex header path ran again on every feed of an unfinished section, so a
    # section sent byte by byte cost its size squared (8 KiB: 32 MiB of scanning per part).
    from evloop_httpd import multipart

    counting = _CountingPattern(multipart._QUICK_HEAD)
    monkeypatch.setattr(multipart, "_QUICK_HEAD", counting)
    section = b"\r\n".join(b"F%d: " % i + b"x" * 900 for i in range(8)) + b"\r\n\r\n"
    body = b"--XyZ\r\n" + section + b"v\r\n--XyZ--"
    parser = MultipartParser(B)
    for i in range(len(body)):
        parser.feed(body[i : i + 1])
    parser.close()
    assert counting.scanned < 4 * len(section)
