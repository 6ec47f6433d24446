"""The balancing loop without Ray: fake machines that move processes between them in memory, a
fake clock that records every wait, and the loop's rounds, back-off, kicks, drains, failures
and machines on nodes being drained checked against them."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

import pytest
from support.balancing import FRAMES, FakeClock, FakeMachine

from tender_ray.balancing.loop import IDLE_BACKOFF, KICK_SETTLE, NODE_CHECK_INTERVAL, BalancingLoop
from tender_ray.balancing.policies import Balancer, BalancerParams, Policy, snapshot
from tender_ray.migration.options import MigrationOptions


class FakeNodes:
    def __init__(self, draining: Collection[str] = ()) -> None:
        self.nodes = set(draining)
        self.asked = 0

    def draining(self) -> Collection[str]:
        self.asked += 1
        return self.nodes


def setup(*names: str, policy: Policy = Policy.NONE, interval: float = 1.0,
          nodes: FakeNodes | None = None, **params: float
          ) -> tuple[BalancingLoop, FakeClock, dict[str, FakeMachine]]:
    clock = FakeClock()
    world: dict[str, FakeMachine] = {}
    loop = BalancingLoop(BalancerParams(policy=policy, **params),  # type: ignore[arg-type]
                         MigrationOptions(), interval, nodes=nodes, clock=clock)
    for i, name in enumerate(names):
        loop.add_machine(FakeMachine(world, clock, name), node=f"node-{i}")
    return loop, clock, world


# --- rounds -------------------------------------------------------------------------------

def test_a_round_moves_what_the_policy_plans() -> None:
    loop, clock, world = setup("a", "b", "c", policy=Policy.THRESHOLD, margin=0.5, max_moves=2)
    for pid in (11, 12, 13, 14):
        world["a"].add(pid)
    world["b"].add(21)
    # The plan of a fresh Balancer over the same snapshots: what the loop must carry out.
    now = clock.time()
    expected = Balancer(BalancerParams(policy=Policy.THRESHOLD, margin=0.5, max_moves=2)).plan(
        [snapshot(m._stats(), [m._info(p) for p in m.processes], now) for m in world.values()],
        clock.monotonic())
    assert len(expected) == 2
    assert loop.round() is True
    state = loop.state()
    assert sorted((r.pid, r.source, r.destination, r.reason) for r in state.migrations) == \
        sorted((m.pid, m.source, m.destination, m.reason) for m in expected)
    for move in expected:
        assert move.pid in world[move.destination].processes
        assert move.pid not in world["a"].processes
    assert (state.rounds, state.decisions, state.failures, state.policy) == (
        1, 2, (), "threshold")


def test_a_machine_that_does_not_answer_is_no_destination() -> None:
    loop, _, world = setup("a", "b", "c", policy=Policy.THRESHOLD, margin=0.0, max_moves=4)
    for pid in (11, 12, 13):
        world["a"].add(pid)
    world["b"].down = True
    loop.round()
    moved = loop.state().migrations
    assert moved and {r.destination for r in moved} == {"c"}


def test_idle_rounds_back_off_and_a_change_resets_the_interval() -> None:
    loop, clock, world = setup("a", "b", interval=1.0)
    world["a"].add(1, "sleeping")
    world["a"].add(2, "running")
    waits = []
    wait: float | None = 1.0
    for _ in range(6):
        assert wait is not None
        waits.append(wait)
        wait = loop.step(wait)
    # The first round sees something new; then nothing changes: 1, 2, 4, 8 intervals, capped.
    assert waits == [1.0, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert wait == IDLE_BACKOFF * 1.0
    # Running and runnable alternate every quantum: not a change.
    world["a"].processes[2] = ("runnable", 16)
    assert loop.step(8.0) == 8.0
    # A new process is one.
    world["b"].add(3, "sleeping")
    assert loop.step(8.0) == 1.0
    assert loop.step(1.0) == 2.0
    # Every step waited as long as it was told to (the kick of add_machine ended the first).
    assert clock.waits[1:] == [KICK_SETTLE, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 1.0]


def test_a_round_with_moves_does_not_back_off() -> None:
    loop, _, world = setup("a", "b", interval=1.0)
    world["a"].add(1, "runnable")
    world["a"].cordoned = True  # every round plans the same drain move
    world["b"].refuse = "b refuses"  # and it fails every time: nothing changes
    assert [loop.step(w) for w in (1.0, 1.0, 1.0)] == [1.0, 1.0, 1.0]
    assert len(loop.state().failures) == 3


def test_a_kick_ends_the_wait_early() -> None:
    loop, clock, _ = setup("a", interval=5.0)
    loop.step(5.0)  # the kick of add_machine: one short wait, then the settle
    assert clock.waits == [5.0, KICK_SETTLE]
    clock.waits.clear()
    loop.step(5.0)
    assert clock.waits == [5.0]  # no kick: the whole wait
    clock.waits.clear()
    loop.kick()
    before = clock.now
    loop.step(5.0)
    assert clock.waits == [5.0, KICK_SETTLE] and clock.now - before == pytest.approx(KICK_SETTLE)


def test_a_kick_wakes_a_running_loop_long_before_its_interval() -> None:
    world: dict[str, FakeMachine] = {}
    loop = BalancingLoop(BalancerParams(policy=Policy.NONE), MigrationOptions(), 600.0)
    loop.add_machine(FakeMachine(world, FakeClock(), "a"))
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while loop.state().rounds < 1:
            assert time.monotonic() < deadline, "the first round never came"
            time.sleep(0.01)
        time.sleep(0.2)
        assert loop.state().rounds == 1  # it waits its (long) interval now
        loop.kick()
        while loop.state().rounds < 2:
            assert time.monotonic() < deadline, "the kick did not wake the loop"
            time.sleep(0.01)
    finally:
        started = time.monotonic()
        loop.stop()
        assert time.monotonic() - started < 5, "stop waited for the interval"


# --- failures -----------------------------------------------------------------------------

def test_a_failed_migration_is_recorded_and_the_process_stays() -> None:
    loop, _, world = setup("a", "b", policy=Policy.THRESHOLD, margin=0.0, max_moves=1)
    world["a"].add(1)
    world["a"].add(2)
    world["b"].refuse = "machine b is gone"
    assert loop.round() is True
    state = loop.state()
    assert state.migrations == ()
    assert len(state.failures) == 1
    assert "machine b is gone" in state.failures[0] and "source='a'" in state.failures[0]
    assert set(world["a"].processes) == {1, 2}
    # Nothing is counted as under way any more: a drain of a ends at once when a is empty.
    world["a"].processes.clear()
    assert loop.drain("a", 5.0).ok


def test_the_loop_survives_a_round_that_raises() -> None:
    loop, _, world = setup("a", "b", interval=1.0)
    world["a"].load_raises = RuntimeError("broken snapshot")
    assert loop.step(4.0) == 1.0  # a failed round counts as busy: back to the interval
    assert loop.state().failures == ("round failed: RuntimeError('broken snapshot')",)
    world["a"].load_raises = None
    world["a"].add(1, "sleeping")
    assert loop.step(1.0) == 1.0  # and the next round runs as usual
    assert loop.state().rounds == 1  # the failed one never got to plan


# --- drains -------------------------------------------------------------------------------

def test_a_drain_cordons_and_waits_for_the_moves_in_flight() -> None:
    loop, clock, world = setup("a", "b", interval=1.0)
    a = world["a"]
    a.add(1)
    a.add(2)
    a.gate[2] = threading.Event()  # the reply for pid 2 comes back late
    rounds: list[threading.Thread] = []
    looks_after_empty = []

    def between_looks() -> None:
        if not rounds:  # the first look: the balancer's round runs now, in its own thread
            assert a.cordoned and a.cordons == 1
            rounds.append(threading.Thread(target=loop.round))
            rounds[0].start()
            deadline = time.monotonic() + 10
            while a.processes:  # both have left a (the second move is still under way)
                assert time.monotonic() < deadline
                time.sleep(0.001)
            return
        if not a.processes:
            looks_after_empty.append(clock.now)
        if len(looks_after_empty) == 5:  # a is empty but one move is still under way
            a.gate[2].set()
            rounds[0].join(10)

    clock.on_sleep = between_looks
    report = loop.drain("a", 20.0)
    assert len(looks_after_empty) >= 5, "the drain ended before its last move was recorded"
    assert report.ok and report.left == () and report.machine == "a"
    assert sorted(r.pid for r in report.moved) == [1, 2]
    assert {r.reason for r in report.moved} == {"drain"}
    assert report.seconds < 20.0
    assert loop.state().drains == (report,)


def test_a_drain_reports_what_moved_and_what_was_left_at_the_deadline() -> None:
    loop, clock, world = setup("a", "b", interval=1.0)
    world["a"].add(1, pages=16)
    world["a"].add(2, pages=FRAMES)  # more than b has: it cannot leave

    def between_looks() -> None:
        if clock.sleeps == 1:
            loop.round()

    clock.on_sleep = between_looks
    report = loop.drain("a", 1.0)
    assert not report.ok
    assert [r.pid for r in report.moved] == [1]
    assert report.left == (2,)
    assert report.deadline == 1.0 and report.seconds == pytest.approx(1.0, abs=0.06)
    assert loop.state().drains == (report,)


def test_draining_an_unknown_machine_is_a_clear_error() -> None:
    loop, _, _ = setup("a")
    with pytest.raises(Exception, match="nowhere"):
        loop.drain("nowhere", 1.0)


# --- nodes being drained ------------------------------------------------------------------

def test_machines_on_draining_nodes_are_cordoned_and_emptied() -> None:
    nodes = FakeNodes({"node-0"})
    loop, clock, world = setup("a", "b", nodes=nodes)
    world["a"].add(1)
    loop.round()
    assert world["a"].cordoned and not world["b"].cordoned
    assert [(r.pid, r.source, r.destination, r.reason) for r in loop.state().migrations] == [
        (1, "a", "b", "drain")]
    # The question is asked at most once per NODE_CHECK_INTERVAL.
    loop.round()
    assert nodes.asked == 1 and world["a"].cordons == 1
    clock.now += NODE_CHECK_INTERVAL
    loop.round()
    assert nodes.asked == 2 and world["a"].cordons == 2
