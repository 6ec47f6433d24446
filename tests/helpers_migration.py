"""Helpers for the migration tests: native results, moving a process around until it ends,
and checks that machines gave everything back.

The generic helpers (`run_native`, `run_on_machine`, `start`, `wait_finished`, `workload`) are
in conftest.py; these build on them.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from conftest import run_native, wait_finished, workload

from tender_ray import logs
from tender_ray.errors import ProcessStateError
from tender_ray.machine import Machine, ProcessInfo
from tender_ray.migration import MigrationOptions, MigrationRecord, Transport, migrate_local
from tender_ray.resources.manager import ManagerStatistics

# The first migration log line imports and configures structlog (~0.5 s): do it now, so the
# first migration of a test is not slower than the run it is supposed to interrupt.
logs.get("tests")


@functools.cache
def native(name: str, *args: str) -> tuple[int, bytes, bytes]:
    """(status, stdout, stderr) of a workload run on the host, empty environment (cached)."""
    return run_native(workload(name), args, {})


def finish(machine: Machine, pid: int, timeout: float = 120.0
           ) -> tuple[int, bytes, bytes, ProcessInfo]:
    """Wait for the process to end on `machine`, reap it: (status, stdout, stderr, info)."""
    wait_finished(machine, pid, timeout)
    info, out, err = machine.reap(pid)
    assert info.exit_status is not None
    return info.exit_status, out, err, info


def frames_free(machine: Machine) -> bool:
    mem = machine.statistics().memory
    return mem.frames_free == mem.frames_total and mem.frames_used == 0


def managers(machine: Machine) -> dict[str, ManagerStatistics]:
    """The machine's resource managers' counters by resource name."""
    return {s.resource: s for s in machine.statistics().managers}


def assert_clean(machine: Machine) -> None:
    """Nothing left on the machine: no process, every frame free, nothing handed out."""
    stats = machine.statistics()
    assert stats.processes == {}, f"{machine.name} still has processes {stats.processes}"
    assert machine.list_processes() == []
    assert frames_free(machine), f"{machine.name} frames not all free: {stats.memory}"
    live = {s.resource: s.live for s in stats.managers if s.live}
    assert live == {}, f"{machine.name} still has live resources {live}"


def wait_state(machine: Machine, pid: int, states: Sequence[str],
               timeout: float = 10.0, pred: Callable[[ProcessInfo], bool] | None = None
               ) -> ProcessInfo:
    """Poll until the process is in one of `states` (and `pred` holds); its info."""
    deadline = time.monotonic() + timeout
    while True:
        info = machine.info(pid)
        if info.state in states and (pred is None or pred(info)):
            return info
        assert time.monotonic() < deadline, f"process {pid} never reached {states}: {info}"
        time.sleep(0.0005)


def bounce(machines: Sequence[Machine], pid: int, *, at: int = 0,
           options: MigrationOptions | None = None, transport: Transport | None = None,
           pause: float = 0.003, max_moves: int = 10_000) -> tuple[int, list[MigrationRecord]]:
    """Migrate `pid` round-robin over `machines` (starting on machines[at]) until it ends.

    Between moves the process runs for `pause` seconds. Returns the index of the machine it
    ended on and the records of the migrations made. A migration refused because the process
    has finished (ProcessStateError from freeze) ends the loop; any other error propagates.
    """
    records: list[MigrationRecord] = []
    where = at
    while len(records) < max_moves:
        source = machines[where]
        if source.info(pid).state == "zombie":
            break
        target = (where + 1) % len(machines)
        try:
            records.append(migrate_local(source, pid, machines[target], options, transport))
        except ProcessStateError:
            assert source.info(pid).state == "zombie"
            break
        where = target
        if pause:
            time.sleep(pause)
    return where, records


class SlowTransport:
    """An in-process transport whose put takes `delay` seconds: keeps a migration in flight."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.putting = threading.Event()  # set when the first block is being put

    def put(self, block: Any) -> Any:
        self.putting.set()
        time.sleep(self.delay)
        return block.copy()

    def get(self, handle: Any) -> Any:
        return handle

    def discard(self, handles: tuple[Any, ...]) -> None:
        pass
