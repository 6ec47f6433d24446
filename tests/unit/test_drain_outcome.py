"""A drain's outcome without Ray: the balancing loop over small fake machines, and what it
says when processes cannot leave (no other machine, every other cordoned, no room, no answer),
when they end where they are, and how `top` and the metrics count a drain that failed."""

from __future__ import annotations

from support.balancing import FRAMES, FakeClock, FakeMachine

from tender_ray.balancing.loop import BalancingLoop
from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.migration.options import MigrationOptions


def setup(*machines: tuple[str, int]
          ) -> tuple[BalancingLoop, FakeClock, dict[str, FakeMachine]]:
    clock = FakeClock()
    world: dict[str, FakeMachine] = {}
    loop = BalancingLoop(BalancerParams(policy=Policy.NONE), MigrationOptions(), 1.0,
                         clock=clock)
    for name, free in machines:
        loop.add_machine(FakeMachine(world, clock, name, free))
    return loop, clock, world


def drain_with_rounds(loop: BalancingLoop, clock: FakeClock, deadline: float) -> DrainReport:
    """Drain a, with a balancer round at each look (as the balancer's thread would)."""
    clock.on_sleep = loop.round
    return loop.drain("a", deadline)


def test_alone_a_drain_that_cannot_finish_says_there_is_no_other_machine() -> None:
    loop, clock, world = setup(("a", FRAMES))
    world["a"].add(1, pages=16)
    report = drain_with_rounds(loop, clock, 0.5)
    assert not report.ok and report.left == (1,) and report.moved == ()
    assert report.why == "no other machine"
    assert loop.state().drains == (report,)


def test_every_other_machine_cordoned() -> None:
    loop, clock, world = setup(("a", FRAMES), ("b", FRAMES), ("c", FRAMES))
    world["a"].add(1, pages=16)
    world["b"].cordoned = world["c"].cordoned = True
    report = drain_with_rounds(loop, clock, 0.5)
    assert (report.ok, report.left, report.why) == (False, (1,), "every other machine is "
                                                                   "cordoned")
    assert 1 in world["a"].processes


def test_no_other_machine_has_room_names_the_process_and_the_room() -> None:
    loop, clock, world = setup(("a", FRAMES), ("b", FRAMES // 2))
    world["a"].add(1, pages=16)  # fits on b
    world["a"].add(2, pages=FRAMES // 2)  # 8 MiB: b has 8 MiB free, less than 8 + headroom
    report = drain_with_rounds(loop, clock, 0.5)
    assert not report.ok and report.left == (2,)
    assert [r.pid for r in report.moved] == [1]
    assert report.why.startswith("no other machine has room: process 2 needs 12.0 MiB free,")
    assert "8.0 MiB on b" in report.why


def test_other_machines_that_do_not_answer() -> None:
    loop, clock, world = setup(("a", FRAMES), ("b", FRAMES))
    world["a"].add(1, pages=16)
    world["b"].down = True
    report = drain_with_rounds(loop, clock, 0.5)
    assert (report.ok, report.why) == (False, "no other machine answers")


def test_processes_that_end_where_they_are_are_counted_and_explained() -> None:
    loop, clock, world = setup(("a", FRAMES))
    world["a"].add(1, pages=16)

    def look() -> None:
        loop.round()
        if clock.sleeps == 3:
            world["a"].processes.clear()  # it ended by itself

    clock.on_sleep = look
    report = loop.drain("a", 10.0)
    assert report.ok and report.left == () and report.moved == ()
    assert report.ended == (1,) and report.why == "no other machine"


def test_a_drain_that_empties_the_machine_has_no_why() -> None:
    loop, clock, world = setup(("a", FRAMES), ("b", FRAMES))
    world["a"].add(1, pages=16)
    report = drain_with_rounds(loop, clock, 5.0)
    assert report.ok and [r.pid for r in report.moved] == [1]
    assert (report.why, report.ended, report.left) == ("", (), ())


def test_a_deadline_already_past_still_looks_once() -> None:
    loop, _, world = setup(("a", FRAMES))
    world["a"].add(1, pages=16)
    report = loop.drain("a", 0.0)
    assert not report.ok and report.left == (1,) and report.why == "no other machine"


def test_a_machine_that_stops_answering_fails_its_drain() -> None:
    loop, _, world = setup(("a", FRAMES), ("b", FRAMES))
    world["a"].add(1, pages=16)
    world["a"].down = True
    report = loop.drain("a", 5.0)
    assert not report.ok
    assert report.why.startswith("a stopped answering: machine a is gone")


def failed_state() -> BalancerState:
    ok = DrainReport("b", 1.0, 5.0, (), (), True)
    failed = DrainReport("a", 5.0, 5.0, (), (7,), False, "no other machine")
    return BalancerState(1, 0, (), (), (ok, failed), (), "none")


def test_top_counts_a_failed_drain_as_not_ok() -> None:
    from tender_ray.cli.top import _balancer_line

    assert "drains 1/2 ok" in _balancer_line(failed_state()).plain


def test_metrics_count_a_failed_drain_as_incomplete() -> None:
    from tender_ray.metrics.collector import TenderCollector

    families = {f.name: f for f in TenderCollector._balancer_families(
        failed_state(), "none", ["a", "b"])}
    samples = {(s.labels["machine"], s.labels["result"]): s.value
               for s in families["tender_balancer_drains"].samples if s.name.endswith("_total")}
    assert samples[("a", "incomplete")] == 1 and samples[("a", "ok")] == 0
    assert samples[("b", "ok")] == 1 and samples[("b", "incomplete")] == 0
