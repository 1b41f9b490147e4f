"""/metrics: snapshots in the Prometheus text exposition format (version 0.0.4).

Theory of operation
-------------------
Each metric family is written as ``# HELP``, ``# TYPE``, then its samples, and every sample
carries a ``worker`` label. A family must appear once in an exposition (Prometheus refuses a
second ``# TYPE`` line for the same name), so several workers are never merged by
concatenating their texts: :func:`render_metrics` takes all their snapshots and writes each
family once with every worker's samples under it, and :func:`merge_texts` does the same to
texts this module rendered (what a worker would send to the one answering the scrape).

Names follow Prometheus' conventions: a ``evloop_httpd_`` prefix, base units (seconds,
bytes), counters end in ``_total``, the loop iteration histogram has cumulative ``_bucket``
samples with an ``le`` label, then ``_sum`` and ``_count``. Label values are escaped as the
format requires (backslash, double quote, line feed); help texts are ours and plain.
Per-connection detail (peer, request line) is deliberately absent: one series per client
would grow without bound, and it is what /status.json is for.
"""

from __future__ import annotations

from collections.abc import Sequence

from .status import ITERATION_BUCKETS_S, STATUS_CLASSES, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "evloop_httpd_"

# (name without prefix, type, help). The order is the order of the exposition.
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("connections", "gauge", "Open client connections, by state."),
    ("requests_total", "counter", "Responses finished, by status class."),
    ("sent_bytes_total", "counter", "Bytes of responses sent to clients (heads and bodies)."),
    ("loop_iterations_total", "counter", "Passes of the event loop."),
    ("loop_ready_events_total", "counter", "Ready sockets reported by select, summed."),
    (
        "loop_iteration_duration_seconds",
        "histogram",
        "Work done in one pass of the event loop after select returned.",
    ),
    ("timers_pending", "gauge", "Connection deadlines waiting in the timer heap."),
    ("uptime_seconds", "gauge", "Seconds since the worker started."),
)


def escape_label(value: str) -> str:
    """A label value as the exposition format writes it between double quotes."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _float(x: float) -> str:
    if x == float("inf"):
        return "+Inf"
    return repr(float(x))


def _samples(snap: Snapshot) -> dict[str, list[str]]:
    """One worker's sample lines, by family name (without prefix)."""
    w = f'worker="{escape_label(snap.worker)}"'
    p = PREFIX
    out: dict[str, list[str]] = {}
    out["connections"] = [
        f'{p}connections{{{w},state="{escape_label(state)}"}} {n}'
        for state, n in sorted(snap.by_state.items())
    ]
    classes = dict.fromkeys(STATUS_CLASSES, 0) | snap.requests_by_class
    out["requests_total"] = [
        f'{p}requests_total{{{w},class="{escape_label(c)}"}} {n}' for c, n in classes.items()
    ]
    out["sent_bytes_total"] = [f"{p}sent_bytes_total{{{w}}} {snap.bytes_served}"]
    out["loop_iterations_total"] = [f"{p}loop_iterations_total{{{w}}} {snap.iterations}"]
    out["loop_ready_events_total"] = [f"{p}loop_ready_events_total{{{w}}} {snap.ready_events}"]
    name = f"{p}loop_iteration_duration_seconds"
    lines = []
    cumulative = 0
    for bound, n in zip((*ITERATION_BUCKETS_S, float("inf")), snap.iteration_counts, strict=True):
        cumulative += n
        lines.append(f'{name}_bucket{{{w},le="{_float(bound)}"}} {cumulative}')
    lines.append(f"{name}_sum{{{w}}} {_float(snap.iteration_sum_s)}")
    lines.append(f"{name}_count{{{w}}} {cumulative}")
    out["loop_iteration_duration_seconds"] = lines
    out["timers_pending"] = [f"{p}timers_pending{{{w}}} {snap.timers_pending}"]
    out["uptime_seconds"] = [f"{p}uptime_seconds{{{w}}} {_float(round(snap.uptime_s, 3))}"]
    return out


def render_metrics(snaps: Sequence[Snapshot]) -> bytes:
    """The exposition of one or more workers' snapshots, each family once."""
    per_worker = [_samples(s) for s in snaps]
    lines: list[str] = []
    for name, kind, text in FAMILIES:
        lines.append(f"# HELP {PREFIX}{name} {text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        for samples in per_worker:
            lines.extend(samples[name])
    return ("\n".join(lines) + "\n").encode()


def merge_texts(texts: Sequence[bytes]) -> bytes:
    """Several expositions rendered by :func:`render_metrics` (one per worker) as one: each
    family's ``# HELP`` and ``# TYPE`` once, then the samples of every text in turn. Families
    keep the order in which they first appear."""
    order: list[str] = []
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        family = ""
        for line in text.decode().splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                if family not in heads:
                    order.append(family)
                    heads[family] = []
                    samples[family] = []
                if len(heads[family]) < 2 and line not in heads[family]:
                    heads[family].append(line)
            elif line and not line.startswith("#"):
                if not family:
                    raise ValueError(f"sample before any # HELP line: {line!r}")
                samples[family].append(line)
    out = [line for f in order for line in (*heads[f], *samples[f])]
    return ("\n".join(out) + "\n").encode()
