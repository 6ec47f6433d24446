"""Write tracking of a machine's processes: which pages each one changed since the last look
(the ground pre-copy migration and incremental checkpoints stand on).

The set itself is `resources.dirty_pages.DirtyPages`, held by the process's virtual space;
the engine marks the guest's own stores and the space marks the kernel's writes and mapping
changes. Every change of the set's interval here (start, take, stop) is made with the process
off its CPU and the scheduler's lock held, so no computation runs it meanwhile and its engine
re-protects every page before the guest's next instruction: a store can never fall between
two takes unseen. A process that migrates while tracked arrives tracked, with every present
page in its first interval (`arrive_tracked`): its destination has none of them yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, cast

from tender_ray.abi.cpu_state import CpuState
from tender_ray.errors import ProcessStateError, WriteTrackingError
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.resources.dirty_pages import DirtyPages, WrittenPages
from tender_ray.resources.process import Process, RunState

T = TypeVar("T")


def _refuse_untracked_engine(p: Process, where: str) -> None:
    if not getattr(p.context, "tracks_writes", False):
        raise WriteTrackingError(
            f"process {p.pid}'s engine on {where} cannot track its writes: track it on a "
            "machine whose engine can (emulated or native)")


def arrive_tracked(p: Process, where: str) -> None:
    """An arriving process was tracked at its source: tracking goes on here, every present
    page dirty. WriteTrackingError (the migration fails, the process stays at its source)
    when this machine's engine cannot track."""
    _refuse_untracked_engine(p, where)
    assert p.space is not None
    p.space.dirty = DirtyPages(p.space.table)


class WriteTracking:
    """The calls that start, take and stop the tracking of a process's written pages."""

    name: str
    scheduler: Scheduler

    def _off_cpu(self, pid: int, action: Callable[[Process], T], timeout: float) -> T:
        """`action(p)` done with the process off its CPU and the scheduler's lock held.

        A process on its CPU does it itself, between two quanta (a register edit, which its
        computation applies with the CPU stopped), its quantum cut short to get there soon;
        one that leaves its CPU first (it blocks, sleeps or ends) is done here instead.
        ProcessStateError for a finished process, or one that stays inside a system call
        longer than `timeout`."""
        sched = self.scheduler
        done: list[tuple[T | None, BaseException | None]] = []

        def act(p: Process) -> None:
            if p.state in (RunState.EXITING, RunState.ZOMBIE) or p.space is None:
                done.append((None, ProcessStateError(
                    f"process {pid} has finished ({p.exit_reason})")))
                return
            try:
                done.append((action(p), None))
            except BaseException as exc:  # raised to the caller, on its own thread
                done.append((None, exc))

        def between_quanta(state: CpuState) -> CpuState:
            with sched.cond:
                if not done:
                    act(p)
                sched.cond.notify_all()
            return state

        deadline = time.monotonic() + timeout
        with sched.cond:
            p = sched.get(pid)
            while not done and p.state.on_cpu:
                # Its computation applies the edits without the lock and clears the list
                # after them: one added just then is cleared unapplied, so it is asked again.
                if between_quanta not in p.register_edits:
                    p.register_edits.append(between_quanta)
                    p.context.preempt()
                left = deadline - time.monotonic()
                if left <= 0:
                    if between_quanta in p.register_edits:
                        p.register_edits.remove(between_quanta)
                    raise ProcessStateError(
                        f"process {pid} did not leave its CPU within {timeout} s (a long "
                        "system call); try again")
                sched.cond.wait(min(left, 0.05))
            if between_quanta in p.register_edits:  # it left its CPU first: done here
                p.register_edits.remove(between_quanta)
            if not done:
                act(p)
            result, error = done[0]
            if error is not None:
                raise error
            return cast(T, result)

    def start_tracking(self, pid: int, timeout: float = 10.0) -> None:
        """Track process `pid`'s writes from now on: the first take holds the pages written
        (or given new contents) after this call. WriteTrackingError on an engine that cannot, or
        when it is tracked already."""
        def start(p: Process) -> None:
            _refuse_untracked_engine(p, self.name)
            assert p.space is not None
            if p.space.dirty is not None:
                raise WriteTrackingError(f"process {pid}'s writes are tracked already: take "
                                         "them, or stop tracking first")
            p.space.dirty = DirtyPages()

        self._off_cpu(pid, start, timeout)

    def take_written(self, pid: int, timeout: float = 10.0) -> WrittenPages:
        """The pages process `pid` changed since tracking started or the last take (and
        those gone meanwhile); a new interval begins. WriteTrackingError if it is not
        tracked."""
        def take(p: Process) -> WrittenPages:
            dirty = p.space.dirty if p.space is not None else None
            if dirty is None:
                raise WriteTrackingError(f"process {pid}'s writes are not tracked: start "
                                         "tracking first")
            return dirty.take()

        return self._off_cpu(pid, take, timeout)

    def stop_tracking(self, pid: int, timeout: float = 10.0) -> None:
        """Stop tracking process `pid`'s writes (nothing if it was not tracked)."""
        def stop(p: Process) -> None:
            assert p.space is not None
            p.space.dirty = None

        self._off_cpu(pid, stop, timeout)

    def is_tracked(self, pid: int) -> bool:
        with self.scheduler.lock:
            p = self.scheduler.get(pid)
            return p.space is not None and p.space.dirty is not None
