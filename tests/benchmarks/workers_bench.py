"""``--workers 2`` against ``--workers 1``: the same scenarios, both figures and the ratio.

Theory of operation
-------------------
Reuses ``run.py``'s pieces (docroot, server start with a bounded wait, wrk or loadgen.py, the
measurement) but pins nothing: the point is to let two worker processes use both cores, so the
load generator has to share them too (on a 2-core machine the ratio is then bounded well below
2, and says so). Rounds alternate 1, 2, 1, 2, ... so drift of the machine hits both alike; the
median per configuration is reported with the ratio 2-workers / 1-worker. Bounded: each load
by ``--duration``, each start by run.py's deadline; servers are killed in a ``finally``.
Prints, never asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import run

DEFAULT_SCENARIOS = ("small_keepalive", "medium_keepalive")


def spec(workers: int) -> run.ServerSpec:
    return run.ServerSpec(
        f"workers={workers}",
        lambda: None,
        lambda port, docroot, work: [
            sys.executable, "-m", "evloop_httpd", "-p", str(port), "-d", str(docroot),
            "-b", run.HOST, "-q", "--workers", str(workers),
        ],
        cwd=run.REPO_ROOT,
        env={"PYTHONPATH": str(run.REPO_ROOT)},
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2, help="against 1 (default 2)")
    p.add_argument("--scenarios", nargs="+", default=list(DEFAULT_SCENARIOS))
    args = p.parse_args()
    scenarios = [s for s in run.SCENARIOS if s.key in args.scenarios]
    use_wrk = shutil.which("wrk") is not None
    print(f"loadgen {'wrk -t1' if use_wrk else 'loadgen.py'}; unpinned; cpus {os.cpu_count()}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    figures: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="evloop-workers-") as tmp:
        docroot = Path(tmp) / "root"
        docroot.mkdir()
        run.make_docroot(docroot)
        for round_no in range(args.rounds):
            for workers in (1, args.workers):
                work = Path(tmp) / f"w{workers}-r{round_no}"
                work.mkdir()
                with run.running(spec(workers), docroot, work, None) as server:
                    for sc in scenarios:
                        m = run.measure_load(sc, server.port, args.duration, use_wrk, work, None)
                        note = f" ({m.note})" if m.note else ""
                        figure = f"{run._fmt(m.value, sc.unit)} {sc.unit}{note}"
                        print(f"round {round_no + 1} workers={workers} {sc.key}: {figure}")
                        if m.value is not None:
                            figures.setdefault((workers, sc.key), []).append(m.value)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'scenario':<20}{'workers=1':>14}{f'workers={args.workers}':>14}{'ratio':>8}")
    for sc in scenarios:
        one = figures.get((1, sc.key))
        many = figures.get((args.workers, sc.key))
        a = statistics.median(one) if one else None
        b = statistics.median(many) if many else None
        ratio = f"{b / a:.2f}" if a and b else "-"
        print(f"{sc.key:<20}{run._fmt(a, sc.unit):>14}{run._fmt(b, sc.unit):>14}{ratio:>8}"
              f"  {sc.unit}")  # fmt: skip


if __name__ == "__main__":
    main()
