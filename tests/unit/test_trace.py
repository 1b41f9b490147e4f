"""The loop's trace, text and JSON (issue 16), through the real buffered sink: lines whole and
timestamped, JSON lines that parse with every field, hostile request lines escaped in both."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from evloop_httpd.log import Tracer, _Sink, trace_sink
from evloop_httpd.states import READ, WRITE, ConnState, Input

S, I = ConnState, Input  # noqa: E741 - as in states.py
NOW = 1_790_000_000.25  # a fixed clock, 250 ms into a second
HOSTILE = b'GET /\x1b[2J\x1b[31m"\r\n12:00:00.000000 trace #1 forged\xe2\x80\xae\xff HTTP/1.1'
STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d{6} ")


def traced(form: str, worker: str | None = None) -> tuple[Tracer, io.StringIO]:
    out = io.StringIO()
    return Tracer(_Sink(out, owned=False), form, worker, clock=lambda: NOW), out


def every_event(t: Tracer) -> None:
    t.wakeup(0.0123456, 3)
    t.io(4, recv=78)
    t.transition(4, S.READING_HEADERS, I.HEAD_COMPLETE, S.WRITING_HEADERS, None, 78, 0, HOSTILE)
    t.io(4, sent=4096)
    t.eagain(4, "send")
    t.transition(4, S.WRITING_HEADERS, I.FILE_FOLLOWS, S.STREAMING_FILE, WRITE, 78, 4096)
    t.io(4, recv=0, sent=0)
    t.timer(4, "idle")
    t.transition(4, S.READING_HEADERS, I.TIMEOUT, S.CLOSED, bytes_in=78, bytes_out=9000)


def test_nothing_is_written_before_the_flush_then_whole_lines() -> None:
    t, out = traced("text")
    every_event(t)
    assert out.getvalue() == ""  # buffered: the loop flushes once per iteration
    t.flush()
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 9


def test_text_lines_have_timestamps_and_say_what_happened() -> None:
    t, out = traced("text")
    every_event(t)
    t.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == 9
    for line in lines:
        assert STAMP.match(line), line
        assert line[:15].endswith(".250000"), line  # the microseconds of the clock
    body = [line[16:] for line in lines]
    assert body[0] == "trace select woke after 12.346 ms: 3 ready"
    assert body[1] == "trace #4 recv 78 B"
    assert body[2].startswith(
        "trace #4 READING_HEADERS --HEAD_COMPLETE--> WRITING_HEADERS (wait for write, "
        '78 B in, 0 B out) "GET /'
    )
    assert body[3] == "trace #4 sent 4096 B"
    assert body[4] == "trace #4 EAGAIN on send: wait for the selector"
    assert "STREAMING_FILE (wait for write, 78 B in, 4096 B out)" in body[5]
    assert body[6] == "trace #4 recv end of stream, sent 0 B"
    assert body[7] == "trace #4 timer fired: idle"
    assert body[8].endswith("--TIMEOUT--> CLOSED (wait for none, 78 B in, 9000 B out)")


def test_text_names_the_worker_when_there_are_several() -> None:
    t, out = traced("text", worker="2")
    t.wakeup(0.001, 0)
    t.flush()
    assert out.getvalue()[15:] == " [2] trace select woke after 1.000 ms: 0 ready\n"


def test_hostile_request_line_stays_one_printable_line_in_text() -> None:
    t, out = traced("text")
    t.transition(1, S.READING_HEADERS, I.HEAD_COMPLETE, S.WRITING_HEADERS, request=HOSTILE)
    t.flush()
    text = out.getvalue()
    assert text.count("\n") == 1 and "\x1b" not in text and "\r" not in text
    line = text.rstrip("\n")
    assert line.isprintable()
    quoted = line.split(' "', 1)[1]
    assert quoted == (
        'GET /\\x1b[2J\\x1b[31m\\x22\\x0d\\x0a12:00:00.000000 trace #1 forged\\u202e\\xff HTTP/1.1"'
    )


def test_json_lines_parse_and_carry_every_field() -> None:
    t, out = traced("json", worker="w1")
    every_event(t)
    t.flush()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 9
    for r in records:
        assert r["time"] == NOW and r["worker"] == "w1"
    assert [r["event"] for r in records] == [
        "wakeup", "io", "transition", "io", "eagain", "transition", "io", "timer", "transition",
    ]  # fmt: skip
    assert records[0] == {"time": NOW, "worker": "w1", "event": "wakeup", "slept_s": 0.012346,
                          "ready": 3}  # fmt: skip
    first = records[2]
    assert {k: first[k] for k in ("connection", "from", "input", "to", "interest", "bytes")} == {
        "connection": 4,
        "from": "READING_HEADERS",
        "input": "HEAD_COMPLETE",
        "to": "WRITING_HEADERS",
        "interest": "write",
        "bytes": {"in": 78, "out": 0},
    }
    assert records[5]["to"] == "STREAMING_FILE" and "request" not in records[5]
    assert records[8]["interest"] == "none" and records[8]["bytes"] == {"in": 78, "out": 9000}
    assert records[1] == {"time": NOW, "worker": "w1", "event": "io", "connection": 4, "recv": 78}
    assert records[6]["recv"] == 0 and records[6]["sent"] == 0
    assert records[4]["op"] == "send" and records[7]["what"] == "idle"


def test_json_interest_follows_what_the_loop_says() -> None:
    # A parked connection in READING_HEADERS waits to write, not to read.
    t, out = traced("json")
    t.transition(9, S.WRITING_HEADERS, I.RESPONSE_DONE, S.READING_HEADERS)
    t.transition(9, S.WRITING_HEADERS, I.RESPONSE_DONE, S.READING_HEADERS, interest=WRITE)
    t.transition(9, S.WRITING_HEADERS, I.RESPONSE_DONE, S.READING_HEADERS, interest=READ)
    t.flush()
    wants = [json.loads(x)["interest"] for x in out.getvalue().splitlines()]
    assert wants == ["read", "write", "read"]


def test_hostile_request_line_in_json_is_escaped_for_jq_r_too() -> None:
    t, out = traced("json")
    t.transition(1, S.READING_HEADERS, I.HEAD_COMPLETE, S.WRITING_HEADERS, request=HOSTILE)
    t.flush()
    raw = out.getvalue()
    assert raw.isascii() and raw.count("\n") == 1
    request = json.loads(raw)["request"]
    # What `jq -r .request` would print: still no control character, still one line.
    assert request.isprintable() and "\x1b" not in request
    assert request.startswith("GET /\\x1b[2J") and "\\u202e\\xff" in request


def test_unknown_form_and_empty_io_are_refused() -> None:
    with pytest.raises(ValueError):
        traced("xml")
    t, _ = traced("text")
    with pytest.raises(ValueError):
        t.io(1)


def test_trace_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"earlier": true}\n')
    t = Tracer(trace_sink(path), "json", clock=lambda: NOW)
    t.timer(3, "head")
    t.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": True}
    assert json.loads(lines[1])["event"] == "timer" and len(lines) == 2


def test_trace_sink_defaults_to_the_given_stderr() -> None:
    err = io.StringIO()
    t = Tracer(trace_sink(None, err), clock=lambda: NOW)
    t.eagain(1, "recv")
    t.flush()
    assert err.getvalue().endswith(" trace #1 EAGAIN on recv: wait for the selector\n")
