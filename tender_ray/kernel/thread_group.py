"""A process's threads as its machine keeps them: thread ids from the allocator pids come
from, a new thread's run entry joining the scheduler, one thread's exit, and what Linux does
when a thread (not its process's first) ends — the clear-child-tid word zeroed and woken,
and its engine context let go — and a process's threads arriving in a migration (transform
III makes each with its id, registers and own state).

`ThreadGroups` is a part of `Machine` (mixed in): it works on the machine state declared
below, which `Machine.__init__` sets, under the machine's lock (`scheduler.lock`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from tender_ray.errors import MigrationError
from tender_ray.kernel.scheduler import Scheduler
from tender_ray.kernel.syscalls import SystemCalls
from tender_ray.kernel.syscalls import threads as thread_calls
from tender_ray.migration.image import ProcessImage
from tender_ray.resources.process import Accounting, Process, ThreadEntry
from tender_ray.resources.thread import FutexKey, FutexKeyKind, FutexWait, Thread


class ThreadGroups:
    """The thread services of `kernel/syscalls/threads.py` (`syscalls.Services`)."""

    # The machine's state this part works on (set by `Machine.__init__`).
    scheduler: Scheduler
    syscalls: SystemCalls
    incoming: dict[int, Process]
    _pids: Iterator[int]

    def new_thread_id(self) -> int:
        """A thread id from the allocator pids come from: no process or thread has it."""
        with self.scheduler.lock:
            taken = self.ids_taken()
            tid = next(self._pids)
            while tid in taken:
                tid = next(self._pids)
            return tid

    def ids_taken(self) -> set[int]:
        """Every pid and tid a process here has, or one arriving brings (lock held): the
        allocator gives none of them while that process lives."""
        taken = set(self.scheduler.table) | set(self.incoming)
        for p in (*self.scheduler.table.values(), *self.incoming.values()):
            taken.update(p.threads)
        return taken

    def start_thread(self, t: ThreadEntry) -> None:
        self.scheduler.add_member(t)

    def exit_thread(self, p: Process, status: int) -> None:
        self.scheduler.exit_thread(p, status, "exited")

    def finish_member(self, t: ThreadEntry) -> None:
        """A thread (not its process's first) ended: Linux's clear-child-tid write and
        wake, and its host thread or CPU context goes. Lock held, no computation runs it."""
        thread_calls.thread_ended(self.syscalls, t)
        if t.cpu is not None:
            t.cpu.close()
            t.cpu = None


def check_arrival(p: Process, image: ProcessImage, machine: str, engine: str) -> None:
    """Refuse, before anything is made, a process with threads that this machine's engine
    cannot make (the process goes on at its source)."""
    if image.threads and not getattr(p.context, "moves_threads", False):
        raise MigrationError(
            f"process {image.pid} has {len(image.threads)} threads, which {machine}'s "
            f"{engine} engine cannot make for an arriving process yet: move it to a machine "
            "with the emulated engine")


def arrive(p: Process, image: ProcessImage, syscalls: SystemCalls) -> None:
    """Transform III for the threads of arriving `p` (its first thread's registers are in
    already): each other thread made with its id, registers and own state, one engine context
    each, listed in `members` (they run once the process joins the table). A thread waiting
    in a futex is queued again on the same word of the new space, in the order the threads
    come (a wake already given is kept: its re-issued call answers 0); one that waited
    without a deadline for anything else wakes at once and issues its call again, which
    waits again if what it waits for is still not there."""
    if not image.threads:
        return
    assert p.space is not None
    # Built aside and put in place at once: the allocator reads them meanwhile.
    threads: dict[int, Thread] = {}
    members: dict[int, ThreadEntry] = {}
    services = syscalls.services
    for ti in image.threads:
        thread = Thread(ti.tid, clear_child_tid=ti.clear_child_tid)
        threads[ti.tid] = thread
        entry: Process = p
        if ti.registers is not None:
            member = ThreadEntry(p, thread)
            member.cpu = p.context.spawn_thread()  # type: ignore[attr-defined]
            member.registers = ti.registers
            member.accounting = ti.accounting if ti.accounting is not None else Accounting()
            member.sleep_left = ti.sleep_left
            syscalls.attach(member)
            members[ti.tid] = member
            entry = member
        if ti.futex_at is None:
            if entry.sleep_left == math.inf:
                entry.sleep_left = 0.0
            continue
        key = FutexKey(FutexKeyKind.PRIVATE, id(p.space), ti.futex_at)
        if ti.futex_woken:
            thread.futex = FutexWait(key, ti.futex_bitset, woken=True, call=ti.futex_call)
            continue

        def wake(entry: Process = entry) -> None:
            services.wake_process(entry)

        syscalls.futexes.wait(thread, key, wake, ti.futex_bitset)
        assert thread.futex is not None
        thread.futex.call = ti.futex_call
    p.threads = threads
    p.members = members


def release(p: Process, syscalls: SystemCalls) -> None:
    """Let go of the threads an arriving process that will not join the table was given."""
    for thread in p.threads.values():
        syscalls.futexes.cancel(thread)
    for member in p.members.values():
        if member.cpu is not None:
            member.cpu.close()
            member.cpu = None
    p.members.clear()
