"""Metrics (issue #5): the collector over hand-made snapshots, the HTTP endpoint, migration
logs, the Grafana files, and a real Prometheus scraping a running cluster, through which every
query of every dashboard panel must return data.
"""

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, workload
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from tender_ray.machine import Machine, MachineStatistics, ProcessInfo
from tender_ray.metrics import (
    DEFAULT_PORT,
    PHASE_BUCKETS,
    MetricsServer,
    TenderCollector,
    frames_by_state,
    strategy,
)
from tender_ray.resources.computation import ComputationStatistics
from tender_ray.resources.manager import ManagerStatistics
from tender_ray.resources.real_memory import RealMemoryStatistics

GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
FORBIDDEN_LABELS = {"pid", "page", "frame", "address"}


# --- hand-made snapshots ----------------------------------------------------------------------

def stats(name: str, *, free: int = 900, used: int = 100, cordoned: bool = False,
          migrations: dict[str, int] | None = None) -> MachineStatistics:
    return MachineStatistics(
        name=name, state="running",
        computations=(ComputationStatistics(0, "running", 1001, 2.5, 40),
                      ComputationStatistics(1, "idle", None, 1.5, 20)),
        processes={"running": 1, "runnable": 2, "frozen": 1}, runnable=3, load=1.5,
        utilisation=0.4, memory=RealMemoryStatistics(free + used, free, used),
        managers=(ManagerStatistics("process", 5, 1, 3, 2, 1, 2, True),
                  ManagerStatistics("virtual_space", 4, 0, 2, 2, 1, 0, True)),
        syscalls={"write": 10, "brk": 3, "socket": 1}, unsupported={"socket": 1},
        exited=4, uptime=12.0, cordoned=cordoned,
        migrations=migrations if migrations is not None else {"out_ok": 2, "in_ok": 1},
        migration_bytes=8192, migration_phase_seconds={"freeze": 0.001, "create": 0.002})


def proc(pid: int, machine: str, state: str, pages: int) -> ProcessInfo:
    return ProcessInfo(pid=pid, name=f"p{pid}", machine=machine, state=state, exit_status=None,
                       exit_reason="", cpu_seconds=1.25, run_seconds=3.0, resident_pages=pages,
                       syscalls={}, unsupported={}, migrations=(), created_at=time.time() - 3)


def record(pid: int, src: str, dst: str, started: float, *, result: str = "ok",
           transfer: str = "dsm", reuse: bool = True, seconds: float = 0.02) -> dict[str, Any]:
    return {"pid": pid, "from": src, "to": dst, "seconds": seconds, "bytes": 4096 * 3,
            "pages": 3, "phases": {"freeze": 0.0002, "create": 0.004, "export": 0.003,
                                   "commit": 0.5},
            "transfer": transfer, "reuse": reuse, "resources": "needed", "result": result,
            "error": "", "started_at": started}


@dataclass(frozen=True)
class Drain:
    machine: str
    seconds: float
    moved: tuple[dict[str, Any], ...]
    ok: bool


@dataclass(frozen=True)
class Balancer:
    rounds: int = 7
    decisions: int = 3
    migrations: tuple[dict[str, Any], ...] = ({"reason": "drain"},
                                              {"reason": "cost: saves 1.2s > 0.1s"})
    failures: tuple[str, ...] = ("boom",)
    drains: tuple[Drain, ...] = (Drain("b", 1.5, ({"pid": 1},), True),)
    policy: str = "threshold"


def scrape(collector: TenderCollector) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """{family name: [(sample name, labels, value)]} as a scraper would parse them."""
    registry = CollectorRegistry()
    registry.register(collector)
    from prometheus_client import generate_latest

    text = generate_latest(registry).decode()
    out: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name + ("_total" if family.type == "counter" else "")] = [
            (s.name, dict(s.labels), s.value) for s in family.samples]
        out.setdefault("__types__", []).append((family.name, {"type": family.type}, 0.0))
    return out


def value(samples: list[tuple[str, dict[str, str], float]], name: str | None = None,
          **labels: str) -> float:
    hits = [v for n, lab, v in samples if (name is None or n == name)
            and all(lab.get(k) == want for k, want in labels.items())]
    assert len(hits) == 1, f"{len(hits)} samples match {name} {labels}"
    return hits[0]


@pytest.fixture
def collected() -> dict[str, list[tuple[str, dict[str, str], float]]]:
    c = TenderCollector()
    now = time.time()
    c.update({"a": stats("a"), "b": stats("b", cordoned=True, migrations={})},
             processes={"a": [proc(1001, "a", "running", 40), proc(1002, "a", "frozen", 30)],
                        "b": []},
             migrations={"a": [record(1001, "a", "b", now - 2), record(1002, "a", "b", now - 1,
                                                                      transfer="plate",
                                                                      reuse=False)],
                         "b": [record(1001, "b", "a", now, result="failed", seconds=0.7)]},
             balancer=Balancer())
    return scrape(c)


# --- the collector ----------------------------------------------------------------------------

def test_names_follow_prometheus_conventions(
        collected: dict[str, list[tuple[str, dict[str, str], float]]]) -> None:
    types = {name: lab["type"] for name, lab, _ in collected.pop("__types__")}
    assert types, "no families"
    for family, kind in types.items():
        assert family.startswith("tender_"), family
        if kind == "counter":
            assert all(s.endswith(("_total", "_created")) for s, _, _ in
                       collected[family + "_total"]), family
        else:
            assert not family.endswith("_total"), f"{family} is a {kind} named like a counter"
    for family, samples in collected.items():
        for _, labels, _ in samples:
            assert not FORBIDDEN_LABELS & set(labels), f"{family} has {labels}"


def test_machine_families(collected: dict[str, list[tuple[str, dict[str, str], float]]]
                          ) -> None:
    assert value(collected["tender_machine_up"], machine="a") == 1
    assert value(collected["tender_machine_draining"], machine="b") == 1
    assert value(collected["tender_machine_draining"], machine="a") == 0
    assert value(collected["tender_processes"], machine="a", state="runnable") == 2
    assert value(collected["tender_processes"], machine="a", state="sleeping") == 0
    assert value(collected["tender_machine_runnable"], machine="a") == 3
    assert value(collected["tender_machine_runnable_per_computation"], machine="a") == 1.5
    assert value(collected["tender_computation_busy_seconds_total"], machine="a") == 4.0
    assert value(collected["tender_resources"], machine="a", resource="process",
                 state="pool") == 2
    assert value(collected["tender_resources"], machine="a", resource="process",
                 state="held") == 1
    assert value(collected["tender_resources_reused_total"], machine="a",
                 resource="virtual_space") == 2
    assert value(collected["tender_syscalls_total"], machine="a", syscall="write") == 10
    assert value(collected["tender_unsupported_syscalls_total"], machine="a",
                 syscall="socket") == 1
    # Counters are the machines' own totals; unseen ones are exported as zero.
    assert value(collected["tender_machine_migrations_total"], machine="a", direction="out",
                 result="ok") == 2
    assert value(collected["tender_machine_migrations_total"], machine="b", direction="out",
                 result="failed") == 0
    assert value(collected["tender_machine_migration_phase_seconds_total"], machine="a",
                 phase="create") == 0.002
    # Frames: 100 used, 40 by a running process, 30 by a frozen one (held by its migration),
    # 30 by nobody in the table (an arriving process): 40 used, 60 held.
    assert value(collected["tender_memory_frames"], machine="a", state="used") == 40
    assert value(collected["tender_memory_frames"], machine="a", state="held") == 60
    assert value(collected["tender_memory_frames"], machine="a", state="free") == 900


def test_migration_families_and_histograms(
        collected: dict[str, list[tuple[str, dict[str, str], float]]]) -> None:
    count = collected["tender_migrations_total"]
    assert value(count, source="a", destination="b", result="ok", strategy="dsm") == 1
    assert value(count, source="a", destination="b", result="ok",
                 strategy="plate+noreuse") == 1
    assert value(count, source="b", destination="a", result="failed", strategy="dsm") == 1
    assert value(collected["tender_migration_bytes_total"], source="a", destination="b",
                 strategy="dsm") == 3 * 4096
    phases = collected["tender_migration_phase_duration_seconds"]
    buckets = [(lab["le"], v) for n, lab, v in phases if n.endswith("_bucket")
               and lab["phase"] == "commit" and lab["strategy"] == "dsm"]
    assert [le for le, _ in buckets] == [*(repr(b) for b in PHASE_BUCKETS), "+Inf"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == 2  # cumulative; ok and failed one
    assert dict(buckets)["0.25"] == 0 and dict(buckets)["0.5"] == 2
    assert value(phases, "tender_migration_phase_duration_seconds_count", phase="commit",
                 strategy="dsm") == 2
    assert value(phases, "tender_migration_phase_duration_seconds_sum", phase="commit",
                 strategy="dsm") == pytest.approx(1.0)
    duration = collected["tender_migration_duration_seconds"]
    assert value(duration, "tender_migration_duration_seconds_count", strategy="dsm",
                 result="failed") == 1


def test_balancer_families(collected: dict[str, list[tuple[str, dict[str, str], float]]]
                           ) -> None:
    assert value(collected["tender_balancer_info"], policy="threshold") == 1
    assert value(collected["tender_balancer_decisions_total"], policy="threshold") == 3
    assert value(collected["tender_balancer_rounds_total"], policy="threshold") == 7
    moves = collected["tender_balancer_migrations_total"]
    assert value(moves, reason="drain") == 1 and value(moves, reason="cost") == 1
    assert value(moves, reason="greedy") == 0
    assert value(collected["tender_balancer_failures_total"]) == 1
    assert value(collected["tender_balancer_drains_total"], machine="b", result="ok") == 1
    assert value(collected["tender_balancer_drains_total"], machine="a", result="ok") == 0
    assert value(collected["tender_balancer_drain_seconds_total"], machine="b") == 1.5
    assert value(collected["tender_balancer_drain_moved_processes_total"], machine="b") == 1


def test_records_count_once_and_machines_come_and_go() -> None:
    c = TenderCollector()
    now = time.time()
    first = [record(1, "a", "b", now - 3), record(2, "a", "b", now - 2)]
    c.update({"a": stats("a"), "b": stats("b")}, migrations={"a": first})
    c.update({"a": stats("a"), "b": stats("b")},
             migrations={"a": [*first, record(3, "a", "b", now - 1)]})
    # The window moved on (record 1 dropped off the machine's deque): nothing is recounted.
    c.update({"a": stats("a")}, migrations={"a": [first[1], record(3, "a", "b", now - 1)]},
             down=["b"])
    got = scrape(c)
    assert value(got["tender_migrations_total"], source="a", destination="b") == 3
    assert value(got["tender_machine_up"], machine="b") == 0  # last snapshot kept, marked
    assert value(got["tender_exporter_poll_errors_total"], machine="b") == 1
    c.update({"a": stats("a")})  # b was removed from the cluster: its series go
    got = scrape(c)
    assert {lab["machine"] for _, lab, _ in got["tender_machine_up"]} == {"a"}
    assert value(got["tender_migrations_total"], source="a", destination="b") == 3


def test_a_scrape_asks_for_a_fresh_poll_first() -> None:
    """The exporter polls when scraped: the scrape shows the machines as they are then; a
    failed poll still serves the last snapshot."""
    c = TenderCollector()
    polls: list[int] = []

    def refresh() -> None:
        polls.append(len(polls))
        if len(polls) == 1:
            c.update({"a": stats("a"), "b": stats("b")})
        else:
            raise TimeoutError("a machine did not answer")

    c.refresh = refresh
    got = scrape(c)
    assert polls == [0]
    assert {lab["machine"] for _, lab, _ in got["tender_machine_up"]} == {"a", "b"}
    got = scrape(c)
    assert polls == [0, 1]
    assert {lab["machine"] for _, lab, _ in got["tender_machine_up"]} == {"a", "b"}


def test_frames_add_up_and_strategy_words() -> None:
    s = stats("a", free=10, used=90)
    frames = frames_by_state(s, [proc(1, "a", "running", 100)])  # a racy, larger sum
    assert frames == {"free": 10, "used": 90, "held": 0}
    assert frames_by_state(s, None) == {"free": 10, "used": 90, "held": 0}
    assert sum(frames_by_state(s, [proc(1, "a", "frozen", 50)]).values()) == 100
    assert strategy({"transfer": "plate", "reuse": False, "resources": "all"}) == \
        "plate+noreuse+all"
    assert strategy({"transfer": "dsm", "reuse": True, "resources": "needed"}) == "dsm"


def test_server_serves_and_stops() -> None:
    server = MetricsServer()
    port = server.start(0)
    try:
        assert port > 0 and server.url == f"http://127.0.0.1:{port}/metrics"
        server.update({"a": stats("a")})
        with urllib.request.urlopen(server.url, timeout=5) as r:
            text = r.read().decode()
        assert 'tender_machine_up{machine="a"} 1.0' in text
        with pytest.raises(OSError):  # one port, one exporter
            MetricsServer().start(port)
    finally:
        server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert DEFAULT_PORT == 9464


# --- logs: one line per phase -------------------------------------------------------------------

def test_migration_logs_one_line_per_phase(make_machine: Callable[..., Machine]) -> None:
    import structlog

    from tender_ray import logs
    from tender_ray.migration import migrate_local

    a, b = make_machine(name="a", quantum_us=1000), make_machine(name="b", quantum_us=1000)
    path = workload("memhold")
    pid = a.exec(path.read_bytes(), "memhold", [str(path), "1", "500", "10"])
    logs.configure(level="INFO")
    try:
        with structlog.testing.capture_logs() as captured:
            record = migrate_local(a, pid, b)
    finally:
        logs.configure(level=os.environ.get("TENDER_LOG_LEVEL", "WARNING"))
        b.kill(pid)
    lines = [e for e in captured if e["event"] == "migration phase"]
    assert [e["phase"] for e in lines] == list(record.phases)
    for e in lines:
        assert e["pid"] == pid and e["source"] == "a" and e["destination"] == "b"
        assert e["transfer"] == "dsm" and e["seconds"] >= 0 and e["migration"]
    assert [e["event"] for e in captured][-1] == "migration ok"
    assert [r["pid"] for r in a.recent_migrations()] == [pid]


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

    from tender_ray.balancer import BalancerParams, Policy
    from tender_ray.cluster import Cluster
    from tender_ray.config import MachineConfig
    from tender_ray.errors import TenderError
    from tender_ray.migration import MigrationOptions, Transfer

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
