"""Following a cluster manager's node drain without Ray: fake machines on fake nodes, a fake
clock in which each migration takes time in proportion to its size, and the watcher's
evacuation before the deadline (largest first, what the measured speed allows), checkpoints
of what cannot move in time, cancelled drains, unreadable signals, and the balancing loop
looking at the nodes while it backs off."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import pytest
from support.balancing import FakeClock, FakeMachine

from tender_ray.balancing.loop import NODE_CHECK_INTERVAL, BalancingLoop
from tender_ray.balancing.node_drain import NodeDrains
from tender_ray.balancing.policies import Balancer, BalancerParams, Policy
from tender_ray.balancing.state import DrainReport
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord

MIB_PAGES = 256  # pages in one MiB
SECONDS_PER_MIB = 1.0  # the fake migrations' speed


class FakeNodes:
    """The draining nodes: node -> deadline (wall seconds); `error` makes a look fail."""

    def __init__(self) -> None:
        self.deadlines: dict[str, float] = {}
        self.error: Exception | None = None

    def draining(self) -> Mapping[str, float]:
        if self.error is not None:
            raise self.error
        return dict(self.deadlines)


class TimedMachine(FakeMachine):
    """A fake machine whose migrations take SECONDS_PER_MIB per MiB on the fake clock, and
    which can checkpoint a process (when `checkpoints` is not None)."""

    checkpoints: list[int] | None = None

    def migrate(self, pid: int, destination: str, options: MigrationOptions | None = None,
                timeout: float | None = None) -> MigrationRecord:
        record = super().migrate(pid, destination, options, timeout)
        seconds = record.bytes / (1 << 20) * SECONDS_PER_MIB
        self.clock.now += seconds
        return dataclasses.replace(record, seconds=seconds)


class CheckpointingMachine(TimedMachine):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.checkpoints = []

    def checkpoint(self, pid: int, timeout: float | None = None) -> None:
        assert pid in self.processes
        assert self.checkpoints is not None
        self.checkpoints.append(pid)


def measured() -> Balancer:
    """A balancer that has measured migrations at SECONDS_PER_MIB."""
    b = Balancer(BalancerParams())
    for mib in (1, 2, 4):
        b.observe(mib << 20, mib * SECONDS_PER_MIB)
    return b


def of(reports: list[DrainReport], machine: str) -> DrainReport:
    (report,) = [r for r in reports if r.machine == machine]
    return report


def world_of(machine: type[TimedMachine] = TimedMachine
             ) -> tuple[NodeDrains, FakeNodes, FakeClock, dict[str, FakeMachine]]:
    clock, nodes = FakeClock(), FakeNodes()
    world: dict[str, FakeMachine] = {}
    drains = NodeDrains(nodes, clock=clock, balancer=measured())
    for name, node in (("a", "n0"), ("c", "n0"), ("b", "n1"), ("d", "n1")):
        drains.add_machine(machine(world, clock, name), node)
    return drains, nodes, clock, world


def test_a_draining_nodes_machines_are_emptied_onto_other_nodes_largest_first() -> None:
    drains, nodes, clock, world = world_of()
    world["a"].add(1, pages=MIB_PAGES // 4)
    world["a"].add(2, pages=MIB_PAGES * 2)
    world["c"].add(3, pages=MIB_PAGES)
    world["b"].add(9)
    deadline = clock.time() + 30
    nodes.deadlines = {"n0": deadline}
    reports = drains.check()
    assert {r.machine for r in reports} == {"a", "c"}
    assert world["a"].cordoned and world["c"].cordoned
    assert not world["b"].cordoned and not world["d"].cordoned
    assert world["a"].processes == {} and world["c"].processes == {}
    # Everything went to the other node, never to c (which is on the draining node too).
    assert set(world["b"].processes) | set(world["d"].processes) == {1, 2, 3, 9}
    moves = sorted((r for rep in reports for r in rep.moved), key=lambda r: r.started_at)
    assert [r.pid for r in moves] == [2, 3, 1]  # largest first, across the node's machines
    for r in reports:
        assert (r.ok, r.outcome, r.node, r.deadline_at, r.left) == (
            True, "evacuated", "n0", deadline, ())
        assert all(m.reason == "drain" for m in r.moved)
        assert r.result == "ok"
    assert clock.time() < deadline
    # A second look at the same drain moves nothing again, but keeps the machines cordoned.
    world["a"].cordoned = False
    assert drains.check() == [] and world["a"].cordoned
    assert [d.node for d in drains.draining] == ["n0"]


def test_what_cannot_arrive_before_the_deadline_is_named_and_the_rest_moves() -> None:
    drains, nodes, clock, world = world_of()
    world["a"].add(1, pages=MIB_PAGES * 4)  # 4 s at the measured speed
    world["a"].add(2, pages=MIB_PAGES)  # 1 s
    world["a"].add(3, pages=MIB_PAGES // 2)  # 0.5 s
    deadline = clock.time() + 3.0
    nodes.deadlines = {"n0": deadline}
    report = of(drains.check(), "a")
    assert sorted(r.pid for r in report.moved) == [2, 3]
    assert report.left == (1,) and not report.ok and report.outcome == "incomplete"
    assert report.why.startswith("could not evacuate before the deadline: processes 1")
    assert clock.time() <= deadline
    assert report.deadline == pytest.approx(3.0)


def test_what_cannot_move_in_time_is_checkpointed_where_the_machine_can() -> None:
    drains, nodes, clock, world = world_of(CheckpointingMachine)
    world["a"].add(1, pages=MIB_PAGES * 4)
    world["a"].add(2, pages=MIB_PAGES)
    nodes.deadlines = {"n0": clock.time() + 2.0}
    report = of(drains.check(), "a")
    assert [r.pid for r in report.moved] == [2]
    assert report.checkpointed == (1,) and report.left == ()
    assert (report.ok, report.outcome, report.result) == (True, "checkpointed", "checkpointed")
    assert world["a"].checkpoints == [1]  # type: ignore[attr-defined]


def test_a_drain_without_a_deadline_moves_everything() -> None:
    drains, nodes, _, world = world_of()
    world["a"].add(1, pages=MIB_PAGES * 8)
    nodes.deadlines = {"n0": math.inf}
    report = of(drains.check(), "a")
    assert [r.pid for r in report.moved] == [1] and report.ok
    assert report.deadline_at == math.inf and report.deadline == 0.0


def test_a_cancelled_drain_uncordons_and_a_lost_node_does_not() -> None:
    drains, nodes, clock, world = world_of()
    nodes.deadlines = {"n0": clock.time() + 10, "n1": clock.time() + 10}
    drains.check()
    assert all(m.cordoned for m in world.values())
    world["b"].down = world["d"].down = True  # n1 was taken away: its machines are gone
    nodes.deadlines = {}
    reports = drains.check()
    assert sorted((r.machine, r.outcome, r.node) for r in reports) == [
        ("a", "cancelled", "n0"), ("c", "cancelled", "n0")]
    assert not world["a"].cordoned and not world["c"].cordoned
    assert drains.draining == ()


def test_an_unreadable_signal_is_counted_and_the_drains_go_on() -> None:
    drains, nodes, clock, world = world_of()
    world["a"].add(1)
    nodes.error = RuntimeError("GCS unavailable")
    assert drains.check() == [] and drains.check() == []
    assert drains.signal_errors == 2
    nodes.error = None
    nodes.deadlines = {"n0": clock.time() + 10}
    report = of(drains.check(), "a")
    assert report.ok and 1 not in world["a"].processes


def test_a_move_that_fails_is_said_by_name() -> None:
    drains, nodes, clock, world = world_of()
    world["a"].add(1)
    world["b"].refuse = world["d"].refuse = "destination broke"
    nodes.deadlines = {"n0": clock.time() + 10}
    report = next(r for r in drains.check() if r.machine == "a")
    assert report.left == (1,) and "destination broke" in report.why


def test_the_loop_looks_at_the_nodes_while_it_backs_off_and_records_the_drain() -> None:
    clock, nodes = FakeClock(), FakeNodes()
    world: dict[str, FakeMachine] = {}
    loop = BalancingLoop(BalancerParams(policy=Policy.NONE), MigrationOptions(), 1.0,
                         nodes=nodes, clock=clock)
    loop.add_machine(TimedMachine(world, clock, "a"), "n0")
    loop.add_machine(TimedMachine(world, clock, "b"), "n1")
    world["a"].add(1, pages=MIB_PAGES)
    wait = loop.step(8.0)  # idle: it would wait 8 s before its next round
    assert wait is not None
    nodes.deadlines = {"n0": clock.time() + 5.0}
    start = clock.now
    loop.step(8.0)  # ... but it saw the drain within NODE_CHECK_INTERVAL
    state = loop.state()
    (drain,) = state.drains
    assert drain.ok and drain.node == "n0" and 1 in world["b"].processes
    assert [(m.pid, m.reason) for m in state.migrations] == [(1, "drain")]
    assert state.draining == ("n0",)
    assert clock.now - start <= NODE_CHECK_INTERVAL + SECONDS_PER_MIB + 0.5


def test_the_metrics_count_node_drains_by_outcome_and_unreadable_signals() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry
    from support.snapshots import stats

    from tender_ray.balancing.state import BalancerState
    from tender_ray.metrics.collector import TenderCollector

    drains, nodes, clock, world = world_of(CheckpointingMachine)
    world["a"].add(1, pages=MIB_PAGES * 4)  # cannot move in 2 s: checkpointed
    nodes.deadlines = {"n0": clock.time() + 2.0}
    drains.check()
    nodes.deadlines = {}  # n0's machines still answer: a cancel (after the drain ended)
    drains.check()
    nodes.error = RuntimeError("GCS unavailable")
    drains.check()
    state = BalancerState(0, 0, (), (), drains.reports, (), "none", drains.signal_errors)
    c = TenderCollector()
    c.update({name: stats(name) for name in world}, processes={name: [] for name in world},
             migrations={}, balancer=state)
    registry = CollectorRegistry()
    registry.register(c)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode())
               for s in f.samples}

    def drains_of(machine: str, result: str) -> float:
        return samples[("tender_balancer_drains_total",
                        (("machine", machine), ("result", result)))]

    assert drains_of("a", "checkpointed") == 1 and drains_of("a", "cancelled") == 1
    assert drains_of("c", "ok") == 1 and drains_of("c", "cancelled") == 1
    assert drains_of("b", "ok") == 0
    assert samples[("tender_balancer_drain_signal_errors_total",
                    (("policy", "none"),))] == 1
