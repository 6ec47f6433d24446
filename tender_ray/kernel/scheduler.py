"""The scheduler of one machine: its process table, run queue, sleepers, clock and the
computations' loop — and the only code that changes a process's state.

Computations are host threads; an engine releases the interpreter lock while it runs a
quantum, so the machine keeps answering calls while its processes run. Every state change
happens under the machine's one lock (`Scheduler.lock`) through `_set_state`, which refuses a
move `TRANSITIONS` does not list. A process a computation holds is run, and its system calls
served, only by that computation: anyone else who needs it (a freeze, a kill, a newcomer, a
sleeper due) asks the engine to end the quantum early (`Engine.preempt`) and lets the
computation move the process on when the quantum ends.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

from tender_ray.abi.cpu_state import Stop, StopKind
from tender_ray.errors import (
    EngineError,
    MachineStoppedError,
    ProcessStateError,
    UnknownProcessError,
)
from tender_ray.resources.computation import Computation, ComputationState
from tender_ray.resources.process import Process, RunState, ThreadEntry

_S = RunState
# The legal moves. An entry leaves the table as ZOMBIE (reaped) or FROZEN (moved away), and
# `Process.reset` renews it as KERNEL when it goes back to the pool.
TRANSITIONS: Final[Mapping[RunState, frozenset[RunState]]] = {
    _S.KERNEL: frozenset({_S.RUNNABLE,  # exec'd, or an arrival committed
                          _S.SLEEPING}),  # an arrival that was frozen asleep
    _S.RUNNABLE: frozenset({_S.RUNNING,  # a computation takes it
                            _S.FROZEN,  # frozen while it waited
                            _S.ZOMBIE,  # killed while it waited
                            _S.SLEEPING}),  # ended, its other threads not yet (as EXITING)
    _S.RUNNING: frozenset({_S.RUNNABLE,  # the quantum ended
                           _S.FALLING_ASLEEP,  # it called nanosleep & co.
                           _S.FREEZING,  # a migration wants it
                           _S.EXITING}),  # it exited, was killed, or faulted
    _S.FALLING_ASLEEP: frozenset({_S.SLEEPING, _S.FREEZING, _S.EXITING}),
    _S.FREEZING: frozenset({_S.FROZEN,  # the quantum ended
                            _S.EXITING,  # it ended first
                            _S.RUNNING, _S.FALLING_ASLEEP}),  # the freeze gave up waiting
    # The quantum ended: released; or, for a process whose other threads still run, waiting
    # for the last of them to end (it holds the space they run in).
    _S.EXITING: frozenset({_S.ZOMBIE, _S.SLEEPING}),
    _S.SLEEPING: frozenset({_S.RUNNABLE,  # woken on time
                            _S.FROZEN, _S.ZOMBIE}),
    _S.FROZEN: frozenset({_S.RUNNABLE, _S.SLEEPING,  # thawed: as it was
                          _S.ZOMBIE}),  # the machine stopped under the migration
    _S.ZOMBIE: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A kernel bug: a process was moved between states along no move of `TRANSITIONS`."""


def _set_state(p: Process, new: RunState) -> None:
    if new not in TRANSITIONS[p.state]:
        raise IllegalTransition(f"process {p.pid}: {p.state.value} -> {new.value}")
    p.state = new


def _ends_with_members_done(p: Process) -> bool:
    """Whether `p`, its last other thread just ended, waited for it to end."""
    return p.state is RunState.SLEEPING and (p.exit_status is not None
                                             or p.thread_exit is not None)


def _asleep(wake_at: float, _seq: int, p: Process) -> bool:
    """Whether a sleepers' heap entry still stands (the process sleeps until then)."""
    return p.state is RunState.SLEEPING and p.wake_at == wake_at


def _ends_with_members(p: Process) -> bool:
    """Whether `p` has ended (or its first thread has) and waits for its other threads."""
    return (not isinstance(p, ThreadEntry) and bool(p.members)
            and (p.exit_status is not None or p.thread_exit is not None))


class Scheduler:
    """Runs a machine's threads on its computations: a process's first thread is its table
    entry, its others are `ThreadEntry`s in no table but run the same way, so two threads of
    one process run at once on two computations. `finish` is called once for each process
    that ends (after its last thread), `finish_member` for each other thread that ends;
    both with the lock held and no computation running it."""

    def __init__(self, name: str, computations: int, *, quantum: int, exact: bool, growth: int,
                 finish: Callable[[Process], None],
                 before_run: Callable[[Process], None] | None = None,
                 fault: Callable[[Process, Stop], bool] | None = None,
                 finish_member: Callable[[ThreadEntry], None] | None = None) -> None:
        self.name = name
        self.quantum = quantum  # the base quantum: microseconds, or instructions when exact
        self.exact = exact
        self.growth = growth  # a busy process's slice grows up to this many base quanta
        self.finish = finish
        self.finish_member = finish_member
        # Called by a process's computation just before each run, lock not held (the kernel
        # delivers signals there); register edits are applied before it.
        self.before_run = before_run
        # Called with the lock held when a run ends in a fault the CPU raised: True when the
        # kernel gave it to the process's handler (it runs on), False to end the process.
        self.fault = fault
        # The machine's lock: guards the table, the run queue, the sleepers, every entry's
        # state fields and the machine's counters. `cond` is notified on every state change.
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.table: dict[int, Process] = {}  # the process table, by pid; lock
        # Called when a process starts, ends, arrives or leaves, or the machine is cordoned
        # (set by whoever balances the machine, so it need not poll). It must not block: it
        # may run with the lock held.
        self.on_change: Callable[[], None] | None = None
        self.stopped = False  # lock; once set, never cleared
        self._runq: deque[Process] = deque()  # RUNNABLE processes in turn order; lock
        # When each process in `_runq` was queued, by id (monotonic; lock): a woken sleeper
        # does not go before one that has waited a base quantum already.
        self._queued_at: dict[int, float] = {}
        self._sleepers: list[tuple[float, int, Process]] = []  # heap by wake time; lock
        self._seq = itertools.count()  # breaks ties between equal wake times
        self.computations = [Computation(i) for i in range(computations)]
        self._held: dict[int, Process] = {}  # computation index -> the entry it runs; lock
        self.clock: threading.Thread | None = None

    def start(self) -> None:
        """Start the computations' threads and, for timed quanta, the clock."""
        for comp in self.computations:
            comp.thread = threading.Thread(target=self._run_computation, args=(comp,),
                                           name=f"{self.name}-computation-{comp.index}",
                                           daemon=True)
            comp.thread.start()
        if not self.exact:  # exact quanta are counted, not timed: no clock cuts them
            self.clock = threading.Thread(target=self._run_clock, name=f"{self.name}-clock",
                                          daemon=True)
            self.clock.start()

    # --- the table -----------------------------------------------------------------------

    def get(self, pid: int) -> Process:
        """The process `pid` of the table (lock held)."""
        p = self.table.get(pid)
        if p is None:
            raise UnknownProcessError(f"no process {pid} on machine {self.name}")
        return p

    def check_running(self) -> None:
        if self.stopped:
            raise MachineStoppedError(f"machine {self.name} has stopped")

    def changed(self) -> None:
        """Tell whoever balances the machine that its processes changed."""
        callback = self.on_change
        if callback is not None:
            with contextlib.suppress(Exception):  # a balancer that went away changes nothing
                callback()

    def add(self, p: Process) -> None:
        """A loaded or arrived process joins the table and runs (or sleeps on)."""
        with self.cond:
            self.table[p.pid] = p
            self._resume(p)
            for t in p.members.values():  # the threads it arrived with
                self._resume(t)
            self._preempt_for(p)

    def add_member(self, t: ThreadEntry) -> None:
        """A new thread of a process already here runs (its process lists it in `members`)."""
        with self.cond:
            t.leader.members[t.tid] = t
            self._make_runnable(t)
            self._preempt_for(t)

    def remove(self, p: Process) -> None:
        """An ended (reaped) or frozen (moved away) process leaves the table."""
        with self.cond:
            assert p.state in (RunState.ZOMBIE, RunState.FROZEN), p.state
            del self.table[p.pid]
            self.cond.notify_all()  # a kill or a wait for it learns it is gone

    # --- what a process, or the machine, does to a process ---------------------------------

    def exit(self, p: Process, status: int, reason: str) -> None:
        """End the process (the first reason given wins) — every thread of it, whichever
        thread `p` is. ZOMBIE means ended *and* released: a process a computation holds is
        released by that computation once its CPU has stopped, so nobody sees a zombie whose
        resources are still in use; a process ends after its last other thread."""
        with self.cond:
            if isinstance(p, ThreadEntry):
                p = p.leader
            if p.exit_status is None:  # (set first: its last other thread's end must not
                p.exit_status, p.exit_reason = status, reason  # end it as its exit call did)
            for t in list(p.members.values()):
                self._exit_one(t, status, reason)
                if t.state.on_cpu:
                    t.context.preempt()
            self._exit_one(p, status, reason)

    def exit_thread(self, p: Process, status: int, reason: str) -> None:
        """End one thread (its exit call). The first thread of a process whose others run
        on waits for them, and the process ends with its status after the last."""
        with self.cond:
            if not isinstance(p, ThreadEntry) and p.members:
                p.thread_exit = status
                self.block(p)
                return
            self._exit_one(p, status, reason)

    def _exit_one(self, p: Process, status: int, reason: str) -> None:
        with self.cond:
            if p.exit_status is None:
                p.exit_status = status
                p.exit_reason = reason
            if p.state.on_cpu:
                if p.state is not RunState.EXITING:
                    _set_state(p, RunState.EXITING)
                return
            if p.state is RunState.ZOMBIE:
                return
            if p.state is RunState.RUNNABLE:
                self._runq.remove(p)
                self._queued_at.pop(id(p), None)
            self._end(p)

    def kill(self, p: Process, status: int, reason: str) -> None:
        """End the process from outside: one on a computation has its quantum cut short."""
        with self.cond:
            self.exit(p, status, reason)
            if p.state.on_cpu:
                p.context.preempt()

    def sleep(self, p: Process, seconds: float) -> None:
        """The running process sleeps once its quantum ends (its own system call asks)."""
        with self.cond:
            if p.state is RunState.EXITING:
                return  # it ended first: the sleep never begins
            if p.state is RunState.RUNNING:
                _set_state(p, RunState.FALLING_ASLEEP)
            p.wake_at = time.monotonic() + seconds  # a FREEZING one freezes asleep

    def block(self, p: Process) -> None:
        """The running process waits, with no deadline, until `wake` (input to arrive, a
        signal). It sleeps like a sleeper, so it freezes and migrates like one."""
        self.sleep(p, math.inf)

    def wake(self, p: Process, members: bool = True) -> None:
        """A sleeping or blocked process runs again now (its wait ended early). One that is
        frozen asleep wakes as soon as it is thawed; one not asleep is left alone, and so is
        one that waits for its other threads to end. Input, room for output, a signal, a
        pipe's change are the process's, not one thread's: its other threads blocked without
        a deadline wake too (`members`), and each issues its call again, which waits again
        if what it waits for is still not there."""
        with self.cond:
            if members and not isinstance(p, ThreadEntry):
                for t in list(p.members.values()):
                    if t.wake_at == math.inf or t.sleep_left == math.inf:
                        self.wake(t)
            if _ends_with_members(p):
                return
            if p.state is RunState.SLEEPING:
                self._make_runnable(p, front=True)
            elif p.wake_at is not None:  # FALLING_ASLEEP, or FREEZING asleep
                p.wake_at = time.monotonic()
            elif p.state is RunState.FROZEN and p.sleep_left is not None:
                p.sleep_left = 0.0

    @staticmethod
    def between_runs(p: Process) -> None:
        """Apply the register edits the kernel asked for while the process ran (by its
        computation, with the CPU stopped)."""
        if p.register_edits:
            cpu = p.context
            state = cpu.save()
            for edit in p.register_edits:
                state = edit(state)
            p.register_edits.clear()
            cpu.load(state)

    def freeze(self, p: Process, timeout: float) -> None:
        """Stop the process at an instruction boundary for the migration asking, which owns it
        from then on (until `thaw`, or it leaves the table): every thread of it, each at an
        instruction boundary or a system-call stop (a thread waiting in a call is described
        by its registers, which issue the call again). ProcessStateError when another
        migration owns it, it has ended, its engine cannot move its threads, or a thread did
        not let go within `timeout` (then none stays frozen)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            if p.members:
                self._may_move_threads(p)
            self._freeze_entry(p, p, deadline, timeout)
            frozen: list[Process] = [p]
            try:
                # Rescanning: a thread still running may make another while its others stop.
                while pending := [t for t in p.members.values() if t not in frozen]:
                    for t in pending:
                        self._freeze_entry(p, t, deadline, timeout)
                        frozen.append(t)
                self._may_move_threads(p)  # its first thread may have exited meanwhile
            except BaseException:
                for entry in frozen:
                    if entry.state is RunState.FROZEN:
                        self._resume(entry)
                raise

    @staticmethod
    def _may_move_threads(p: Process) -> None:
        """Refuse, by name, a move of a process with threads that cannot be made yet."""
        if not p.members:
            return
        threads = f"process {p.pid} has {len(p.members) + 1} threads"
        if not getattr(p.context, "moves_threads", False):
            raise ProcessStateError(
                f"{threads}: its engine cannot move a process with more than one thread "
                "(it runs on where it is)")
        if p.thread_exit is not None or p.exit_status is not None:
            raise ProcessStateError(
                f"{threads}: its first thread has ended and it waits for the others; a "
                "process with more than one thread cannot move yet in that state (it runs "
                "on where it is)")

    def _freeze_entry(self, p: Process, e: Process, deadline: float, timeout: float) -> None:
        """Freeze one run entry `e` of process `p` (its first thread or another); lock held."""
        if e.state.migrating:
            raise ProcessStateError(f"process {p.pid} is already migrating")
        if e.state in (RunState.EXITING, RunState.ZOMBIE):
            raise ProcessStateError(f"process {p.pid} has finished ({e.exit_reason})")
        if e.state.on_cpu:
            # Its computation stops it at an instruction boundary, ending the quantum
            # early, and leaves it FROZEN; until then it may still sleep or end.
            _set_state(e, RunState.FREEZING)
            e.context.preempt()
            while e.state.on_cpu and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            if e.state is RunState.FREEZING:
                asleep = e.wake_at is not None
                _set_state(e, RunState.FALLING_ASLEEP if asleep else RunState.RUNNING)
                raise ProcessStateError(f"process {p.pid} could not be frozen in {timeout} s")
            if e.state is not RunState.FROZEN:
                raise ProcessStateError(f"process {p.pid} finished while freezing "
                                        f"({e.exit_reason})")
        elif e.state is RunState.RUNNABLE:
            self._runq.remove(e)
            self._queued_at.pop(id(e), None)
            _set_state(e, RunState.FROZEN)
        elif e.state is RunState.SLEEPING:
            self._freeze_asleep(e)

    def thaw(self, p: Process) -> None:
        """A frozen process goes on where it was, every thread of it; the migration lets go
        of it."""
        with self.cond:
            for entry in (p, *p.members.values()):
                if entry.state is RunState.FROZEN:
                    self._resume(entry)

    def halt(self) -> bool:
        """Stop the computations and the clock (the quanta running end first); False when
        the machine had stopped already."""
        with self.cond:
            if self.stopped:
                return False
            self.stopped = True
            self.cond.notify_all()
        for comp in self.computations:
            if comp.thread is not None:
                comp.thread.join(timeout=30)
        return True

    def end_all(self, reason: str) -> list[Process]:
        """After `halt`: end every process left, as a SIGKILL would; the entries, which leave
        the table. (One whose computation did not stop in time is still running: it is left
        to that computation.)"""
        with self.cond:
            entries = [p for p in self.table.values() if not p.state.on_cpu]
            for p in entries:
                self.exit(p, 128 + 9, reason)
            self.table.clear()
            self._runq.clear()
            self._queued_at.clear()
            self._sleepers.clear()
            return entries

    # --- internal moves (lock held) ------------------------------------------------------

    def _end(self, p: Process) -> None:
        if isinstance(p, ThreadEntry):
            self._end_member(p)
            return
        if p.members:  # its threads hold its space: it ends after the last of them
            for t in list(p.members.values()):  # (one made while it was ending, too)
                self._exit_one(t, p.exit_status if p.exit_status is not None else 128 + 9,
                               p.exit_reason)
                if t.state.on_cpu:
                    t.context.preempt()
            if p.state is RunState.ZOMBIE:  # the last one's end ended it
                return
            if not p.members:  # they all ended at once: so does it
                p.wake_at = None
                _set_state(p, RunState.ZOMBIE)
                self.finish(p)
                self.cond.notify_all()
                return
            p.wake_at = math.inf  # (an earlier sleep's entry among the sleepers lapses)
            if p.state is not RunState.SLEEPING:
                self._fall_asleep(p)
            return
        p.wake_at = None
        _set_state(p, RunState.ZOMBIE)
        self.finish(p)
        self.cond.notify_all()

    def _end_member(self, t: ThreadEntry) -> None:
        t.wake_at = None
        _set_state(t, RunState.ZOMBIE)
        leader = t.leader
        leader.members.pop(t.tid, None)
        if self.finish_member is not None:
            self.finish_member(t)
        if not leader.members and _ends_with_members_done(leader):
            if leader.exit_status is None:  # its first thread had called exit
                leader.exit_status = leader.thread_exit
                leader.exit_reason = ""
            self._end(leader)
        self.cond.notify_all()

    def _make_runnable(self, p: Process, front: bool = False) -> None:
        p.wake_at = None
        _set_state(p, RunState.RUNNABLE)
        now = time.monotonic()
        # A process that slept used little processor: it runs next — unless the head has
        # waited a base quantum already. Else a thread that sleeps a few microseconds at a
        # time and wakes on a free computation (Go's stop-the-world waits so for the thread
        # it preempts) would go first forever, and the thread it waits for never run.
        head = self._runq[0] if self._runq else None
        if front and not (head is not None and not self.exact and now - self._queued_at.get(
                id(head), now) >= self.quantum / 1e6):
            self._runq.appendleft(p)
        else:
            self._runq.append(p)
        self._queued_at[id(p)] = now
        self.cond.notify_all()

    def _fall_asleep(self, p: Process) -> None:
        assert p.wake_at is not None
        _set_state(p, RunState.SLEEPING)
        heapq.heappush(self._sleepers, (p.wake_at, next(self._seq), p))
        self.cond.notify_all()

    def _freeze_asleep(self, p: Process) -> None:
        p.sleep_left = max(0.0, (p.wake_at or 0.0) - time.monotonic())
        p.wake_at = None
        _set_state(p, RunState.FROZEN)

    def _resume(self, p: Process) -> None:
        """A frozen (or arriving) process goes on: asleep for what was left of its sleep,
        else runnable."""
        if p.sleep_left is not None:
            p.wake_at = time.monotonic() + p.sleep_left
            p.sleep_left = None
            self._fall_asleep(p)
        else:
            self._make_runnable(p)

    def _preempt_for(self, p: Process) -> None:
        """A process became runnable from outside (started, arrived): if no computation is
        free, cut short the quantum that has run longest past the base slice, so the newcomer
        waits about one base slice at most."""
        if self.exact or p.state is not RunState.RUNNABLE:
            return
        if any(c.state is ComputationState.IDLE for c in self.computations):
            return
        ran, running = self._longest_slice()
        if running is not None and ran >= self.quantum / 1e6:
            running.context.preempt()

    def _longest_slice(self) -> tuple[float, Process | None]:
        """How long the slice that has run longest has run, and its process."""
        now = time.monotonic()
        longest: tuple[float, Process | None] = (0.0, None)
        for comp in self.computations:
            running = self._held.get(comp.index) if comp.pid is not None else None
            if running is not None and running.state.on_cpu and \
                    now - comp.run_started > longest[0]:
                longest = (now - comp.run_started, running)
        return longest

    # --- the clock and the computations --------------------------------------------------

    def _run_clock(self) -> None:
        """The machine's clock: wakes a sleeper whose time is up while every computation is
        busy, by cutting short the slice that has run longest once it has had the base
        quantum. (An idle computation wakes sleepers itself, in `_next`.) The woken process
        goes to the front of the run queue, so a long slice is not also a long sleep."""
        base = self.quantum / 1e6
        with self.cond:
            while not self.stopped:
                while self._sleepers and not _asleep(*self._sleepers[0]):
                    heapq.heappop(self._sleepers)  # woken or moved on meanwhile
                if not self._sleepers:
                    self.cond.wait()
                    continue
                late = time.monotonic() - self._sleepers[0][0]
                if late < 0:
                    self.cond.wait(min(-late, 60.0))  # a blocked one: until inf
                    continue
                if any(c.state is ComputationState.IDLE for c in self.computations):
                    self.cond.wait(base)  # that computation takes it
                    continue
                ran, running = self._longest_slice()
                if running is not None and ran >= base:
                    running.context.preempt()
                    self.cond.wait(base)  # the slice ends; `_next` wakes the sleeper
                else:
                    self.cond.wait(max(0.001, base - ran))

    def _next(self, comp: Computation) -> Process | None:
        """Wait for a runnable process (waking sleepers on time); None when stopping."""
        with self.cond:
            while not self.stopped:
                now = time.monotonic()
                while self._sleepers and self._sleepers[0][0] <= now:
                    entry = heapq.heappop(self._sleepers)
                    if _asleep(*entry):
                        self._make_runnable(entry[2], front=True)
                if self._runq:
                    p = self._runq.popleft()
                    self._queued_at.pop(id(p), None)
                    _set_state(p, RunState.RUNNING)
                    comp.pid, comp.state = p.pid, ComputationState.RUNNING
                    self._held[comp.index] = p
                    comp.run_started = now
                    return p
                # A blocked process sleeps until inf, which Condition.wait cannot take.
                timeout = (min(self._sleepers[0][0] - now, 60.0) if self._sleepers
                           else None)
                self.cond.wait(timeout)
            return None

    def _run_computation(self, comp: Computation) -> None:
        while True:
            p = self._next(comp)
            if p is None:
                comp.state = ComputationState.STOPPED
                return
            cpu = p.context
            wall = time.monotonic()
            cpu_time = time.thread_time()
            quantum = self.quantum if self.exact else (p.quantum or self.quantum)
            try:
                self.between_runs(p)
                if self.before_run is not None:
                    self.before_run(p)
                    self.between_runs(p)
                # A signal's default action may have ended (or stopped) it before it ran.
                stop = Stop(StopKind.SYSCALL) if p.state in (
                    RunState.EXITING, RunState.FALLING_ASLEEP) else cpu.run(quantum)
                self.between_runs(p)  # before a freeze or a snapshot can read the registers
                stop = self._run_on(p, stop, quantum, wall)
            except EngineError as exc:
                stop = Stop(StopKind.FAULT, 0, 0, f"engine failure: {exc}")
            # The computation's own CPU time, plus what a guest host process used (native).
            cpu_time = time.thread_time() - cpu_time + cpu.last_run_cpu_seconds
            wall = time.monotonic() - wall
            with self.cond:
                comp.busy_seconds += wall
                comp.quanta += 1
                comp.pid, comp.state = None, ComputationState.IDLE
                self._held.pop(comp.index, None)
                p.accounting.cpu_seconds += cpu_time
                p.accounting.quanta += 1
                self._grow_slice(p, stop, quantum, wall)
                if stop.kind is StopKind.FAULT and not (
                        stop.code and self.fault is not None and self.fault(p, stop)):
                    self.exit(p, 128 + (stop.signal or 11),
                              f"{stop.detail} at {stop.address:#x}" if stop.address
                              else stop.detail)
                self._let_go(p)

    def _run_on(self, p: Process, stop: Stop, quantum: int, began: float) -> Stop:
        """A stop only for a register edit (`Process.runs_on`: rt_sigreturn) does not end
        the quantum: the process runs on for what is left of it, once a pending signal has
        had its chance. Not in exact quanta, which count instructions per run."""
        while p.runs_on and stop.kind is StopKind.SYSCALL and not self.exact \
                and p.state is RunState.RUNNING:
            p.runs_on = False
            left = quantum - int((time.monotonic() - began) * 1e6)
            if left <= 0:
                break
            if self.before_run is not None:
                self.before_run(p)
                self.between_runs(p)
                if p.state is not RunState.RUNNING:  # a signal ended or stopped it
                    return Stop(StopKind.SYSCALL)
            with self.cond:  # the run before: a guest host process's CPU time (native)
                p.accounting.cpu_seconds += p.context.last_run_cpu_seconds
            stop = p.context.run(left)
            self.between_runs(p)
        p.runs_on = False
        return stop

    def _grow_slice(self, p: Process, stop: Stop, quantum: int, wall: float) -> None:
        """A process that used its whole slice gets one twice as long next time, up to
        `growth` times the base; one that blocks goes back to the base. Busy processes switch
        less often (each switch costs the machine's own work); newcomers do not wait for long
        slices (`_preempt_for`). A slice cut short (a preemption) earns nothing."""
        if not self.exact and stop.kind is StopKind.QUANTUM and wall >= quantum / 1e6:
            p.quantum = min(quantum * 2, self.quantum * self.growth)
        elif p.wake_at is not None:
            p.quantum = 0

    def _let_go(self, p: Process) -> None:
        """The quantum has ended: the process goes where its state says."""
        if p.state is RunState.FALLING_ASLEEP and p.thread_exit is not None and \
                not p.members and not isinstance(p, ThreadEntry):
            # Its first thread called exit and the others ended meanwhile: it ends now.
            _set_state(p, RunState.EXITING)
            if p.exit_status is None:
                p.exit_status = p.thread_exit
        if p.state is RunState.EXITING:
            self._end(p)
        elif p.state is RunState.FALLING_ASLEEP:
            self._fall_asleep(p)
        elif p.state is RunState.FREEZING:
            if p.wake_at is not None:
                self._freeze_asleep(p)
            else:
                _set_state(p, RunState.FROZEN)
            self.cond.notify_all()
        else:
            self._make_runnable(p)
