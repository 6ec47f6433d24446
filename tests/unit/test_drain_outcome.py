"""A drain's outcome without Ray: the balancing loop over small fake machines, and what it
says when processes cannot leave (no other machine, every other cordoned, no room, no answer),
when they end where they are, and how `top` and the metrics count a drain that failed."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tender_ray.balancing.loop import BalancingLoop
from tender_ray.balancing.policies import BalancerParams, Policy
from tender_ray.balancing.state import BalancerState, DrainReport
from tender_ray.errors import MachineStoppedError
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.computation import ComputationStatistics
from tender_ray.resources.real_memory import RealMemoryStatistics

FRAMES = 4096  # 16 MiB of real memory per fake machine


class Clock:
    """Time that passes only when the loop sleeps or waits; `on_sleep` runs at each sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps = 0
        self.on_sleep: Callable[[], object] = lambda: None

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        self.on_sleep()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.now += 0 if event.is_set() else timeout
        return event.is_set()


class Reply:
    def __init__(self, value: object = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout: float | None = None) -> object:
        if self.error is not None:
            raise self.error
        return self.value


class Machine:
    """pid -> resident pages; migrations move them in memory."""

    def __init__(self, world: dict[str, Machine], clock: Clock, name: str,
                 free_frames: int = FRAMES) -> None:
        self.world, self.clock, self.name, self.free_frames = world, clock, name, free_frames
        self.processes: dict[int, int] = {}
        self.cordoned = False
        self.down = False
        world[name] = self

    def _info(self, pid: int) -> ProcessInfo:
        return ProcessInfo(pid=pid, name=f"p{pid}", machine=self.name, state="runnable",
                           exit_status=None, exit_reason="", cpu_seconds=1.0, run_seconds=1.0,
                           resident_pages=self.processes[pid], syscalls={}, unsupported={},
                           migrations=(), created_at=self.clock.time() - 5)

    def _stats(self) -> MachineStatistics:
        n = len(self.processes)
        return MachineStatistics(
            name=self.name, state="running",
            computations=(ComputationStatistics(0, "idle", None, 0.0, 0),), processes={},
            runnable=n, load=float(n), utilisation=0.0,
            memory=RealMemoryStatistics(FRAMES, self.free_frames, FRAMES - self.free_frames),
            managers=(), syscalls={}, unsupported={}, exited=0, uptime=1.0,
            cordoned=self.cordoned)

    def load_async(self) -> Reply:
        if self.down:
            return Reply(error=MachineStoppedError(f"machine {self.name} is gone"))
        return Reply((self._stats(), [self._info(p) for p in self.processes]))

    def list_processes(self, timeout: float | None = None) -> list[ProcessInfo]:
        if self.down:
            raise MachineStoppedError(f"machine {self.name} is gone")
        return [self._info(p) for p in list(self.processes)]

    def cordon(self, timeout: float | None = None) -> None:
        self.cordoned = True

    def migrate(self, pid: int, destination: str, options: MigrationOptions | None = None,
                timeout: float | None = None) -> MigrationRecord:
        started = self.clock.time()
        self.world[destination].processes[pid] = pages = self.processes.pop(pid)
        return MigrationRecord(pid=pid, source=self.name, destination=destination,
                               transfer="dsm", reuse=True, resources="needed", seconds=0.01,
                               bytes=pages * 4096, pages=pages, started_at=started)


def setup(*machines: tuple[str, int]) -> tuple[BalancingLoop, Clock, dict[str, Machine]]:
    clock = Clock()
    world: dict[str, Machine] = {}
    loop = BalancingLoop(BalancerParams(policy=Policy.NONE), MigrationOptions(), 1.0,
                         clock=clock)
    for name, free in machines:
        loop.add_machine(Machine(world, clock, name, free))  # type: ignore[arg-type]
    return loop, clock, world


def drain_with_rounds(loop: BalancingLoop, clock: Clock, deadline: float) -> DrainReport:
    """Drain a, with a balancer round at each look (as the balancer's thread would)."""
    clock.on_sleep = loop.round
    return loop.drain("a", deadline)


def test_alone_a_drain_that_cannot_finish_says_there_is_no_other_machine() -> None:
    loop, clock, world = setup(("a", FRAMES))
    world["a"].processes[1] = 16
    report = drain_with_rounds(loop, clock, 0.5)
    assert not report.ok and report.left == (1,) and report.moved == ()
    assert report.why == "no other machine"
    assert loop.state().drains == (report,)


def test_every_other_machine_cordoned() -> None:
    loop, clock, world = setup(("a", FRAMES), ("b", FRAMES), ("c", FRAMES))
    world["a"].processes[1] = 16
    world["b"].cordoned = world["c"].cordoned = True
    report = drain_with_rounds(loop, clock, 0.5)
    assert (report.ok, report.left, report.why) == (False, (1,), "every other machine is "
                                                                   "cordoned")
    assert 1 in world["a"].processes


def test_no_other_machine_has_room_names_the_process_and_the_room() -> None:
    loop, clock, world = setup(("a", FRAMES), ("b", FRAMES // 2))
    world["a"].processes[1] = 16  # fits on b
    world["a"].processes[2] = FRAMES // 2  # 8 MiB: b has 8 MiB free, less than 8 + headroom
    report = drain_with_rounds(loop, clock, 0.5)
    assert not report.ok and report.left == (2,)
    assert [r.pid for r in report.moved] == [1]
    assert report.why.startswith("no other machine has room: process 2 needs 12.0 MiB free,")
    assert "8.0 MiB on b" in report.why


def test_other_machines_that_do_not_answer() -> None:
    loop, clock, world = setup(("a", FRAMES), ("b", FRAMES))
    world["a"].processes[1] = 16
    world["b"].down = True
    report = drain_with_rounds(loop, clock, 0.5)
    assert (report.ok, report.why) == (False, "no other machine answers")


def test_processes_that_end_where_they_are_are_counted_and_explained() -> None:
    loop, clock, world = setup(("a", FRAMES))
    world["a"].processes[1] = 16

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
    world["a"].processes[1] = 16
    report = drain_with_rounds(loop, clock, 5.0)
    assert report.ok and [r.pid for r in report.moved] == [1]
    assert (report.why, report.ended, report.left) == ("", (), ())


def test_a_deadline_already_past_still_looks_once() -> None:
    loop, _, world = setup(("a", FRAMES))
    world["a"].processes[1] = 16
    report = loop.drain("a", 0.0)
    assert not report.ok and report.left == (1,) and report.why == "no other machine"


def test_a_machine_that_stops_answering_fails_its_drain() -> None:
    loop, _, world = setup(("a", FRAMES), ("b", FRAMES))
    world["a"].processes[1] = 16
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
