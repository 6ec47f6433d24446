"""Metrics: the collector over hand-made snapshots, the HTTP endpoint and the migration logs."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from support.programs import workload
from support.snapshots import balancer_state, proc, record, stats

from tender_ray.kernel.machine import Machine
from tender_ray.metrics.collector import (
    DEFAULT_PORT,
    PHASE_BUCKETS,
    MetricsServer,
    TenderCollector,
    frames_by_state,
)
from tender_ray.migration.record import MigrationRecord

FORBIDDEN_LABELS = {"pid", "page", "frame", "address"}


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
             balancer=balancer_state())
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


def test_migrations_by_mode_freeze_rounds_and_bytes() -> None:
    """Per mode: moves by result, live rounds, bytes sent live and frozen, and the freeze and
    whole-move histograms, so a panel sets the freeze against the total; failed moves are
    counted only."""
    now = time.time()
    stop = dataclasses.replace(record(1, "a", "b", now - 3, seconds=0.5), freeze_seconds=0.4,
                               bytes=4 * 4096, freeze_bytes=4 * 4096)
    pre = dataclasses.replace(record(2, "a", "b", now - 2, seconds=0.8), mode="precopy",
                              rounds=3, round_bytes=(40960, 8192, 4096), freeze_bytes=4096,
                              bytes=57344, freeze_seconds=0.003)
    lost = dataclasses.replace(record(3, "a", "b", now - 1, result="failed"), mode="precopy",
                               rounds=1, round_bytes=(4096,), bytes=4096, freeze_seconds=0.2)
    c = TenderCollector()
    c.update({"a": stats("a")}, migrations={"a": [stop, pre, lost]})
    got = scrape(c)
    count = got["tender_migrations_by_mode_total"]
    assert value(count, mode="stop", result="ok") == 1
    assert value(count, mode="precopy", result="ok") == 1
    assert value(count, mode="precopy", result="failed") == 1
    assert value(got["tender_migration_rounds_total"], mode="precopy") == 3
    assert value(got["tender_migration_rounds_total"], mode="stop") == 0
    sent = got["tender_migration_mode_bytes_total"]
    assert value(sent, mode="precopy", sent="live") == 53248
    assert value(sent, mode="precopy", sent="frozen") == 4096
    assert value(sent, mode="stop", sent="live") == 0
    assert value(sent, mode="stop", sent="frozen") == 4 * 4096
    freeze = got["tender_migration_freeze_seconds"]
    assert value(freeze, "tender_migration_freeze_seconds_count", mode="precopy") == 1
    assert value(freeze, "tender_migration_freeze_seconds_sum",
                 mode="precopy") == pytest.approx(0.003)
    assert value(freeze, "tender_migration_freeze_seconds_sum",
                 mode="stop") == pytest.approx(0.4)
    whole = got["tender_migration_mode_duration_seconds"]
    assert value(whole, "tender_migration_mode_duration_seconds_sum",
                 mode="precopy") == pytest.approx(0.8)
    # The same window again adds nothing: each record once.
    c.update({"a": stats("a")}, migrations={"a": [stop, pre, lost]})
    assert value(scrape(c)["tender_migration_rounds_total"], mode="precopy") == 3


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
    assert MigrationRecord(1, "a", "b", transfer="plate", reuse=False,
                           resources="all").strategy == "plate+noreuse+all"
    assert MigrationRecord(1, "a", "b", transfer="dsm", reuse=True,
                           resources="needed").strategy == "dsm"


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
    from tender_ray.migration.protocol import migrate_local

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
    assert [r.pid for r in a.recent_migrations()] == [pid]
