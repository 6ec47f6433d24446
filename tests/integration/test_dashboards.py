"""The Grafana dashboards: their files are complete, and a real Prometheus scraping a running
cluster returns data for every query of every panel."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.programs import ROOT, workload

from tender_ray.metrics.collector import (
    DEFAULT_PORT,
)

GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
FORBIDDEN_LABELS = {"pid", "page", "frame", "address"}


# --- the Grafana files ----------------------------------------------------------------------------

def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every target of every panel."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for p in panels(board):
            for t in p["targets"]:
                out.append((path.name, p["title"], t["expr"]))
    return out


def as_prometheus_query(expr: str) -> str:
    """A panel's expr as Prometheus gets it from Grafana with every machine selected."""
    return expr.replace("${machine}", ".*").replace("$machine", ".*")


def test_grafana_files_are_complete() -> None:
    assert {p.name for p in DASHBOARDS} == {"tender-overview.json", "tender-migrations.json",
                                           "tender-resources.json", "tender-balancer.json"}
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for p in panels(board):
            assert p["datasource"]["uid"] == "${datasource}", (path.name, p["title"])
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"])
            assert {"x", "y", "w", "h"} <= set(p["gridPos"])
            for t in p["targets"]:
                assert "tender_" in t["expr"]
                assert "$__" not in t["expr"], "queries must also run outside Grafana"
    assert len(uids) == 4
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml")
                                 .read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/tender.yml").read_text())
    assert providers["providers"][0]["type"] == "file"
    scrape_cfg = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    assert scrape_cfg["scrape_configs"][0]["static_configs"][0]["targets"] == \
        [f"127.0.0.1:{DEFAULT_PORT}"]


# --- a real Prometheus --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prom_get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, AssertionError):
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus"
                                           if os.path.exists("/usr/bin/prometheus") else None)
    if path is None:
        pytest.fail("the `prometheus` server is not installed: this test runs a real one. "
                    "Install Debian's package (`apt-get install prometheus`; `make test` "
                    "does it where apt-get can run)")
    return path


def start_prometheus(binary: str, exporter_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes],
                                                                          str]:
    """Prometheus on 127.0.0.1 (a free port), scraping the exporter every second, with the
    repository's grafana/prometheus.yml as its configuration otherwise."""
    config = yaml.safe_load((GRAFANA / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{exporter_port}"]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def stop_prometheus(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, 9)
            proc.wait(timeout=15)


def test_every_dashboard_query_has_data_in_a_real_prometheus(
        prometheus_binary: str, tmp_path: Path) -> None:
    import ray

    from tender_ray.balancing.policies import BalancerParams, Policy
    from tender_ray.cluster import Cluster
    from tender_ray.config import MachineConfig
    from tender_ray.errors import TenderError
    from tender_ray.migration.options import MigrationOptions, Transfer

    if ray.is_initialized():  # another module's Ray: this test needs its own
        ray.shutdown()
    started = time.monotonic()
    cluster = Cluster(num_cpus=2, object_store_mib=128)
    prom: subprocess.Popen[bytes] | None = None
    try:
        for name in ("a", "b"):
            cluster.add_machine(MachineConfig(name=name, memory_mib=64, quantum_us=1000))
        # Policy none: the moves below are the test's own, and the balancer only drains.
        cluster.start_balancer(BalancerParams(policy=Policy.NONE), MigrationOptions(), 0.2)
        exporter = cluster.start_exporter(0)
        prom, base = start_prometheus(prometheus_binary, exporter, tmp_path)
        wait_for("prometheus ready", lambda: urllib.request.urlopen(
            base + "/-/ready", timeout=2).status == 200, 60)
        a, b = cluster.machine("a"), cluster.machine("b")

        def run(handle: Any, name: str, *args: str) -> int:
            path = workload(name)
            return int(handle.exec(path.read_bytes(), name, [str(path), *args]))

        holder = run(a, "memhold", "4", "100000", "10")  # sleeps in rounds until killed
        worker = run(a, "sieve", "60000000")  # several seconds of CPU on the emulator
        short = [run(b, "unsupported"), run(b, "hello")]
        where = {holder: a, worker: a}
        soon, late = time.monotonic() + 10, time.monotonic() + 60
        moves = 0
        while time.monotonic() < soon or (moves < 6 and time.monotonic() < late):
            for pid in (holder, worker):
                src = where[pid]
                dst = b if src is a else a
                options = MigrationOptions(transfer=Transfer.PLATE if moves % 3 == 2
                                           else Transfer.DSM)
                try:
                    src.migrate(pid, dst.name, options, timeout=60)
                except TenderError:
                    continue  # the sieve may have finished: it stays where it is
                where[pid] = dst
                moves += 1
            time.sleep(0.3)
        assert moves >= 6, f"only {moves} migrations"
        # Drain b: the balancer moves what runs there to a; b stays cordoned.
        report = cluster.resolve_drain(cluster.drain_async("b", 20), timeout=60)
        assert report.ok, report
        a.kill(holder)  # the drain left everything on a
        for pid in short:
            b.wait(pid, timeout=60)
        wait_for("counters in the exporter", lambda: any(
            "tender_unsupported_syscalls_total{" in line for line in urllib.request.urlopen(
                f"http://127.0.0.1:{exporter}/metrics", timeout=5).read().decode()
            .splitlines()), 30)
        # Enough scrapes after the last change for every rate() window to have two samples.
        time.sleep(4)
        wait_for("scrapes", lambda: float(prom_get(
            base, "/api/v1/query", query='count_over_time(up{job="tender"}[1m])'
        )["result"][0]["value"][1]) >= 10, 30)

        empty, nan = [], []
        queries = dashboard_queries()
        assert len(queries) >= 40
        for board, title, expr in queries:
            result = prom_get(base, "/api/v1/query", query=as_prometheus_query(expr))["result"]
            if not result:
                empty.append(f"{board} / {title}: {expr}")
            elif not any(math.isfinite(float(r["value"][1])) for r in result):
                nan.append(f"{board} / {title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        assert not nan, "panels with only NaN:\n" + "\n".join(nan)
        # The machine variable of every dashboard has values.
        values = prom_get(base, "/api/v1/label/machine/values",
                          **{"match[]": "tender_machine_up"})
        assert set(values) == {"a", "b"}
        targets = prom_get(base, "/api/v1/targets")["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    except BaseException:
        if (tmp_path / "prometheus.log").exists():
            print((tmp_path / "prometheus.log").read_text()[-3000:])
        raise
    finally:
        if prom is not None:
            stop_prometheus(prom)
        cluster.shutdown()
        ray.shutdown()
        print(f"real-Prometheus test: {time.monotonic() - started:.1f}s")
