"""Fakes of what the balancing loop talks to, for its tests without Ray: a `FakeClock` whose
time passes only when the loop waits or sleeps, the `Reply` of a fake remote call, and a
`FakeMachine` whose processes migrations move in memory between the machines of one `world`,
and a `LocalClient` that lets the loop drive real in-process machines.

`FRAMES` is the real memory of a fake machine (16 MiB); a machine made with fewer
`free_frames` has that much room left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from support.machines import local_mover
from tender_ray.errors import MachineStoppedError
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.record import MigrationRecord
from tender_ray.resources.computation import ComputationStatistics
from tender_ray.resources.real_memory import RealMemoryStatistics

T = TypeVar("T")
FRAMES = 4096  # 16 MiB of real memory per fake machine


class FakeClock:
    """Time that passes only when the loop waits or sleeps; every wait is recorded in `waits`,
    sleeps are counted in `sleeps`, and `on_sleep` (if set) runs at each sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []
        self.sleeps = 0
        self.on_sleep: Callable[[], object] | None = None

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        if self.on_sleep is not None:
            self.on_sleep()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        if event.is_set():
            return True
        self.now += timeout
        return False


class Reply(Generic[T]):
    """The pending answer of a fake remote call: its value, or the error `result` raises."""

    def __init__(self, value: T | None = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout: float | None = None) -> T:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class FakeMachine:
    """A machine of processes (pid -> state, resident pages) that migrations move in memory.

    What a test can make it do: `down` (answers nothing, as a dead actor), `load_raises` (its
    load raises that, not a TenderError: a bad round), `refuse` (migrations to it fail with
    that message), `gate` (pid -> an event; its move ends only once the event is set).
    """

    def __init__(self, world: dict[str, FakeMachine], clock: FakeClock, name: str,
                 free_frames: int = FRAMES) -> None:
        self.world, self.clock, self.name = world, clock, name
        self.free_frames = free_frames
        self.processes: dict[int, tuple[str, int]] = {}
        self.cordoned = False
        self.cordons = 0
        self.down = False  # answers nothing (a dead actor)
        self.load_raises: BaseException | None = None  # not a TenderError: a bad round
        self.refuse: str | None = None  # migrations to this machine fail with this message
        self.gate: dict[int, threading.Event] = {}  # pid -> released when its move may end
        world[name] = self

    def add(self, pid: int, state: str = "runnable", pages: int = 16) -> None:
        self.processes[pid] = (state, pages)

    def _gone(self) -> MachineStoppedError:
        return MachineStoppedError(f"machine {self.name} is gone")

    def _info(self, pid: int) -> ProcessInfo:
        state, pages = self.processes[pid]
        return ProcessInfo(pid=pid, name=f"p{pid}", machine=self.name, state=state,
                           exit_status=None, exit_reason="", cpu_seconds=float(pid % 97),
                           run_seconds=1.0, resident_pages=pages, syscalls={}, unsupported={},
                           migrations=(), created_at=self.clock.time() - 5)

    def _stats(self) -> MachineStatistics:
        runnable = sum(1 for s, _ in self.processes.values() if s in ("runnable", "running"))
        return MachineStatistics(
            name=self.name, state="running",
            computations=(ComputationStatistics(0, "idle", None, 0.0, 0),),
            processes={}, runnable=runnable, load=float(runnable), utilisation=0.0,
            memory=RealMemoryStatistics(FRAMES, self.free_frames, FRAMES - self.free_frames),
            managers=(), syscalls={}, unsupported={}, exited=0, uptime=1.0,
            cordoned=self.cordoned)

    def load_async(self) -> Reply[tuple[MachineStatistics, list[ProcessInfo]]]:
        if self.load_raises is not None:
            raise self.load_raises
        if self.down:
            return Reply(error=self._gone())
        return Reply((self._stats(), [self._info(pid) for pid in self.processes]))

    def list_processes(self, timeout: float | None = None) -> list[ProcessInfo]:
        if self.down:
            raise self._gone()
        return [self._info(pid) for pid in list(self.processes)]

    def cordon(self, timeout: float | None = None) -> None:
        self.cordoned = True
        self.cordons += 1

    def uncordon(self, timeout: float | None = None) -> None:
        if self.down:
            raise self._gone()
        self.cordoned = False

    def migrate(self, pid: int, destination: str, options: MigrationOptions | None = None,
                timeout: float | None = None) -> MigrationRecord:
        started = self.clock.time()
        target = self.world[destination]
        if target.refuse is not None:
            raise MachineStoppedError(target.refuse)
        state, pages = self.processes.pop(pid)  # it leaves here before the reply comes back
        target.processes[pid] = (state, pages)
        gate = self.gate.get(pid)
        if gate is not None:
            assert gate.wait(10), "the test never let the move finish"
        return MigrationRecord(pid=pid, source=self.name, destination=destination,
                               transfer="dsm", reuse=True, resources="needed", seconds=0.01,
                               bytes=pages * 4096, pages=pages, started_at=started)


class LocalClient:
    """A balancer's client of a real in-process machine (the `MachineClient` protocol);
    its migrations are `local_mover`'s."""

    def __init__(self, machine: Machine, world: dict[str, Machine]) -> None:
        self.machine, self.world = machine, world

    @property
    def name(self) -> str:
        return self.machine.name

    def load_async(self) -> Reply[tuple[MachineStatistics, list[ProcessInfo]]]:
        return Reply(self.machine.load())

    def migrate(self, pid: int, destination: str, options: MigrationOptions | None = None,
                timeout: float | None = None) -> MigrationRecord:
        return local_mover(options)(self.machine, pid, self.world[destination])

    def cordon(self, timeout: float | None = None) -> None:
        self.machine.cordon()

    def list_processes(self, timeout: float | None = None) -> list[ProcessInfo]:
        return self.machine.list_processes()
