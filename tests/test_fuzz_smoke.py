"""The fuzz properties on their saved seeds, and a short fixed-seed run of each target.

Every file in fuzz/seeds/ is a past finding (or a hand-made case worth keeping); replaying them
here means a fixed bug stays fixed. The short runs make sure each target still runs at all; the
real search is ``python -m fuzz`` (see fuzz/README.md).
"""

from __future__ import annotations

import pytest

from evloop_httpd.connection import Connection
from evloop_httpd.states import Input
from fuzz import harness, properties

SEEDS = harness.load_seeds()


def test_there_are_seeds() -> None:
    assert {target for _, target, _ in SEEDS} >= {"oracle", "split", "connection"}


@pytest.mark.parametrize(("name", "target", "args"), SEEDS, ids=[s[0] for s in SEEDS])
def test_seed_replays_clean(name: str, target: str, args: tuple) -> None:
    harness.replay(target, args)


@pytest.mark.parametrize("target", sorted(harness.TARGETS))
def test_short_run(target: str) -> None:
    stats = harness.Stats()
    harness.run(target, 150, seed_value=1234, stats=stats, shrink=False)
    assert stats.inputs >= 150


def test_connection_property_catches_a_response_after_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The property must be able to fail: a connection that keeps parsing after a framing
    # error (inbuf not cleared on close) is caught.
    monkeypatch.setattr(Connection, "_finish_response", _keep_going)
    with pytest.raises(AssertionError):
        properties.check_connection(
            [b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"],
            [4096],
        )


def _keep_going(self: Connection, now: float) -> None:
    """A broken ``_finish_response`` that keeps the connection alive even after a close."""
    self._close_file()
    self.request = None
    self.status = 0
    self._fire(Input.RESPONSE_DONE)
    self._advance(now)


def test_split_property_catches_a_split_dependent_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ignoring scan_from's promise (searching only the new bytes for the blank line) loses a
    # CRLF CRLF split across two reads; the property must notice.
    real = properties.parse_head

    def forgetful(buf, limits, scan_from=0):  # type: ignore[no-untyped-def]
        return real(buf, limits, scan_from + 3 if scan_from else 0)

    monkeypatch.setattr(properties, "parse_head", forgetful)
    data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    with pytest.raises(AssertionError):
        properties.check_split(data, [len(data) - 2])
