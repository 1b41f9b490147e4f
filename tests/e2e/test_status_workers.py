"""--status with --workers (issue 16): the page and metrics cover every worker, labelled.

One status listener, made by the supervisor, is shared by the workers; whichever worker takes
a status connection answers with its own snapshot and the others' latest (watch.StatusShare).
So the counts of all workers add up whichever worker answers."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ..helpers import Client, get, request, wait_until
from ..workerhelp import worker_server

REQUESTS = 30  # each on a new connection, so both workers get some


def status_port(out: str) -> int:
    line = next(x for x in out.splitlines() if x.startswith("Status page on "))
    return int(line.rsplit(":", 1)[1].rstrip("/"))


@pytest.mark.slow
def test_the_status_covers_every_worker(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a\n")
    private_tmp = tmp_path / "tmp"  # where the supervisor makes its snapshot folder
    private_tmp.mkdir()
    args = ("-p", "0", "-d", str(root), "-q", "--workers", "2", "--status", "0")
    with worker_server(tmp_path, *args, env={"TMPDIR": str(private_tmp)}) as srv:
        port = srv.wait_serving()
        sport = status_port(srv.out())
        served = 0
        for i in range(REQUESTS):
            with Client(port) as c:  # a new connection each: the kernel spreads them
                c.send(get("/a.txt" if i % 3 else "/missing"))
                served += c.read_response().status == 200
        missing = REQUESTS - served

        def snap() -> dict[str, object]:
            data = json.loads(request(sport, get("/status.json")).body)
            assert isinstance(data, dict)
            return data

        # Status polls are 2xx too; the 404s are only the clients'. The other worker's figures
        # are at most about a second old: wait for them.
        assert wait_until(lambda: snap()["requests"]["by_class"]["4xx"] == missing)  # type: ignore[index]
        data = snap()
        assert data["worker"] == "1,2"
        assert data["requests"]["by_class"]["2xx"] >= served  # type: ignore[index]
        families: dict[str, Metric] = {}

        def scrape() -> float:
            # Whichever worker answers this one, its view of the other may be a second older
            # than the last poll's: wait for it too.
            metrics = request(sport, get("/metrics")).body.decode()
            families.clear()
            families.update((f.name, f) for f in text_string_to_metric_families(metrics))
            samples = families["evloop_httpd_requests"].samples
            return sum(s.value for s in samples if s.labels["class"] == "4xx")

        assert wait_until(lambda: scrape() == missing)
        samples = families["evloop_httpd_requests"].samples
        assert {s.labels["worker"] for s in samples} == {"1", "2"}
        # Both workers took some of the connections (SO_REUSEPORT spreads them by hash).
        per_worker = {
            w: sum(s.value for s in samples if s.labels["worker"] == w) for w in ("1", "2")
        }
        assert all(n > 0 for n in per_worker.values()), per_worker
        uptime = families["evloop_httpd_uptime_seconds"].samples
        assert len(uptime) == 2  # one sample per worker, one family: Prometheus accepts it
        # The folder where the workers share their snapshots goes with the server.
        (folder,) = private_tmp.glob("evloop-status-*")
        assert {"worker-1.json", "worker-2.json"} <= {p.name for p in folder.iterdir()}
        srv.signal(signal.SIGTERM)
        assert srv.wait() == 0
        assert not folder.exists()
