"""The fuzz properties of fuzz/parsers.py can fail: each catches a parser broken on purpose.

(The seeds and a short run of each target are replayed by test_fuzz_smoke.py.)
"""

from __future__ import annotations

import pytest

from evloop_httpd import proxyproto
from evloop_httpd.multipart import MultipartParser
from fuzz import parsers

BODY = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--b--'


def test_multipart_split_property_catches_a_parser_that_forgets_its_tail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = MultipartParser.feed

    def forgetful(self, data):  # type: ignore[no-untyped-def]
        if not self._preamble and self._tail[:1] == b"\r":
            self._tail = b""  # the start of a delimiter, split across two reads, is lost
        return real(self, data)

    monkeypatch.setattr(MultipartParser, "feed", forgetful)
    parsers.check_multipart_split(b"b", BODY, [])  # whole: nothing to forget
    with pytest.raises(AssertionError):
        parsers.check_multipart_split(b"b", BODY, [len(BODY) - 5])


def test_multipart_oracle_property_catches_lost_content(monkeypatch: pytest.MonkeyPatch) -> None:
    real = MultipartParser.feed

    def lossy(self, data):  # type: ignore[no-untyped-def]
        return real(self, data.replace(b"hello", b"hell"))

    parsers.check_multipart_oracle(b"b", BODY)
    monkeypatch.setattr(MultipartParser, "feed", lossy)
    with pytest.raises(AssertionError):
        parsers.check_multipart_oracle(b"b", BODY)


def test_proxy_split_property_catches_an_early_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    real = proxyproto.parse_proxy_header

    def hasty(buf, max_v2_bytes=proxyproto.MAX_V2_BYTES):  # type: ignore[no-untyped-def]
        # Answers as soon as the addresses are in, before the ports: a wrong consumed count.
        if bytes(buf).count(b" ") == 4 and b"\n" not in buf:
            return real(bytes(buf) + b" 0 0\r\n"[1:])
        return real(buf, max_v2_bytes)

    data = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    parsers.check_proxy_split(data, [29])
    monkeypatch.setattr(parsers.proxyproto, "parse_proxy_header", hasty)
    with pytest.raises(AssertionError):
        parsers.check_proxy_split(data, [27])


def test_forwarded_property_catches_believing_an_untrusted_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsers.check_forwarded_total("192.0.2.7", b"for=198.51.100.1", None)
    monkeypatch.setattr(parsers, "TRUSTED", ())
    monkeypatch.setattr(
        parsers.forwarded, "client_address", lambda peer, trusted, f, x: "198.51.100.1"
    )
    with pytest.raises(AssertionError):
        parsers.check_forwarded_total("192.0.2.7", b"for=198.51.100.1", None)
