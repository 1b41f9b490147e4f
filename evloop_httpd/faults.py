"""Teaching aids: make the loop's hard cases happen on purpose, on a fast local machine.

Theory of operation
-------------------
On loopback almost every ``send`` takes everything, every head arrives in one ``recv`` and every
loop iteration is quick, so the code paths a learner most needs to see (partial sends and
EAGAIN, heads assembled from pieces, one slow iteration delaying everyone) hardly ever run.
Three explicit flags make them run. They are off by default, they are never needed to serve,
and they make the server slower: they are for watching with ``--trace``, not for production.

* ``--fault-send-buffer BYTES``: a tiny ``SO_SNDBUF`` on each accepted socket, so a response
  goes out in many partial sends, with EAGAIN and waits for writability in between;
* ``--fault-recv-cap BYTES``: at most that many bytes per ``recv``, so a head arrives in
  pieces and the parser's "need more" path runs at every step;
* ``--fault-loop-delay SECONDS``: a sleep in every loop iteration, so the latency every client
  sees grows with it: what one slow step (a big hash, a blocking call) does to all of them.

All three live here, and nothing here is on the hot path when they are off: the loop asks
:attr:`Faults.active` once (or keeps ``None`` instead of a :class:`Faults`), and
:func:`recv_size`, :func:`apply_to_socket` and :func:`maybe_delay` return at their first test
when their fault is off.
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass

# The kernel has its own floor (Linux doubles the value asked for and keeps at least ~4.6 KiB),
# so very small values all act alike; 1 byte is still accepted, to show exactly that.
MIN_SEND_BUFFER = 1
MAX_LOOP_DELAY_S = 5.0  # more would make the server look dead, not slow


@dataclass(frozen=True, slots=True)
class Faults:
    """Which teaching faults are on. The default is all off."""

    send_buffer: int | None = None  # SO_SNDBUF for accepted sockets, bytes
    recv_cap: int | None = None  # most bytes per recv
    loop_delay_s: float = 0.0  # sleep per loop iteration

    def __post_init__(self) -> None:
        if self.send_buffer is not None and self.send_buffer < MIN_SEND_BUFFER:
            raise ValueError(f"send buffer must be at least {MIN_SEND_BUFFER} byte")
        if self.recv_cap is not None and self.recv_cap < 1:
            raise ValueError("recv cap must be at least 1 byte")
        if not 0.0 <= self.loop_delay_s <= MAX_LOOP_DELAY_S:
            raise ValueError(f"loop delay must be between 0 and {MAX_LOOP_DELAY_S} s")

    @property
    def active(self) -> bool:
        return self.send_buffer is not None or self.recv_cap is not None or self.loop_delay_s > 0

    def describe(self) -> str:
        """One line for the start-up banner, so nobody mistakes a crippled server for a slow one."""
        parts = []
        if self.send_buffer is not None:
            parts.append(f"send buffer {self.send_buffer} B")
        if self.recv_cap is not None:
            parts.append(f"recv cap {self.recv_cap} B")
        if self.loop_delay_s > 0:
            parts.append(f"loop delay {self.loop_delay_s * 1000:g} ms")
        return "teaching faults on: " + ", ".join(parts) if parts else "no faults"


NO_FAULTS = Faults()


def apply_to_socket(sock: socket.socket, faults: Faults) -> None:
    """Shrink an accepted socket's send buffer, if that fault is on. Call before the first send."""
    if faults.send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, faults.send_buffer)


def recv_size(default: int, faults: Faults) -> int:
    """How many bytes to ask ``recv`` for."""
    cap = faults.recv_cap
    return default if cap is None or cap >= default else cap


def maybe_delay(faults: Faults) -> None:
    """Stall the loop for the configured time, if that fault is on. Blocking on purpose."""
    if faults.loop_delay_s > 0:
        time.sleep(faults.loop_delay_s)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.0 <= value <= MAX_LOOP_DELAY_S:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_LOOP_DELAY_S:g} s")
    return value


def add_fault_options(parser: argparse.ArgumentParser) -> None:
    """The ``teaching faults`` option group (see the module docstring)."""
    g = parser.add_argument_group(
        "teaching faults",
        "off by default; they slow the server down to show the loop's hard cases (with --trace)",
    )
    g.add_argument(
        "--fault-send-buffer",
        type=_positive_int,
        metavar="BYTES",
        help="tiny SO_SNDBUF on each connection: watch partial sends and EAGAIN",
    )
    g.add_argument(
        "--fault-recv-cap",
        type=_positive_int,
        metavar="BYTES",
        help="read at most BYTES per recv: watch heads assembled from pieces",
    )
    g.add_argument(
        "--fault-loop-delay",
        type=_delay,
        default=0.0,
        metavar="SECONDS",
        help="sleep this long in every loop iteration: watch one slow loop delay everyone",
    )


def faults_from(args: argparse.Namespace) -> Faults:
    """The :class:`Faults` the parsed options ask for."""
    return Faults(
        send_buffer=args.fault_send_buffer,
        recv_cap=args.fault_recv_cap,
        loop_delay_s=args.fault_loop_delay,
    )
