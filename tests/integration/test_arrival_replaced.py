"""Scenarios on a real (embedded, local) Ray whose arrivals are named for a machine that crashed
or was stopped before they arrived: each starts on a live machine instead (said in the event
lines) and runs as natively; with no machine alive it waits for one an event adds, and with
none ahead it is reported lost, by name."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from support.clusters import run_scenario_to_end

from tender_ray.cli.scenario.model import read_scenario
from tender_ray.cli.scenario.report import ProcessReport, Report
from tender_ray.cluster import NAMESPACE
from tender_ray.cluster.embedded import stop_embedded_ray

RUN_TIMEOUT = 120.0


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One Ray for the module's scenarios (each run's actors get a prefix of their own)."""
    if ray.is_initialized():  # another module's Ray: this one must be its own
        ray.shutdown()
    ray.init(address="local", namespace=NAMESPACE, num_cpus=os.cpu_count() or 2,
             object_store_memory=256 << 20, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        yield
    finally:
        stop_embedded_ray()


def _run(tmp_path: Path, data: dict[str, Any]) -> tuple[Report, list[str]]:
    data.setdefault("timeout", RUN_TIMEOUT)
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return run_scenario_to_end(read_scenario(path), RUN_TIMEOUT)


def _native(p: ProcessReport) -> bool:
    return p.exit_status == 0 and p.output_matches_native is True


@pytest.mark.parametrize("action", ["crash_machine", "stop_machine"])
def test_an_arrival_for_a_machine_gone_starts_on_a_live_one(tmp_path: Path,
                                                             action: str) -> None:
    data = {
        "name": f"replaced-{action}",
        "machines": [{"name": "m", "count": 2, "computations": 1, "memory_mib": 64}],
        "workloads": [{"program": "compute_sleep", "args": ["30"], "machine": "m1"},
                      {"program": "hello", "at": 1.0, "machine": "m0"}],
        "balancer": {"policy": "none", "interval": 0.2},
        "events": [{"at": 0.3, "action": action, "machine": "m0"}],
    }
    report, events = _run(tmp_path, data)
    by_name = {p.name: p for p in report.processes}
    assert set(by_name) == {"compute_sleep#0", "hello#1"}, events
    hello = by_name["hello#1"]
    assert hello.machines[0] == "m1" and _native(hello), hello
    gone = "crashed" if action == "crash_machine" else "was stopped"
    assert any(e.startswith(f"hello#1 started on m1: its machine m0 {gone} at t=")
               for e in events), events
    assert report.not_started == () and report.lost == ()
    assert report.ok


def test_with_no_machine_alive_it_waits_for_one_added_or_is_lost_by_name(tmp_path: Path
                                                                         ) -> None:
    data = {
        "name": "nowhere",
        "machines": [{"name": "m0", "computations": 1, "memory_mib": 64}],
        "workloads": [{"program": "hello", "at": 0.8, "machine": "m0"},
                      {"program": "hello", "at": 2.5, "machine": "m0"}],
        "balancer": {"policy": "none", "interval": 0.2},
        "events": [{"at": 0.3, "action": "crash_machine", "machine": "m0"},
                   {"at": 1.5, "action": "add_machine", "machine": "n0", "memory_mib": 64},
                   {"at": 2.0, "action": "crash_machine", "machine": "n0"}],
    }
    report, events = _run(tmp_path, data)
    # The first waits for n0, which an event adds, and runs there ...
    by_name = {p.name: p for p in report.processes}
    first = by_name["hello#0"]
    assert first.machines[0] == "n0" and _native(first), (first, events)
    assert any(e.startswith("hello#0 queued: its machine m0 crashed") and "t=1.5s" in e
               for e in events), events
    # ... the second comes once n0 is gone too, with nothing ahead to add one: lost.
    assert "hello#1" not in by_name
    assert [n.name for n in report.not_started] == ["hello#1"]
    reason = report.not_started[0].reason
    assert reason.startswith("lost: its machine m0 crashed at t=") and (
        "and no machine is alive" in reason), reason
    assert any(e.startswith("hello#1 lost: its machine m0 crashed") for e in events), events
    assert not report.ok
