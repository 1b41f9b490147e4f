"""Hypothesis wiring for the properties: targets, time-boxed runs, and seed files.

Theory of operation: a *target* pairs a strategy with a property from :mod:`fuzz.properties`.
A run asks hypothesis for a fixed number of examples under a fixed seed, so the same command
tries the same inputs; a long run is a series of such batches with successive seeds. When a
property fails, hypothesis shrinks the input and replays the smallest failing one last, so the
arguments seen last are the ones worth keeping: they are written to ``fuzz/seeds/`` as JSON,
and ``tests/unit/test_fuzz_smoke.py`` replays every seed file on each test run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from evloop_httpd.config import Limits

from . import parsers
from . import properties as props
from . import strategies as strat

SEEDS = Path(__file__).resolve().parent / "seeds"

# Set on Ctrl+C (see __main__). A KeyboardInterrupt raised by the signal handler can land where
# it is lost (inside hypothesis's own bookkeeping, a finalizer): then the run would go on to its
# deadline. So every example looks at this first, and raises again until the run has ended.
stop = threading.Event()


def _with_cuts(inputs: st.SearchStrategy[bytes]) -> st.SearchStrategy[tuple[bytes, list[int]]]:
    return inputs.flatmap(lambda d: st.tuples(st.just(d), strat.splits(d)))


_writes = st.lists(st.integers(1, 5000), min_size=1, max_size=6)


@dataclass
class Stats:
    inputs: int = 0
    deviations: Counter[str] = field(default_factory=Counter)


def _check_oracle(stats: Stats, data: bytes) -> None:
    dev = props.compare(data)
    if dev is not None:
        stats.deviations[dev] += 1


def _check_connection(
    stats: Stats, data: bytes, cuts: list[int], writes: list[int], small: bool
) -> None:
    props.check_connection(strat.cut(data, cuts), writes, _limits(small))


@dataclass(frozen=True)
class Target:
    strategy: st.SearchStrategy[tuple[Any, ...]]
    check: Callable[..., None]


def _limits(small: bool) -> Limits:
    return props.SMALL_LIMITS if small else props.LIMITS


TARGETS: dict[str, Target] = {
    "total": Target(
        st.tuples(strat.any_input, st.booleans()),
        lambda stats, d, small: props.check_total(d, _limits(small)),
    ),
    "split": Target(
        st.tuples(_with_cuts(strat.any_input), st.booleans()).map(lambda t: (*t[0], t[1])),
        lambda stats, d, c, small: props.check_split(d, c, _limits(small)),
    ),
    "oracle": Target(
        st.one_of(strat.pipeline, strat.mutated(), strat.mutated()).map(lambda d: (d,)),
        _check_oracle,
    ),
    "connection": Target(
        st.tuples(_with_cuts(strat.any_input), _writes, st.booleans()).map(
            lambda t: (t[0][0], t[0][1], t[1], t[2])
        ),
        _check_connection,
    ),
}


# The other parsers of untrusted bytes (fuzz/parsers.py).
TARGETS.update(
    {
        "multipart-total": Target(
            st.tuples(parsers.mp_any, st.booleans()).map(lambda t: (*t[0], t[1])),
            lambda stats, b, d, small: parsers.check_multipart_total(b, d, small),
        ),
        "multipart-split": Target(
            st.tuples(
                parsers.mp_any.flatmap(lambda t: st.tuples(st.just(t), strat.splits(t[1]))),
                st.booleans(),
            ).map(lambda t: (*t[0][0], t[0][1], t[1])),
            lambda stats, b, d, c, small: parsers.check_multipart_split(b, d, c, small),
        ),
        "multipart-oracle": Target(
            parsers.mp_valid(),
            lambda stats, b, d: parsers.check_multipart_oracle(b, d),
        ),
        "proxy-total": Target(
            parsers.proxy_any.map(lambda d: (d,)),
            lambda stats, d: parsers.check_proxy_total(d),
        ),
        "proxy-split": Target(
            _with_cuts(parsers.proxy_any),
            lambda stats, d, c: parsers.check_proxy_split(d, c),
        ),
        "forwarded-total": Target(
            st.tuples(parsers.peer_address, parsers.forwarded_value, parsers.forwarded_value),
            lambda stats, p, f, x: parsers.check_forwarded_total(p, f, x),
        ),
    }
)


# Seed files: bytes as latin-1 text, so that a seed stays readable in a diff.


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes": value.decode("latin-1")}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return value["bytes"].encode("latin-1")
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def save_seed(name: str, args: tuple[Any, ...], error: str) -> Path:
    SEEDS.mkdir(exist_ok=True)
    text = json.dumps({"target": name, "args": _encode(args)}, sort_keys=True)
    path = SEEDS / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    record = {"target": name, "args": _encode(args), "error": error.splitlines()[:20]}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_seeds() -> list[tuple[str, str, tuple[Any, ...]]]:
    """(file name, target, args) for every seed file."""
    found = []
    for path in sorted(SEEDS.glob("*.json")):
        record = json.loads(path.read_text())
        found.append((path.name, record["target"], tuple(_decode(record["args"]))))
    return found


def replay(name: str, args: tuple[Any, ...]) -> None:
    TARGETS[name].check(Stats(), *args)


class Failure(Exception):
    def __init__(self, target: str, path: Path, error: BaseException) -> None:
        super().__init__(f"{target}: {error!s}\nsaved as {path}")
        self.path = path


def run(name: str, examples: int, seed_value: int, stats: Stats, shrink: bool = True) -> None:
    """Try ``examples`` inputs on target ``name``; raise :class:`Failure` on a finding."""
    target = TARGETS[name]
    last: list[tuple[Any, ...]] = []
    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]

    @seed(seed_value)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=phases,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(target.strategy)
    def prop(args: tuple[Any, ...]) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        last[:] = [args]
        stats.inputs += 1
        target.check(stats, *args)

    if stop.is_set():
        raise KeyboardInterrupt
    try:
        prop()
    except Exception as exc:
        if stop.is_set():  # an interrupt that surfaced as an error is no finding
            raise KeyboardInterrupt from exc
        path = save_seed(name, last[0], f"{type(exc).__name__}: {exc}")
        raise Failure(name, path, exc) from exc
