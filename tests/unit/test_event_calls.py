"""Event descriptors and the process's own state, through the system calls a real program
makes (kernel/syscalls/descriptors_events.py, processes.py, memory.py, time.py): the musl
workloads `events` (eventfd, timerfd, epoll and poll over pipes, pipe sizes, membarrier) and
`process_state` (prctl, resource limits, CPU-time timers, mremap, mincore) and `epoll_edge`
(EPOLLET and EPOLLONESHOT) print what the same binary prints natively, on both engines and
while they migrate between machines; what a timer or an epoll set holds travels in the
image."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import pytest
from support.engines import ENGINES
from support.machines import bounce, finish, local_mover, start
from support.programs import native

from tender_ray.kernel.machine import Machine
from tender_ray.resources.event_file import EPOLLET, Epoll, EventFd, Interest, TimerFd
from tender_ray.resources.open_file import POLLIN, FdTable

MakeMachine = Callable[..., Machine]
PROGRAMS = [("events", "20"), ("process_state", "3")]
QUICK = [("epoll_edge",)]  # over before a move could come: run in place only


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("program", PROGRAMS + QUICK, ids=lambda p: p[0])
def test_as_natively(make_machine: MakeMachine, engine: str, program: tuple[str, ...]) -> None:
    machine = make_machine(quantum_us=1000, engine=engine)
    status, out, err, info = finish(machine, start(machine, *program))
    assert (status, out, err) == native(*program), info.exit_reason
    assert info.unsupported == {}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p[0])
def test_through_migrations(make_machine: MakeMachine, engine: str,
                            program: tuple[str, str]) -> None:
    machines = [make_machine(name=f"m{i}", quantum_us=1000, engine=engine) for i in range(3)]
    pid = start(machines[0], *program)
    where, records = bounce(machines, pid, move=local_mover(), pause=0.01)
    assert records, "the process ended before it was moved"
    status, out, err, info = finish(machines[where], pid)
    assert (status, out, err) == native(*program), info.exit_reason


def test_a_timer_travels_as_its_time_left() -> None:
    timer = TimerFd(1, 0)
    timer.set(3600.0, 0.5, absolute=False)
    left_before = timer.get()[0]
    copy = pickle.loads(pickle.dumps(timer))
    left, interval = copy.get()
    assert interval == 0.5 and left_before - 1 < left <= left_before
    assert copy.read(8) is None and copy.wake_after() is not None


def test_an_epoll_set_travels_with_what_it_watches() -> None:
    table = FdTable()
    counter = EventFd(0, False, 0)
    ep = Epoll(0)
    fd = table.install(counter)
    table.install(ep)
    ep.interest[fd] = Interest(counter, POLLIN, 77)
    copied: FdTable = pickle.loads(pickle.dumps(table))
    moved_ep = next(e.file for e in copied.entries.values() if isinstance(e.file, Epoll))
    moved_counter = copied.get(fd)
    assert moved_ep.interest[fd].file is moved_counter  # the same description, still shared
    assert moved_ep.ready(copied, 8) == []
    assert moved_counter.write((5).to_bytes(8, "little")) == 8
    assert moved_ep.ready(copied, 8) == [(POLLIN, 77)]  # what it asked for
    copied.close(fd)
    assert moved_ep.ready(copied, 8) == [] and fd not in moved_ep.interest


def test_a_one_shot_timer_fires_once() -> None:
    timer = TimerFd(1, 0)
    timer.set(0.001, 0.0, absolute=False)
    deadline = time.monotonic() + 10
    while timer.readiness() == 0:
        assert time.monotonic() < deadline, "the timer never fired"
        time.sleep(timer.wake_after() or 0.001)
    assert timer.read(8) == (1).to_bytes(8, "little")
    assert timer.read(8) is None and timer.wake_after() is None


def test_edge_triggered_reports_what_is_new_and_mod_rearms() -> None:
    table = FdTable()
    counter = EventFd(0, False, 0)
    ep = Epoll(0)
    fd = table.install(counter)
    table.install(ep)
    ep.interest[fd] = Interest(counter, POLLIN | EPOLLET, 5)
    assert ep.ready(table, 8) == []
    counter.write((1).to_bytes(8, "little"))
    assert ep.ready(table, 8) == [(POLLIN, 5)]
    assert ep.ready(table, 8) == []  # still readable, nothing new: not again
    counter.write((2).to_bytes(8, "little"))
    assert ep.ready(table, 8) == [(POLLIN, 5)]  # more arrived while readable: reported
    counter.read(8)
    assert ep.ready(table, 8) == []
    counter.write((1).to_bytes(8, "little"))
    assert ep.ready(table, 8) == [(POLLIN, 5)]  # drained, then ready again: a new edge
    ep.interest[fd].seen = ep.interest[fd].held = 0  # what EPOLL_CTL_MOD does
    assert ep.ready(table, 8) == [(POLLIN, 5)]
