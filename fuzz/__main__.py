"""``python -m fuzz``: fuzz the parser and the connection for a while, or for CI.

    python -m fuzz --minutes 10        # rotate over all targets for ten minutes
    python -m fuzz --ci                # the fixed-seed pass .ci/run uses (about a minute)
    python -m fuzz --target oracle --minutes 2 --seed 7

Exit status 0: nothing found. 1: a finding, saved under fuzz/seeds/ (see fuzz/README.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .harness import TARGETS, Failure, Stats, run, stop

# CI: examples per target under one fixed seed, sized for about a minute on one core.
CI_SEED = 20_250_101
CI_EXAMPLES = {"total": 2000, "split": 2000, "oracle": 3000, "connection": 1500}
# The parsers of fuzz/parsers.py: smaller input spaces, and about 20 s more in all.
CI_EXAMPLES.update(
    {
        "multipart-total": 500,
        "multipart-split": 500,
        "multipart-oracle": 500,
        "proxy-total": 500,
        "proxy-split": 500,
        "forwarded-total": 500,
    }
)
BATCH = 500


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    ap.add_argument("--ci", action="store_true", help="fixed seed and counts, for CI")
    ap.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    ap.add_argument("--target", choices=sorted(TARGETS), action="append", help="repeatable")
    args = ap.parse_args(argv)
    # A run in the background ignores SIGINT; let SIGTERM stop it with a report too.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    names = args.target or list(TARGETS)
    stats = {name: Stats() for name in names}
    started = time.monotonic()
    try:
        if args.ci:
            for name in names:
                run(name, CI_EXAMPLES[name], CI_SEED, stats[name])
                _report(stats, started, final=False)
        else:
            base = args.seed if args.seed is not None else int(time.time())
            print(f"seed {base}; Ctrl+C stops and reports", flush=True)
            deadline = started + args.minutes * 60
            batch = 0
            while time.monotonic() < deadline and not stop.is_set():
                name = names[batch % len(names)]
                run(name, BATCH, base + batch, stats[name])
                batch += 1
                if batch % len(names) == 0:
                    _report(stats, started, final=False)
    except Failure as failure:
        _report(stats, started, final=True)
        print(f"FINDING in {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    _report(stats, started, final=True)
    return 0


def _interrupt(_signum: int, _frame: object) -> None:
    stop.set()  # in case the exception below is lost: the harness raises it again
    raise KeyboardInterrupt


def _report(stats: dict[str, Stats], started: float, final: bool) -> None:
    total = sum(s.inputs for s in stats.values())
    parts = ", ".join(f"{name} {s.inputs}" for name, s in stats.items())
    label = "done" if final else "so far"
    print(f"[{time.monotonic() - started:7.1f}s] {label}: {total} inputs ({parts})", flush=True)
    if final:
        for name, s in stats.items():
            for dev, count in sorted(s.deviations.items()):
                print(f"    {name}: {count} inputs explained by {dev}")


if __name__ == "__main__":
    sys.exit(main())
