"""Drains of Ray nodes in Prometheus and in the scenario report, without Ray: the collector fed
the drain watcher's node drains (`NodeDrainView`) and the balancer's, as fake snapshots; the
families count drains started, under way, finished by outcome and cancelled, the processes
evacuated, checkpointed and left, and the seconds before the deadline; the report lists each
machine's node drain, JSON-safe when the node had no deadline."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import pytest
from support.snapshots import balancer_state, record, stats
from test_metrics import scrape, value

from tender_ray.balancing.node_drain import NodeDrainStatus
from tender_ray.balancing.policies import Policy
from tender_ray.balancing.state import DrainReport
from tender_ray.cli.scenario.report import (
    DrainSummary,
    MigrationSummary,
    Parallelism,
    Report,
    node_drain_summaries,
)
from tender_ray.metrics.collector import TenderCollector
from tender_ray.metrics.node_drains import BALANCER, DRAIN_WATCH, NodeDrainView

NOW = time.time()


def node_drain(machine: str, node: str, deadline_at: float, outcome: str, *,
               moved: int = 0, checkpointed: tuple[int, ...] = (), left: tuple[int, ...] = (),
               seconds: float = 2.0, deadline: float = 8.0) -> DrainReport:
    return DrainReport(machine, seconds, deadline,
                       tuple(record(100 + i, machine, "c1", NOW) for i in range(moved)),
                       left, not left, "", node=node, deadline_at=deadline_at,
                       checkpointed=checkpointed, outcome=outcome)


# Node n1 (machines a1, a2) drained with a deadline and done; node n2 (b1) drained, then the
# drain called off; node n3 (c1) draining now, 30 s to go.
WATCHED = NodeDrainView(
    DRAIN_WATCH,
    reports=(node_drain("a1", "n1", NOW + 6, "evacuated", moved=2),
             node_drain("a2", "n1", NOW + 6, "checkpointed", moved=1, checkpointed=(7, 8),
                        seconds=7.5),
             node_drain("b1", "n2", math.inf, "evacuated", deadline=0.0),
             DrainReport("b1", 0.0, 0.0, (), (), True, "the drain was cancelled", node="n2",
                         deadline_at=math.inf, outcome="cancelled")),
    draining=(NodeDrainStatus("n3", NOW + 30, ("c1",)),),
    signal_errors=2)


def scraped(**update: object) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    c = TenderCollector()
    c.update({name: stats(name) for name in ("a1", "a2", "b1", "c1")}, **update)  # type: ignore[arg-type]
    return scrape(c)


def test_the_drain_watchers_node_drains_are_counted() -> None:
    got = scraped(node_drains=WATCHED)
    w = {"watcher": DRAIN_WATCH}
    assert value(got["tender_node_drains_started_total"], **w) == 3  # n1, n2, n3
    assert value(got["tender_node_drains_active"], **w) == 1
    finished = got["tender_node_drains_finished_total"]
    assert value(finished, machine="a1", outcome="evacuated", **w) == 1
    assert value(finished, machine="a2", outcome="checkpointed", **w) == 1
    assert value(finished, machine="a2", outcome="evacuated", **w) == 0
    assert value(finished, machine="b1", outcome="evacuated", **w) == 1
    assert value(finished, machine="c1", outcome="incomplete", **w) == 0  # zeros for all
    assert value(got["tender_node_drains_cancelled_total"], machine="b1", **w) == 1
    assert value(got["tender_node_drains_cancelled_total"], machine="a1", **w) == 0
    assert value(got["tender_node_drain_evacuated_processes_total"], machine="a1", **w) == 2
    assert value(got["tender_node_drain_checkpointed_processes_total"], machine="a2",
                 **w) == 2
    assert value(got["tender_node_drain_left_processes_total"], machine="a2", **w) == 0
    margins = got["tender_node_drain_margin_seconds"]
    assert value(margins, machine="a1", **w) == pytest.approx(6.0)
    assert value(margins, machine="a2", **w) == pytest.approx(0.5)
    assert not [s for s in margins if s[1]["machine"] == "b1"]  # no deadline: no margin
    left = got["tender_node_drain_deadline_seconds"]
    assert len(left) == 1 and left[0][1] == {"watcher": DRAIN_WATCH, "machine": "c1"}
    assert left[0][2] == pytest.approx(NOW + 30 - time.time(), abs=1.0)
    assert value(got["tender_node_drain_signal_errors_total"], **w) == 2


def test_without_a_watcher_there_are_no_node_drain_samples() -> None:
    got = scraped()
    assert got.get("tender_node_drains_started_total", []) == []
    # A later poll without the watcher's answer keeps what it last said.
    c = TenderCollector()
    c.update({"a1": stats("a1")}, node_drains=WATCHED)
    c.update({"a1": stats("a1")})
    assert value(scrape(c)["tender_node_drains_started_total"], watcher=DRAIN_WATCH) == 3


def test_the_balancers_node_drains_too() -> None:
    drains = (*balancer_state().drains,  # a drain of machine b alone: not a node's
              node_drain("a1", "n1", NOW + 6, "evacuated", moved=3))
    state = replace(balancer_state(), drains=drains, draining=("n1", "n4"), signal_errors=1)
    view = NodeDrainView.of_balancer(state)
    assert [d.machine for d in view.reports] == ["a1"]
    # n1's deadline from its finished drain; n4's first evacuation is still running.
    assert view.draining == (NodeDrainStatus("n1", NOW + 6, ("a1",)),
                             NodeDrainStatus("n4", math.inf, ()))
    assert view.started() == 2
    got = scraped(balancer=state, node_drains=WATCHED)
    b = {"watcher": BALANCER}
    assert value(got["tender_node_drains_started_total"], **b) == 2
    assert value(got["tender_node_drains_started_total"], watcher=DRAIN_WATCH) == 3
    assert value(got["tender_node_drain_evacuated_processes_total"], machine="a1", **b) == 3
    assert value(got["tender_node_drain_signal_errors_total"], **b) == 1


def _report(**changes: object) -> Report:
    blank = Report(scenario="s", policy=Policy.THRESHOLD, started_unix=NOW,
                   makespan_seconds=1.0, ideal_makespan_seconds=1.0, makespan_over_ideal=1.0,
                   parallelism=Parallelism(2, 2, 2), mean_slowdown=None,
                   migrations=MigrationSummary(0, 0, (), ()),
                   drains=(), lost=(), events_failed=(), problems=(), events_not_fired=(),
                   queued=(), not_started=(), processes=())
    return replace(blank, **changes)  # type: ignore[arg-type]


def test_the_report_lists_each_machines_node_drain() -> None:
    summaries = node_drain_summaries((*WATCHED.reports, *balancer_state().drains))
    assert [(d.machine, d.node, d.outcome) for d in summaries] == [
        ("a1", "n1", "evacuated"), ("a2", "n1", "checkpointed"), ("b1", "n2", "evacuated"),
        ("b1", "n2", "cancelled")]
    a2 = summaries[1].as_dict()
    assert a2["checkpointed"] == [7, 8] and a2["seconds_before_deadline"] == pytest.approx(0.5)
    assert a2["deadline_at"] == pytest.approx(NOW + 6) and len(a2["moved"]) == 1
    b1 = summaries[2].as_dict()
    assert b1["deadline_at"] is None and b1["seconds_before_deadline"] is None
    assert summaries[3].seconds_before_deadline is None
    # A drain of the machine alone keeps its old shape.
    assert "node" not in DrainSummary.of(balancer_state().drains[0]).as_dict()
    data = json.loads(json.dumps(_report(node_drains=summaries).as_dict()["node_drains"],
                                 allow_nan=False))
    assert [d["machine"] for d in data] == ["a1", "a2", "b1", "b1"]
