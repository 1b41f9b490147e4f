"""systemd socket activation: take over listening sockets passed by the service manager.

Theory of operation
-------------------
The protocol is ``sd_listen_fds(3)``: the manager binds the sockets of a ``.socket`` unit,
then starts the service with them open as descriptors 3, 4, ... and three variables:
``LISTEN_PID`` (the process they are meant for), ``LISTEN_FDS`` (how many) and optionally
``LISTEN_FDNAMES`` (colon-separated names, ``FileDescriptorName=`` in the unit). The same
variables come from ``systemd-socket-activate`` and from other managers that copied the scheme.

Only a ``LISTEN_PID`` equal to our own pid counts: the variables may be inherited by accident
from a parent that was activated itself, and descriptors 3, 4, ... then mean something else.
The variables are removed once read (``unset_environment`` in sd_listen_fds), so that nothing we
start later mistakes them for its own, and the descriptors are marked close-on-exec.

Each descriptor must be a listening TCP socket: a Unix or datagram socket or a connected one
(an ``Accept=yes`` unit) is refused with a clear message rather than served wrong. Parsing the
variables is separate from touching descriptors, so it is tested without any.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first passed descriptor
MAX_LISTEN_FDS = 64  # far beyond any real unit; bounds what a bad LISTEN_FDS can make us touch


class ActivationError(ValueError):
    """The environment names this process but does not describe usable sockets."""


@dataclass(frozen=True, slots=True)
class Passed:
    """A listening socket handed over by the manager, with its ``FileDescriptorName``."""

    sock: socket.socket
    name: str


def parse_environment(environ: MutableMapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The (descriptor, name) pairs the variables describe, or ``[]`` when they are absent or
    meant for another process. Raises :class:`ActivationError` when they name us but are
    malformed. Pure: touches no descriptor."""
    listen_pid = environ.get("LISTEN_PID")
    if listen_pid is None:
        return []
    if not listen_pid.isdigit() or int(listen_pid) != pid:
        return []  # inherited from an activated ancestor: not ours
    text = environ.get("LISTEN_FDS", "")
    if not text.isdigit() or not 0 < int(text) <= MAX_LISTEN_FDS:
        raise ActivationError(f"LISTEN_FDS must be 1 to {MAX_LISTEN_FDS}, not {text!r}")
    count = int(text)
    names_text = environ.get("LISTEN_FDNAMES")
    names = names_text.split(":") if names_text is not None else []
    if names_text is not None and len(names) != count:
        raise ActivationError(f"LISTEN_FDNAMES has {len(names)} names for {count} descriptors")
    names = names or ["unknown"] * count  # sd_listen_fds_with_names' default name
    return [(LISTEN_FDS_START + i, names[i]) for i in range(count)]


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[Passed]:
    """The listening sockets passed to this process (``[]`` when not socket-activated).

    Removes the variables from ``environ`` (default ``os.environ``) once read. Each socket is
    made non-blocking and close-on-exec. Raises :class:`ActivationError` for a descriptor that
    is not a listening stream socket.
    """
    env = os.environ if environ is None else environ
    pairs = parse_environment(env, os.getpid())
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    passed = []
    for fd, name in pairs:
        try:
            sock = socket.socket(fileno=fd)  # family and type come from the descriptor
        except OSError as exc:
            raise ActivationError(f"passed descriptor {fd} ({name}): {exc.strerror}") from None
        problem = None
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            problem = "not a TCP socket (the logs and Host checks need an IP address)"
        elif sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            problem = "not a listening stream socket (use ListenStream= and Accept=no)"
        if problem is not None:
            sock.detach()  # not ours to close: report it and leave it alone
            raise ActivationError(f"passed descriptor {fd} ({name}) is {problem}")
        sock.set_inheritable(False)
        sock.setblocking(False)
        passed.append(Passed(sock, name))
    return passed


def describe(sock: socket.socket) -> str:
    """``127.0.0.1:8080`` or ``[::1]:8080``, for the start-up message."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
