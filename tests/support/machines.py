"""Driving a machine from a test, written once for both kinds of machine: an in-process
`tender_ray.kernel.machine.Machine` and a Ray `tender_ray.cluster.MachineHandle`, which
both satisfy the `MachineLike` protocol below structurally.

- Running: `start` (exec a workload by name), `start_in` (one working in a directory),
  `wait_finished` (ended AND released by its computation), `finish` (wait + reap),
  `run_on_machine` (exec a path, run it to the end).
- The `standby` workload, which runs until told: `start_standby` (start it and wait until it
  says it is ready) and `finish_standby` (tell it to finish, wait, reap); what happens in
  between happens to a process that is certainly still there, however slow the host.
- Polling: `wait_state` (a process reaches a state), `wait_until` (any condition), `holder`
  (the pid the only computation runs).
- Checks that a machine gave everything back: `frames_free`, `managers`, `assert_clean`.
- Migration: `bounce` moves a process round-robin over machines until it ends, and
  `bounce_enough` runs a larger input when a busy host let the run end after too few moves;
  how one move is made is their `move` argument: `local_mover(...)` (`migrate_local`
  between machines of this process) or `actor_mover(...)` (`MachineHandle.migrate` between
  actors). `SlowTransport` keeps an in-process migration in flight.

Nothing here imports Ray: the handle type is only named for the type checker.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import numpy as np
import numpy.typing as npt

from support.programs import GUEST_TIMEOUT, STANDBY_READY, workload
from tender_ray import logs
from tender_ray.abi.linux import Signal
from tender_ray.errors import ProcessStateError, TenderError
from tender_ray.kernel.machine import Machine
from tender_ray.kernel.snapshots import MachineStatistics, ProcessInfo
from tender_ray.migration.options import MigrationOptions
from tender_ray.migration.protocol import migrate_local
from tender_ray.migration.record import MigrationRecord
from tender_ray.migration.transports import Transport
from tender_ray.resources.file_view import FileViewSpec
from tender_ray.resources.manager import ManagerStatistics

if TYPE_CHECKING:
    from tender_ray.cluster import MachineHandle

# The first migration log line imports and configures structlog (~0.5 s): do it now, so the
# first migration of a test is not slower than the run it is supposed to interrupt.
logs.get("tests")

WAIT_SLICE = 5.0  # seconds of one `wait` call: a long wait is several, so a test never hangs
POLL = 0.0005  # seconds between two looks at a machine while polling


class MachineLike(Protocol):
    """What the helpers use of a machine; `Machine` and `MachineHandle` both have it."""

    @property
    def name(self) -> str: ...
    def exec(self, image: bytes, name: str, argv: Sequence[str | bytes],
             envp: Sequence[str | bytes] = ()) -> int: ...
    def info(self, pid: int) -> ProcessInfo: ...
    def wait(self, pid: int, timeout: float | None = None) -> ProcessInfo: ...
    def reap(self, pid: int) -> tuple[ProcessInfo, bytes, bytes]: ...
    def kill(self, pid: int, signal: int = 9) -> ProcessInfo: ...
    def take_output(self, pid: int) -> tuple[bytes, bytes]: ...
    def list_processes(self) -> list[ProcessInfo]: ...
    def statistics(self) -> MachineStatistics: ...


M = TypeVar("M", bound=MachineLike)


# --- running --------------------------------------------------------------------------------

def _envp(env: Mapping[str, str] | None) -> list[str]:
    return [f"{k}={v}" for k, v in (env or {}).items()]


def start(machine: MachineLike, name: str, *args: str,
          env: Mapping[str, str] | None = None) -> int:
    """Exec a workload by name on `machine` without waiting; its pid.

    argv[0] is the workload's path, envp is `env` as NAME=value strings (none if None).
    """
    path = workload(name)
    return machine.exec(path.read_bytes(), name, [os.fspath(path), *args], _envp(env))


def start_in(machine: Machine, name: str, where: Path, *args: str,
             stdin: str = "empty") -> int:
    """Exec a workload that works in the directory `where` (its first argument, also its
    working directory and the one directory of its view it may write under); its pid."""
    path = workload(name)
    return machine.exec(path.read_bytes(), name, [os.fspath(path), os.fspath(where), *args],
                        files=FileViewSpec(cwd=os.fspath(where), writable=(os.fspath(where),)),
                        stdin=stdin)


def wait_finished(machine: MachineLike, pid: int, timeout: float = GUEST_TIMEOUT
                  ) -> ProcessInfo:
    """Wait until the process has ended AND its computation has let go of it; its info.

    `wait` returns as soon as the process is a zombie, which can be before the computation
    that ran it has given its address space back (see
    test_machine.py::test_wait_returns_only_after_the_process_is_released); reaping then
    would hand a process the computation still uses back to the pool. Until that is fixed,
    also wait for no computation to hold the pid, which is cleared under the machine lock in
    the same step that releases the address space.

    A process that does not end within `timeout` is killed (if it still can be) and the test
    fails. The wait is made of calls of at most WAIT_SLICE seconds, so that no single call to
    an actor blocks for the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        info = machine.wait(pid, timeout=max(0.0, min(WAIT_SLICE, left)))
        if info.state == "zombie":
            break
        if time.monotonic() >= deadline:
            with contextlib.suppress(TenderError):
                machine.kill(pid)
            raise AssertionError(f"process {pid} ({info.name}) did not end on {machine.name} "
                                 f"within {timeout} s")
    while any(c.pid == pid for c in machine.statistics().computations):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} ended on {machine.name} but its computation "
                                 "never released it")
        time.sleep(0.001)
    return info


def finish(machine: MachineLike, pid: int, timeout: float = GUEST_TIMEOUT
           ) -> tuple[int, bytes, bytes, ProcessInfo]:
    """Wait for the process to end on `machine` (`wait_finished`), reap it:
    (status, stdout, stderr, final info)."""
    wait_finished(machine, pid, timeout)
    info, out, err = machine.reap(pid)
    assert info.exit_status is not None
    return info.exit_status, out, err, info


def run_on_machine(machine: MachineLike, path: str | os.PathLike[str],
                   args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                   timeout: float = GUEST_TIMEOUT) -> tuple[int, bytes, bytes, ProcessInfo]:
    """Run a program on `machine` to its end: (status, stdout, stderr, final info).

    argv[0] is `path` as given (as `run_native` does), envp is `env` as NAME=value strings.
    The process is reaped, so its resources are back with the machine afterwards.
    """
    image = Path(path).read_bytes()
    pid = machine.exec(image, Path(path).name, [os.fspath(path), *args], _envp(env))
    return finish(machine, pid, timeout)


def start_standby(machine: MachineLike, *args: str, timeout: float = GUEST_TIMEOUT
                  ) -> tuple[int, bytes]:
    """Start `standby` with `args` on `machine` and wait until it says it is ready (it has
    touched its memory and can be told to finish): its pid and the stdout taken meanwhile,
    which `finish_standby` puts back in front of the rest."""
    pid = start(machine, "standby", *args)
    return pid, wait_ready(machine, pid, timeout)


def wait_ready(machine: MachineLike, pid: int, timeout: float = GUEST_TIMEOUT,
               line: bytes = STANDBY_READY) -> bytes:
    """Wait until process `pid` has written its ready `line` (standby's by default); the
    stdout taken."""
    deadline = time.monotonic() + timeout
    out = b""
    while line not in out:
        taken, _ = machine.take_output(pid)
        out += taken
        if line in out:
            break
        info = machine.info(pid)
        assert info.state != "zombie", f"process {pid} ended before it said {line!r}: {info}"
        assert time.monotonic() < deadline, f"process {pid} never said {line!r}: {info}"
        time.sleep(POLL * 4)
    return out


def finish_standby(machine: MachineLike, pid: int, taken: bytes = b"",
                   timeout: float = GUEST_TIMEOUT) -> tuple[int, bytes, bytes, ProcessInfo]:
    """Tell the `standby` process `pid` on `machine` to finish (SIGUSR1), wait for it and reap
    it: (status, stdout with `taken` in front, stderr, final info), to compare with
    `native_standby`."""
    machine.kill(pid, int(Signal.SIGUSR1))
    status, out, err, info = finish(machine, pid, timeout)
    return status, taken + out, err, info


# --- polling --------------------------------------------------------------------------------

def wait_state(machine: MachineLike, pid: int, states: str | Sequence[str],
               timeout: float = 10.0, pred: Callable[[ProcessInfo], bool] | None = None
               ) -> ProcessInfo:
    """Poll until the process is in `states` (one state, or any of several) and `pred`
    holds; its info."""
    wanted = (states,) if isinstance(states, str) else tuple(states)  # "running" is no set
    deadline = time.monotonic() + timeout
    while True:
        info = machine.info(pid)
        if info.state in wanted and (pred is None or pred(info)):
            return info
        assert time.monotonic() < deadline, (
            f"process {pid} never reached {' or '.join(wanted)} on {machine.name}: {info}")
        time.sleep(POLL)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "", *,
               machine: MachineLike | None = None, interval: float = POLL) -> None:
    """Poll `condition` every `interval` seconds until it holds; fail after `timeout`.

    The failure names `what` and, given a `machine`, lists that machine's processes.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            message = f"never: {what}" if what else "condition not met in time"
            if machine is not None:
                message += f"; {machine.list_processes()}"
            raise AssertionError(message)
        time.sleep(interval)


def holder(machine: MachineLike) -> int | None:
    """The pid the (only) computation of `machine` is running, None when it is idle."""
    (comp,) = machine.statistics().computations
    return comp.pid


# --- a machine gave everything back ---------------------------------------------------------

def frames_free(machine: MachineLike) -> bool:
    """Every frame of the machine's real memory is free."""
    mem = machine.statistics().memory
    return mem.frames_free == mem.frames_total and mem.frames_used == 0


def managers(machine: MachineLike) -> dict[str, ManagerStatistics]:
    """The machine's resource managers' counters by resource name."""
    return {s.resource: s for s in machine.statistics().managers}


def assert_clean(machine: MachineLike) -> None:
    """Nothing left on the machine: no process, every frame free, nothing handed out."""
    stats = machine.statistics()
    assert stats.processes == {}, f"{machine.name} still has processes {stats.processes}"
    assert machine.list_processes() == [], f"{machine.name} lists processes"
    mem = stats.memory
    assert mem.frames_free == mem.frames_total and mem.frames_used == 0, (
        f"{machine.name} frames not all free: {mem}")
    live = {s.resource: s.live for s in stats.managers if s.live}
    assert live == {}, f"{machine.name} still has live resources {live}"


# --- migration ------------------------------------------------------------------------------

def local_mover(options: MigrationOptions | None = None, transport: Transport | None = None
                ) -> Callable[[Machine, int, Machine], MigrationRecord]:
    """A `bounce` move between machines of this process: `migrate_local`."""
    def move(source: Machine, pid: int, destination: Machine) -> MigrationRecord:
        return migrate_local(source, pid, destination, options, transport)
    return move


class ThreadedMoves:
    """A local `bounce` move that counts the moves made while the process had more than one
    thread (`threaded`): a test of moving threads must have made some."""

    def __init__(self) -> None:
        self.threaded = 0
        self._move = local_mover()

    def __call__(self, source: Machine, pid: int, destination: Machine) -> MigrationRecord:
        with source.scheduler.lock:
            self.threaded += bool(source.scheduler.table[pid].members)
        return self._move(source, pid, destination)


def actor_mover(options: MigrationOptions | None = None, timeout: float = 120.0
                ) -> Callable[[MachineHandle, int, MachineHandle], MigrationRecord]:
    """A `bounce` move between machine actors: the source's `MachineHandle.migrate`."""
    def move(source: MachineHandle, pid: int, destination: MachineHandle) -> MigrationRecord:
        return source.migrate(pid, destination.name, options, timeout=timeout)
    return move


def bounce(machines: Sequence[M], pid: int, *, move: Callable[[M, int, M], MigrationRecord],
           at: int = 0, pause: float = 0.003, max_moves: int = 10_000
           ) -> tuple[int, list[MigrationRecord]]:
    """Migrate `pid` round-robin over `machines` (starting on machines[at]) with `move` until
    it ends or `max_moves` are made.

    Between moves the process runs for `pause` seconds. Returns the index of the machine it
    is on at the end and the records of the migrations made. A migration refused because the
    process has finished (ProcessStateError from freeze) ends the loop; any other error
    propagates. (A process that has just exited is refused while its computation still lets
    go of it, shown as running: it must be a zombie within a wait slice.)
    """
    records: list[MigrationRecord] = []
    where = at
    while len(records) < max_moves:
        source = machines[where]
        if source.info(pid).state == "zombie":
            break
        target = (where + 1) % len(machines)
        try:
            records.append(move(source, pid, machines[target]))
        except ProcessStateError as refused:
            info = source.wait(pid, timeout=WAIT_SLICE)
            assert info.state == "zombie", f"migration refused, yet not ended: {refused}"
            break
        where = target
        if pause:
            time.sleep(pause)
    return where, records


def bounce_enough(machines: Sequence[M], launch: Callable[[int], int], *,
                  move: Callable[[M, int, M], MigrationRecord], enough: int,
                  scales: Sequence[int] = (1, 4, 16), pause: float = 0.003
                  ) -> tuple[int, int, int, list[MigrationRecord]]:
    """`bounce` a process that `launch(scale)` starts on machines[0] until it was moved at
    least `enough` times before it ended: how many moves fit in a run depends on the host,
    so a run that ended sooner is finished and the next, larger scale is tried. Past ten
    times `enough` moves it runs on where it is to its end (a run moved every few
    milliseconds makes little progress between moves: its length would be the host's
    speed, not the test's). Returns the scale, the pid, the index of the machine it ended
    on and the records of the last run (at least one move: a run that ends before its first
    move cannot be compared)."""
    for scale in scales:
        pid = launch(scale)
        where, records = bounce(machines, pid, move=move, pause=pause, max_moves=10 * enough)
        if len(records) >= enough or scale == scales[-1]:
            assert records, f"the process ended before its first move, even at scale {scale}"
            return scale, pid, where, records
        finish(machines[where], pid)  # too few moves to show anything: a larger run
    raise AssertionError("no scale given")


class SlowTransport:
    """An in-process transport whose put takes `delay` seconds: keeps a migration in flight."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.putting = threading.Event()  # set when the first block is being put

    def put(self, block: npt.NDArray[np.uint8]) -> Any:
        self.putting.set()
        time.sleep(self.delay)
        return block.copy()

    def get(self, handle: Any) -> npt.NDArray[np.uint8]:
        return cast("npt.NDArray[np.uint8]", handle)

    def discard(self, handles: tuple[Any, ...]) -> None:
        pass


def merge_chunks(chunks: dict[int, bytes]) -> bytes:
    """One stream from output chunks by offset, overlaps written once (as the scenario
    runner and exec merge them)."""
    out = bytearray()
    for offset, data in sorted(chunks.items()):
        if offset + len(data) > len(out):
            out += data[len(out) - offset:]
    return bytes(out)


def drain_output(m: Machine, chunks: dict[int, bytes], pid: int) -> bool:
    """Poll `m` once, keeping process `pid`'s stdout chunks; whether it ended (and was
    reaped)."""
    result = m.poll()
    for c in result.output:
        if c.pid == pid and c.fd == 1:
            chunks[c.offset] = c.data
    return any(i.pid == pid for i in result.ended)
