"""Which address is the client's, when the connection comes from a trusted proxy.

Theory of operation
-------------------
:func:`client_address` takes the connection's peer address, the networks whose proxies are
trusted, and the request's ``Forwarded`` (RFC 7239) and ``X-Forwarded-For`` field values (each
with its lines joined by ", "). Every proxy *appends* the address it received the request from,
so the list reads client first, nearest proxy last, and only the part of it written by trusted
proxies can be believed: anything to the left of the first untrusted hop was written by that
hop, i.e. by the client.

So the walk starts at the peer and goes from the right: while the current address is trusted,
step to the hop it reported. The first untrusted address is the client. The walk stops early,
at the last known (trusted) address, on a hop that hides its address: ``unknown``, an
obfuscated identifier (``_abc``), or a ``Forwarded`` element without ``for=``. When every hop
is trusted, the leftmost one is the answer.

The peer itself is the answer when it is not trusted (the fields are then the client's own
words), when neither field is present, or when the field used is malformed: a proxy we trust
wrote nonsense, and nothing in it can be believed. ``Forwarded`` wins over ``X-Forwarded-For``
when both are present, and a malformed ``Forwarded`` does not fall back to the other.

``Forwarded`` is parsed strictly to RFC 7239 §4: elements separated by commas (with optional
whitespace), pairs ``token=value`` separated by ``;`` without whitespace, a value a token or a
quoted string, no parameter twice in an element; ``for=`` holds an IPv4 address, a bracketed
IPv6 address (which must then be quoted), ``unknown`` or an obfuscated identifier, each with an
optional port. ``X-Forwarded-For`` holds bare IP addresses (or ``unknown``) and nothing else.

Work is bounded: a field with more than :data:`MAX_HOPS` elements is malformed, so a client
cannot make a trusted proxy hand us a list that takes long to walk.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Proxies in front of a server rarely number more than a handful; the cap only bounds work.
MAX_HOPS = 64
MAX_FIELD_BYTES = 8 * 1024  # longer than 64 hops of the longest quoted IPv6 with port

_UNKNOWN = None  # a hop that hides its address

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_PAIR = rb"(?:" + _TOKEN + rb"=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))"
# RFC 7239 §4: forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] ), in a
# 1#list: OWS around the commas.
_ELEMENT = re.compile(rb"[ \t]*(" + _PAIR + rb"?(?:;" + _PAIR + rb"?)*)[ \t]*(?:,|\Z)")
_PAIRS = re.compile(rb"(" + _TOKEN + rb")=(" + _TOKEN + rb"|" + _QUOTED + rb")")
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)
# RFC 7239 §6: node = nodename [ ":" node-port ].
_OBF = rb"_[A-Za-z0-9._\-]+"
_PORT = rb"(?::(?:[0-9]{1,5}|" + _OBF + rb"))?"
_NODE_V4 = re.compile(rb"([0-9.]{7,15})" + _PORT)
_NODE_V6 = re.compile(rb"\[([0-9A-Fa-f:.]{2,45})\]" + _PORT)
_NODE_HIDDEN = re.compile(rb"(?:unknown|" + _OBF + rb")" + _PORT, re.IGNORECASE)


class _Malformed(Exception):
    pass


def client_address(
    peer: str,
    trusted: Sequence[Network],
    forwarded: bytes | None,
    x_forwarded_for: bytes | None,
) -> str:
    """The client's address for a request from ``peer``; see the module docstring."""
    try:
        current = _address(peer.encode("ascii"))
    except (UnicodeEncodeError, _Malformed):
        return peer  # not an IP peer (a Unix socket): nothing to trust
    if not _is_trusted(current, trusted):
        return peer
    try:
        if forwarded is not None:
            hops = _forwarded_hops(forwarded)
        elif x_forwarded_for is not None:
            hops = _xff_hops(x_forwarded_for)
        else:
            return peer
    except _Malformed:
        return peer
    for hop in reversed(hops):
        if hop is _UNKNOWN:
            break
        current = hop
        if not _is_trusted(current, trusted):
            break
    return str(current)


def _is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in net for net in trusted)


def _address(text: bytes) -> Address:
    """An IP address, with an IPv4-mapped IPv6 one (from a dual-stack socket) made IPv4."""
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise _Malformed from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise _Malformed
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def _forwarded_hops(value: bytes) -> list[Address | None]:
    if len(value) > MAX_FIELD_BYTES:
        raise _Malformed
    hops: list[Address | None] = []
    at = 0
    end = len(value)
    while at < end:
        m = _ELEMENT.match(value, at)
        if m is None or m.end() == at:
            raise _Malformed
        at = m.end()
        if not m[1]:
            continue  # an empty list element, which RFC 9110 §5.6.1 says to ignore
        if len(hops) == MAX_HOPS:
            raise _Malformed
        params: dict[bytes, bytes] = {}
        for name, raw in _PAIRS.findall(m[1]):
            name = name.lower()
            if name in params:
                raise _Malformed  # RFC 7239 §4: each parameter at most once per element
            params[name] = _QUOTED_PAIR.sub(rb"\1", raw[1:-1]) if raw[:1] == b'"' else raw
        node = params.get(b"for")
        hops.append(_UNKNOWN if node is None else _node(node))
    if not hops:
        raise _Malformed
    return hops


def _node(node: bytes) -> Address | None:
    """RFC 7239 §6: an address (and port), or ``_UNKNOWN`` for ``unknown`` and ``_obf``."""
    m = _NODE_V4.fullmatch(node)
    if m is not None:
        address = _address(m[1])
        if address.version != 4:
            raise _Malformed
        return address
    m = _NODE_V6.fullmatch(node)
    if m is not None:
        try:
            ipaddress.IPv6Address(m[1].decode("ascii"))  # brackets hold IPv6 only
        except ValueError:
            raise _Malformed from None
        return _address(m[1])
    if _NODE_HIDDEN.fullmatch(node):
        return _UNKNOWN
    raise _Malformed


def _xff_hops(value: bytes) -> list[Address | None]:
    if len(value) > MAX_FIELD_BYTES:
        raise _Malformed
    elements = value.split(b",")
    if len(elements) > MAX_HOPS:
        raise _Malformed
    hops: list[Address | None] = []
    for element in elements:
        element = element.strip(b" \t")
        hops.append(_UNKNOWN if element.lower() == b"unknown" else _address(element))
    return hops
