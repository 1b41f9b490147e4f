"""Proactive negotiation (RFC 9110 §12): reading Accept and Accept-Encoding weights.

Theory of operation: the server has at most two choices to make, JSON or HTML for a directory
listing, and which precompressed sidecar (if any) to send for a file. Both read a list of
``token;q=value`` elements, parsed once by :func:`qvalues`. Parsing is lenient where a mistake
costs nothing (an element we cannot read is skipped and the default representation is sent,
which is always acceptable in practice); a ``q`` of 0 means "not acceptable" (§12.4.2), and a
choice is never made from a wildcard alone when it would surprise (see each function).
"""

from __future__ import annotations

import re

from .grammar import MAX_LIST_ELEMENTS, too_many_elements

# RFC 9110 §12.4.2: weight = OWS ";" OWS "q=" qvalue;
#   qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(rb"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_TOKENISH = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z/]+")

# Sidecar file suffixes by content coding, in our order of preference on equal weights.
SIDECARS: tuple[tuple[bytes, str], ...] = ((b"br", ".br"), (b"gzip", ".gz"))


def qvalues(value: bytes) -> dict[bytes, float]:
    """Each element's lower-cased name (a coding or a media range) mapped to its weight.

    Parameters other than ``q`` are dropped: we never negotiate on them. An element repeated
    keeps its first weight. Unreadable elements are skipped. A value of more than
    ``MAX_LIST_ELEMENTS`` elements (empty ones included), or parameters, is ignored as a whole
    (an empty mapping): reading only its start could miss a ``q=0`` further on, and the default
    representation is always acceptable (RFC 9110 §5.6.1 lets us bound the work).
    """
    out: dict[bytes, float] = {}
    if too_many_elements(value) or value.count(b";") >= MAX_LIST_ELEMENTS:
        return out
    for element in value.split(b","):
        name, *params = element.split(b";")
        name = name.strip(b" \t").lower()
        if not _TOKENISH.fullmatch(name):
            continue
        q = 1.0
        for param in params:
            key, _, val = param.strip(b" \t").partition(b"=")
            if key.lower() == b"q":
                q = float(val) if _QVALUE.fullmatch(val) else -1.0
        if q >= 0 and name not in out:
            out[name] = q
    return out


def _coding_weights(accept_encoding: bytes, codings: list[bytes]) -> list[float]:
    weights = qvalues(accept_encoding)
    if b"x-gzip" in weights and b"gzip" not in weights:
        weights[b"gzip"] = weights[b"x-gzip"]
    star = weights.get(b"*", 0.0)
    return [weights.get(coding, star) for coding in codings]


def choose_coding(accept_encoding: bytes | None, available: list[bytes]) -> bytes | None:
    """The content coding to send among ``available`` (in preference order), or ``None`` for
    identity.

    No Accept-Encoding means any coding is acceptable (§12.5.3), but a client that sends none
    is usually a script that wants the bytes as stored, so we send identity then; so does curl.
    Otherwise the coding with the highest weight wins, ties going to the earlier one in
    ``available`` (brotli before gzip). ``x-gzip`` counts as ``gzip`` (§8.4.1.3). A coding named
    only through ``*`` is acceptable with the weight of ``*``.
    """
    if accept_encoding is None or not available:
        return None
    best: bytes | None = None
    best_q = 0.0
    for coding, q in zip(available, _coding_weights(accept_encoding, available), strict=True):
        if q > best_q:
            best, best_q = coding, q
    return best


def preference(accept_encoding: bytes | None) -> tuple[bytes, ...]:
    """The codings of ``SIDECARS`` that ``accept_encoding`` accepts, best first, ties in
    ``SIDECARS`` order.

    All that :func:`choose_coding` makes of the field, in a few bytes: for any ``available`` in
    ``SIDECARS`` order, it chooses the first of these that is available. The response cache
    keys on this rather than on the raw value, which a client can make different (and 30 KiB
    long) on every request.
    """
    if accept_encoding is None:
        return ()
    codings = [c for c, _ in SIDECARS]
    weights = _coding_weights(accept_encoding, codings)
    ranked = sorted(range(len(codings)), key=lambda i: -weights[i])  # stable: ties keep order
    return tuple(codings[i] for i in ranked if weights[i] > 0)


def wants_json(accept: bytes | None) -> bool:
    """Whether a listing should be JSON: only when ``application/json`` is named explicitly,
    with a weight above zero and no lower than an explicit ``text/html``.

    Wildcards do not count: browsers send ``*/*`` and must get HTML.
    """
    if accept is None:
        return False
    weights = qvalues(accept)
    q_json = weights.get(b"application/json", 0.0)
    return q_json > 0 and q_json >= weights.get(b"text/html", 0.0)
