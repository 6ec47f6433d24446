"""The threads of a native guest: each thread of a Tender process is a host thread of the
guest's one host process, made by a clone injected at the trampoline and traced from birth
(PTRACE_O_TRACECLONE), with a Host and a NativeCpu of its own, so that the machine runs it as
it runs any entry: its own quanta, stops and system calls, on any computation. A thread is
made at the guest's clone, or, for a process with threads arriving in a migration, from the
first thread of its new host process before any thread runs (each then gets the registers
its image carries): off a computation every thread waits in a ptrace stop, so a process
with threads moves as one unit.

What the host threads share is the host process's: the address space (so the host map and
the trampoline are one, kept in every Host of the process), the descriptors, the signal
actions and the ITIMER_PROF timer (so a process with threads has its quanta ended thread by
thread through the machine's timer thread, `thread_quanta`). Signals for one thread go
through a pidfd of that thread (PIDFD_THREAD). A thread that ends has its exit injected; the
first thread's end (a kill of the whole host process) reaps the others first.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Final

from tender_ray.abi.linux import SYS_EXIT, Signal
from tender_ray.engines.native.libc import (
    PTRACE_O_EXITKILL,
    PTRACE_O_TRACECLONE,
    PTRACE_O_TRACESECCOMP,
    PTRACE_SETOPTIONS,
    host_cpu_seconds,
    host_thread_cpu_seconds,
    ptrace,
)
from tender_ray.engines.native.tracer import GuestGone, Host, Tracer, describe_status
from tender_ray.errors import EngineError

if TYPE_CHECKING:
    from tender_ray.engines.native.engine import NativeCpu

SYS_CLONE: Final = 56
PIDFD_THREAD: Final = os.O_EXCL  # pidfd_open: a pidfd of one thread (Linux 6.9)
# A guest's thread in its host process: the address space, descriptors, signal actions and
# System V undo list shared, as CLONE_THREAD needs (the guest's own flags are the machine's).
HOST_THREAD_FLAGS: Final = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000


def spawn(cpu: NativeCpu) -> NativeCpu:
    """A context for a new thread of the guest `cpu` runs: a host thread made in its host
    process, stopped until its registers are loaded and it runs. The machine's clone
    handler calls it, which the tracer thread runs at the guest's call; a machine making
    the threads of an arriving process calls it from its own thread, with the first
    thread's host process (a prepared stub) stopped: the tracer makes each in turn."""
    tracer = cpu._tracer
    if threading.current_thread() is not tracer.thread:
        made = tracer.call(lambda: _spawn_stopped(cpu))
        assert isinstance(made, type(cpu))
        return made
    return _spawn(cpu)


def _spawn_stopped(cpu: NativeCpu) -> NativeCpu:
    """`spawn` for a guest that is not running a quantum (tracer thread): its host process
    (or the stub prepared for it) waits in a stop, where a clone can be injected."""
    host = cpu._host
    if host is not None and (host.pid in cpu._tracer.running or host.leader is not None):
        raise EngineError("a host thread is made from a stopped guest's first thread only")
    if host is None or not host.alive:
        cpu.tracer_discard()
        cpu._t_prepare()
        host = cpu._host
    assert host is not None
    # The stub's wide filter lets reads and writes on low descriptors reach the (empty)
    # host ones: the first thread's filter that lets nothing pass goes on before any
    # thread is made (each inherits it), since a made thread may run before the first.
    cpu.direct.retire(host)
    if cpu.space is not None:
        cpu.direct.before_run(host, cpu.space, cpu._t_sync_range)
    return _spawn(cpu)


def _spawn(cpu: NativeCpu) -> NativeCpu:
    tracer, host = cpu._tracer, cpu._host
    if host is None or not host.alive:
        raise EngineError("native CPU has no running guest to make a thread in")
    cpu.direct.retire(host)  # no direct files for a guest of several threads
    thread = _clone(tracer, host)
    context = type(cpu)(cpu.memory, replay=cpu._replay)
    context.direct.of_a_thread = True
    # Its host is there before the stub it asked the tracer for is made (this thread makes
    # it, after this call), so none is.
    context._host = thread
    tracer.owners[thread.pid] = context
    return context


def _clone(tracer: Tracer, host: Host) -> Host:
    ptrace(PTRACE_SETOPTIONS, host.pid, 0,
           PTRACE_O_EXITKILL | PTRACE_O_TRACESECCOMP | PTRACE_O_TRACECLONE)
    # (A signal pending — a quantum's end — makes clone answer -ERESTARTNOINTR, which the
    # kernel turns into the same call issued again: `inject` lets it run to its end.)
    tid = tracer.inject(host, SYS_CLONE, HOST_THREAD_FLAGS, 0, 0, 0, 0)
    if tid < 0:
        raise EngineError(f"clone of a host thread failed: {os.strerror(-tid)}")
    first = host.leader or host
    thread = Host(tid)
    thread.leader = first
    thread.maps = first.maps  # one address space
    thread.trampoline = first.trampoline
    thread.vdso_text = first.vdso_text
    first.threads.append(thread)
    status = tracer.wait(thread)  # its first stop (SIGSTOP, from PTRACE_O_TRACECLONE)
    if not os.WIFSTOPPED(status):
        raise EngineError(f"the new host thread {tid} did not stop for its tracer "
                          f"({describe_status(status)[1]})")
    thread.pidfd = os.pidfd_open(tid, PIDFD_THREAD)  # signals to it alone
    thread.get_regs()
    thread.get_fp()
    return thread


def end(tracer: Tracer, thread: Host) -> None:
    """End one host thread of a guest (its exit injected: a SIGKILL would end them all) and
    reap it (tracer thread)."""
    tracer.owners.pop(thread.pid, None)
    tracer.running.pop(thread.pid, None)
    first = thread.leader or thread
    if thread in first.threads:
        first.threads.remove(thread)
    if thread.alive:
        with contextlib.suppress(GuestGone, OSError, EngineError):
            tracer.inject(thread, SYS_EXIT, 0)
        tracer.reap_lost(thread)


def discard(tracer: Tracer, host: Host) -> None:
    """Let go of a guest's host thread: the whole host process for its first thread, that
    thread alone for another."""
    if host.leader is not None:
        end(tracer, host)
    else:
        tracer.kill(host)


def lost(host: Host | None) -> int | None:
    """The end status of a guest's thread whose host process died (killed as a whole):
    such a thread is lost, not given a fresh host process. None otherwise."""
    if host is None or host.leader is None or host.alive:
        return None
    return host.status if host.status is not None else Signal.SIGKILL


def alone(host: Host) -> bool:
    """Whether the guest has one thread (its host process can be replaced by another)."""
    return not thread_quanta(host)


def thread_quanta(host: Host) -> bool:
    """Whether the guest's quanta end through the timer thread, thread by thread (the
    kernel's ITIMER_PROF is the whole host process's)."""
    return host.leader is not None or bool(host.threads)


def cpu_seconds(host: Host) -> float:
    """The CPU time the guest's host thread has used: the host process's for a guest with
    one thread, each thread's own clock for one with several."""
    if thread_quanta(host):
        return host_thread_cpu_seconds(host.pid)
    return host_cpu_seconds(host.pid)


def share_trampoline(host: Host) -> None:
    """The trampoline of `host` moved: it moved for every thread of its host process."""
    first = host.leader or host
    for other in (first, *first.threads):
        other.trampoline = host.trampoline
