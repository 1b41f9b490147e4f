"""Micro-benchmark: parse one typical browser request head, ours against h11 and httptools.

Theory of operation
-------------------
Every contender parses the same bytes, a Chrome navigation GET with 14 header fields, and is
first checked to return the same method, target and number of fields, so the timing compares
equal work. Each contender is a zero-argument callable timed with ``timeit`` (which turns the
garbage collector off while timing, for all alike). Samples are taken round-robin, contender
after contender, ``--repeat`` times, and the best sample of each is kept: on a quiet machine
the minimum is the figure least disturbed by other work, and interleaving spreads any drift of
the machine (frequency, a neighbour) over all contenders instead of charging it to one.

Contenders, each in the form a server would use it:

* ``ours``: ``evloop_httpd.parser.parse_head(data, Limits())``, stateless per call;
* ``h11 fresh``: a new ``h11.Connection(h11.SERVER)`` per parse, i.e. per connection;
* ``h11 reused``: one connection kept across requests, as on keep-alive; h11 parses the next
  request only after the cycle ends, so this includes sending a minimal 200 response and
  ``start_next_cycle`` (that overhead is part of what reusing costs with h11);
* ``httptools fresh`` / ``httptools reused``: ``HttpRequestParser`` per parse, or one parser
  fed request after request (llhttp resets itself between messages).

Missing contenders are skipped with a message, so this runs before the parser lands on main.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the worktree's package, not an installed copy

# Modelled on a Chrome 120 top-level navigation: the fields and order that browser sends.
CHROME_GET = (
    b"GET /docs/index.html?lang=en HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b'sec-ch-ua: "Not_A Brand";v="8", "Chromium";v="120", "Google Chrome";v="120"\r\n'
    b"sec-ch-ua-mobile: ?0\r\n"
    b'sec-ch-ua-platform: "Linux"\r\n'
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7\r\n"
    b"Sec-Fetch-Site: none\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-User: ?1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n"
    b"\r\n"
)
EXPECTED = (b"GET", b"/docs/index.html?lang=en", 14)  # method, target, header field count

# A contender: a zero-argument parse, and a check returning (method, target, field count).
Contender = tuple[Callable[[], object], Callable[[], tuple[bytes, bytes, int]]]


def ours() -> Contender | str:
    try:
        from evloop_httpd.config import Limits
        from evloop_httpd.parser import parse_head
    except ImportError as exc:
        return f"evloop_httpd.parser not importable ({exc}); is the parser merged from main?"
    limits = Limits()

    def parse() -> object:
        return parse_head(CHROME_GET, limits)

    def check() -> tuple[bytes, bytes, int]:
        request = parse_head(CHROME_GET, limits)
        assert request is not None
        return request.method, request.raw_target, len(request.headers)

    return parse, check


def h11_contenders() -> dict[str, Contender | str]:
    try:
        import h11
    except ImportError:
        return {"h11": "h11 not installed (pip install h11)"}

    def fresh() -> Any:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(CHROME_GET)
        return conn.next_event()

    def check(event: Any) -> tuple[bytes, bytes, int]:
        assert isinstance(event, h11.Request), event
        return event.method, event.target, len(event.headers)

    conn = h11.Connection(h11.SERVER)
    response = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
    end = h11.EndOfMessage()

    def reused() -> Any:
        conn.receive_data(CHROME_GET)
        event = conn.next_event()
        conn.next_event()  # EndOfMessage: a GET has no body
        conn.send(response)
        conn.send(end)
        conn.start_next_cycle()
        return event

    return {
        "h11 fresh": (fresh, lambda: check(fresh())),
        "h11 reused": (reused, lambda: check(reused())),
    }


class _Collector:
    """httptools callbacks: what a server needs, the URL and every header pair."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url  # llhttp may deliver the URL in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def httptools_contenders() -> dict[str, Contender | str]:
    try:
        import httptools
    except ImportError:
        return {"httptools": "httptools not installed (pip install httptools)"}

    def fresh() -> tuple[_Collector, Any]:
        collector = _Collector()
        parser = httptools.HttpRequestParser(collector)
        parser.feed_data(CHROME_GET)
        return collector, parser.get_method()

    shared = _Collector()
    shared_parser = httptools.HttpRequestParser(shared)

    def reused() -> tuple[_Collector, Any]:
        shared.headers = []
        shared.url = b""
        shared_parser.feed_data(CHROME_GET)
        return shared, shared_parser.get_method()

    def check(result: tuple[_Collector, Any]) -> tuple[bytes, bytes, int]:
        collector, method = result
        assert collector.complete
        return method, collector.url, len(collector.headers)

    return {
        "httptools fresh": (fresh, lambda: check(fresh())),
        "httptools reused": (reused, lambda: check(reused())),
    }


def collect() -> tuple[dict[str, Contender], list[str]]:
    """The contenders that import and agree on the parse; messages for the rest."""
    found: dict[str, Contender | str] = {"ours": ours()}
    found.update(h11_contenders())
    found.update(httptools_contenders())
    ready: dict[str, Contender] = {}
    messages: list[str] = []
    for name, contender in found.items():
        if isinstance(contender, str):
            messages.append(f"skip {name}: {contender}")
            continue
        got = contender[1]()
        if got != EXPECTED:
            messages.append(f"skip {name}: parsed {got}, expected {EXPECTED}")
            continue
        ready[name] = contender
    return ready, messages


def measure(
    contenders: dict[str, Contender], repeat: int, sample_s: float
) -> dict[str, list[float]]:
    """Per-parse seconds, ``repeat`` samples each, taken round-robin across contenders."""
    timers = {name: timeit.Timer(parse) for name, (parse, _) in contenders.items()}
    # Size each contender's loop so one sample lasts about sample_s.
    numbers: dict[str, int] = {}
    for name, timer in timers.items():
        number, elapsed = timer.autorange()
        numbers[name] = max(1, int(number * sample_s / max(elapsed, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for _ in range(repeat):
        for name, timer in timers.items():
            samples[name].append(timer.timeit(numbers[name]) / numbers[name])
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9, help="samples per contender (9)")
    parser.add_argument("--sample-ms", type=float, default=100.0, help="length of one sample")
    parser.add_argument("--quick", action="store_true", help="3 samples of 30 ms")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.sample_ms = 3, 30.0
    if args.repeat < 1 or args.sample_ms <= 0:
        parser.error("--repeat and --sample-ms must be positive")

    contenders, messages = collect()
    for message in messages:
        print(message)
    if not contenders:
        print("nothing to measure")
        return 1
    lines = CHROME_GET.count(b"\r\n") - 2
    print(f"request head: {len(CHROME_GET)} bytes, {lines} header fields; Python {sys.version}")
    print(f"best of {args.repeat} interleaved samples of ~{args.sample_ms:g} ms each\n")
    samples = measure(contenders, args.repeat, args.sample_ms / 1000)
    best = {name: min(values) for name, values in samples.items()}
    print(f"{'contender':<18}{'best µs':>10}{'median µs':>11}{'parses/s':>12}")
    for name, values in samples.items():
        median = sorted(values)[len(values) // 2]
        print(f"{name:<18}{best[name] * 1e6:>10.2f}{median * 1e6:>11.2f}{1 / best[name]:>12,.0f}")
    if "ours" in best:
        print("\nratios of best time, ours / other (below 1: ours is faster)")
        for name, seconds in best.items():
            if name == "ours":
                continue
            ratio = best["ours"] / seconds
            verdict = f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"
            print(f"  ours / {name:<16} {ratio:6.2f}   (ours is {verdict})")
    else:
        print("\nno ratios: ours is not importable yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
