"""Prometheus families of the cluster manager's node drains (Ray's DRAINING nodes, preemption
notices) as one watcher followed them: the balancer in its rounds, or the drain watcher actor
when no balancer runs. Both follow them with `balancing.node_drain.NodeDrains`, so both are
read the same way: the finished drains of the machines on drained nodes (`DrainReport`, with
their node, deadline, outcome, what moved and what was checkpointed) and the drains under way
(`NodeDrainStatus`). The families carry the watcher as a label, so a cluster whose balancer
took over from its drain watcher shows both."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from tender_ray.balancing.node_drain import NO_DEADLINE, NodeDrainStatus
from tender_ray.balancing.state import BalancerState, DrainReport

BALANCER = "balancer"  # the watcher label of the balancer's node drains
DRAIN_WATCH = "drain_watch"  # ... and of the drain watcher actor's
FINISHED_OUTCOMES = ("evacuated", "checkpointed", "incomplete")  # DrainReport.outcome


@dataclass(frozen=True)
class NodeDrainView:
    """One watcher's node drains as the exporter last read them."""

    watcher: str  # BALANCER or DRAIN_WATCH
    reports: tuple[DrainReport, ...]  # finished drains (and cancels) of machines, oldest first
    draining: tuple[NodeDrainStatus, ...]  # the node drains under way now
    signal_errors: int = 0  # times the draining nodes could not be read

    @staticmethod
    def of_balancer(state: BalancerState) -> NodeDrainView:
        """The balancer's node drains: its drains that name a node. It says which nodes are
        draining now but not their deadlines; the last drain it finished on the node gives
        one (none yet while the first evacuation of a node runs: no deadline then)."""
        reports = tuple(d for d in state.drains if d.node)
        draining = []
        for node in state.draining:
            mine = [d for d in reports if d.node == node and d.outcome != "cancelled"]
            deadline = mine[-1].deadline_at if mine and mine[-1].deadline_at else NO_DEADLINE
            draining.append(NodeDrainStatus(node, deadline,
                                            tuple(sorted({d.machine for d in mine}))))
        return NodeDrainView(BALANCER, reports, tuple(draining), state.signal_errors)

    def started(self) -> int:
        """Node drains begun: each (node, deadline) once, whether it is under way, finished
        or was cancelled (a node drained again gets a new deadline from Ray)."""
        begun = {(d.node, _deadline(d.deadline_at)) for d in self.reports}
        return len(begun | {(s.node, _deadline(s.deadline_at)) for s in self.draining})


def _deadline(at: float | None) -> float:
    return NO_DEADLINE if at is None else at


def margin(report: DrainReport) -> float | None:
    """Seconds the drain finished before its node's deadline (negative: after it); None
    without a deadline."""
    if report.deadline_at is None or math.isinf(report.deadline_at) or not report.deadline:
        return None
    return report.deadline - report.seconds


def node_drain_families(views: Sequence[NodeDrainView], now: float,
                        machines: Sequence[str] = ()) -> Iterator[Metric]:
    """The families of every watcher's node drains at wall time `now`; `machines` get zeros
    (panels have data before the first drain)."""
    w, wm = ["watcher"], ["watcher", "machine"]
    started = CounterMetricFamily("tender_node_drains_started", "Drains of Ray nodes that "
                                  "a watcher began following (one per node and deadline)",
                                  labels=w)
    active = GaugeMetricFamily("tender_node_drains_active", "Ray nodes being drained now, "
                               "with machines of ours on them", labels=w)
    finished = CounterMetricFamily("tender_node_drains_finished", "Machines' node drains "
                                   "finished, by outcome (evacuated: emptied before the "
                                   "deadline; checkpointed: what could not move in time was; "
                                   "incomplete: processes were left)",
                                   labels=["watcher", "machine", "outcome"])
    cancelled = CounterMetricFamily("tender_node_drains_cancelled", "Machines uncordoned "
                                    "because their node's drain was called off", labels=wm)
    evacuated = CounterMetricFamily("tender_node_drain_evacuated_processes", "Processes "
                                    "moved off a machine by the drains of its node",
                                    labels=wm)
    checkpointed = CounterMetricFamily("tender_node_drain_checkpointed_processes", "Processes "
                                       "checkpointed on a draining machine because they could "
                                       "not move before the deadline", labels=wm)
    left = CounterMetricFamily("tender_node_drain_left_processes", "Processes still on a "
                               "machine, neither moved nor checkpointed, when its node's "
                               "drain ended", labels=wm)
    margin_s = GaugeMetricFamily("tender_node_drain_margin_seconds", "Seconds before its "
                                 "node's deadline the machine's last node drain finished "
                                 "(negative: after it)", labels=wm)
    deadline_s = GaugeMetricFamily("tender_node_drain_deadline_seconds", "Seconds left until "
                                   "the deadline of the node drain under way on the machine",
                                   labels=wm)
    errors = CounterMetricFamily("tender_node_drain_signal_errors", "Times the watcher could "
                                 "not read Ray's draining nodes", labels=w)
    for view in views:
        wl = view.watcher
        started.add_metric([wl], float(view.started()))
        active.add_metric([wl], float(len(view.draining)))
        errors.add_metric([wl], float(view.signal_errors))
        done: Counter[tuple[str, str]] = Counter()
        counts: dict[str, Counter[str]] = {}
        last_margin: dict[str, float] = {}
        for d in view.reports:
            c = counts.setdefault(d.machine, Counter())
            if d.outcome == "cancelled":
                c["cancelled"] += 1
                continue
            done[(d.machine, d.outcome or d.result)] += 1
            c["evacuated"] += len(d.moved)
            c["checkpointed"] += len(d.checkpointed)
            c["left"] += len(d.left)
            got = margin(d)
            if got is not None:
                last_margin[d.machine] = got
        for name in sorted({*machines, *counts}):
            c = counts.get(name, Counter())
            for outcome in [*FINISHED_OUTCOMES,
                            *sorted({o for m, o in done if m == name} - {*FINISHED_OUTCOMES})]:
                finished.add_metric([wl, name, outcome], float(done.get((name, outcome), 0)))
            cancelled.add_metric([wl, name], float(c["cancelled"]))
            evacuated.add_metric([wl, name], float(c["evacuated"]))
            checkpointed.add_metric([wl, name], float(c["checkpointed"]))
            left.add_metric([wl, name], float(c["left"]))
            if name in last_margin:
                margin_s.add_metric([wl, name], last_margin[name])
        for status in view.draining:
            if math.isinf(status.deadline_at):
                continue
            for name in status.machines:
                deadline_s.add_metric([wl, name], status.deadline_at - now)
    yield from (started, active, finished, cancelled, evacuated, checkpointed, left, margin_s,
                deadline_s, errors)
