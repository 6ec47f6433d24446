"""Process groups and sessions, and signals between the processes of a tree: kill of a pid,
a group or the whole tree, tkill/tgkill to one thread, and job control — a stop signal holds
every thread of a process between two runs until SIGCONT, and its parent learns of each
stop and continue (`wait4`'s WUNTRACED/WCONTINUED, SIGCHLD unless SA_NOCLDSTOP)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from tender_ray.abi.cpu_state import SyscallOutcome
from tender_ray.abi.linux import Errno, Signal
from tender_ray.kernel import signals
from tender_ray.kernel.process_tree import (
    CLD_CONTINUED,
    CLD_STOPPED,
    SA_NOCLDSTOP,
    STOP_SIGNALS,
    WAIT_CALLS,
    Machinery,
    TreeNode,
    ids,
    node,
)
from tender_ray.resources.process import Process, RunState

if TYPE_CHECKING:
    from tender_ray.kernel.scheduler import Scheduler
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

__all__ = ["STOP_SIGNALS", "getpgid", "getsid", "held", "kill", "kill_thread", "send",
           "setpgid", "setsid", "stop"]


# --- process groups and sessions ------------------------------------------------------------

def _member(sc: SystemCalls, p: Process, pid: int) -> Process | None:
    """`p` itself (pid 0 or its own), or a process of its tree on this machine."""
    if pid in (0, p.pid):
        return p
    found = cast(Machinery, sc.services).scheduler.table.get(pid)
    tree = getattr(found, "tree", None)
    return found if isinstance(tree, TreeNode) and found is not None and (
        tree.root == node(p).root) else None


def getpgid(sc: SystemCalls, p: Process, pid: int) -> SyscallOutcome:
    who = _member(sc, p, pid)
    return SyscallOutcome(-Errno.ESRCH if who is None else ids(who)[0])


def getsid(sc: SystemCalls, p: Process, pid: int) -> SyscallOutcome:
    who = _member(sc, p, pid)
    return SyscallOutcome(-Errno.ESRCH if who is None else ids(who)[1])


def setpgid(sc: SystemCalls, p: Process, pid: int, pgid: int) -> SyscallOutcome:
    """Itself or a child of its session into a group of its session (a new one: its pid)."""
    if pgid < 0:
        return SyscallOutcome(-Errno.EINVAL)
    who = _member(sc, p, pid)
    if who is None or (who is not p and node(who).ppid != p.pid):
        return SyscallOutcome(-Errno.ESRCH)
    session = ids(who)[1]
    if session == who.pid or (who is not p and session != ids(p)[1]):
        return SyscallOutcome(-Errno.EPERM)  # a session leader, or a child elsewhere
    target = pgid or who.pid
    if target != who.pid and not any(
            ids(q) == (target, session) for q in
            cast(Machinery, sc.services).scheduler.table.values()):
        return SyscallOutcome(-Errno.EPERM)  # no such group in its session
    node(who).pgid = target
    return SyscallOutcome(0)


def setsid(sc: SystemCalls, p: Process) -> SyscallOutcome:
    """A new session and group led by `p` (EPERM for a group leader, as on Linux)."""
    if ids(p)[0] == p.pid:
        return SyscallOutcome(-Errno.EPERM)
    tree = node(p)
    tree.pgid = tree.sid = p.pid
    return SyscallOutcome(p.pid)


# --- signals between the processes of a tree, and job control ---------------------------------

def _notify_parent(sched: Scheduler, p: Process, how: int, sig: int) -> None:
    """`p` stopped or continued (lock held): its parent on this machine has it to report
    (WUNTRACED, WCONTINUED), is woken if it waits, and gets SIGCHLD unless it set
    SA_NOCLDSTOP."""
    tree = getattr(p, "tree", None)
    parent = sched.table.get(tree.ppid) if isinstance(tree, TreeNode) and tree.ppid else None
    if parent is None or parent.state is RunState.ZOMBIE or not isinstance(parent.tree,
                                                                           TreeNode):
        return
    record = parent.tree.children.get(p.pid)
    if record is None or record.ended is not None:
        return
    record.changed = (how, sig)
    state = signals.of(parent)
    waiting = state.wait is not None and state.wait.kind == "restart" \
        and state.wait.nr in WAIT_CALLS
    if waiting:
        state.wait = None  # it looks again and finds the change (or waits on)
    sent = not state.actions[Signal.SIGCHLD - 1].flags & SA_NOCLDSTOP and signals.queue(
        parent, signals.SigInfo(Signal.SIGCHLD, how, p.pid))
    if sent and parent.state.on_cpu:
        parent.context.preempt()
    if sent or waiting:
        sched.wake(parent)


def stop(sched: Scheduler, p: Process, sig: int) -> None:
    """A stop signal's default action (lock held): `p` — every thread of it — runs no more
    until SIGCONT (`held`); its parent learns of it."""
    tree = node(p)
    if tree.stopped:
        return
    tree.stopped = sig
    for e in (p, *p.members.values()):
        if e.state.on_cpu:
            e.context.preempt()  # it stops at the end of this quantum (`held`)
    _notify_parent(sched, p, CLD_STOPPED, sig)


def held(sched: Scheduler, p: Process) -> bool:
    """Between two runs of a stopped process (lock held): True, and it waits for SIGCONT,
    unless SIGKILL is pending (which ends it)."""
    tree = getattr(p, "tree", None)
    if not isinstance(tree, TreeNode) or not tree.stopped \
            or Signal.SIGKILL in signals.of(p).pending:
        return False
    if not any(e is p for e in tree.held):
        tree.held.append(p)
    sched.block(p)
    return True


def _resume(sched: Scheduler, p: Process) -> None:
    """SIGCONT (lock held): a stopped process goes on — one held between runs runs again,
    one that was in a wait of its own goes on waiting — and its parent learns of it."""
    tree = getattr(p, "tree", None)
    if not isinstance(tree, TreeNode) or not tree.stopped:
        return
    tree.stopped = 0
    for e in tree.held:
        sched.wake(e, members=False)
    tree.held.clear()
    _notify_parent(sched, p, CLD_CONTINUED, Signal.SIGCONT)


def send(sched: Scheduler, target: Process, sig: int, sender: int,
         code: int = signals.SI_USER, thread: int = 0) -> None:
    """Generate `sig` for `target` as Linux does (lock held): SIGCONT continues a stopped
    process and discards its pending stops, a stop signal discards a pending SIGCONT and,
    by default and not blocked, stops it at once; any other is queued, and wakes (or cuts
    short the quantum of) a process that takes it — or only its thread `thread` (tkill,
    tgkill), which alone takes it."""
    state = signals.of(target)
    if sig == Signal.SIGCONT:
        for s in STOP_SIGNALS:
            state.pending.pop(s, None)
        _resume(sched, target)
    elif sig in STOP_SIGNALS:
        state.pending.pop(Signal.SIGCONT, None)
        if state.actions[sig - 1].handler == signals.SIG_DFL:
            if sig == Signal.SIGSTOP or not state.blocked & signals.bit(sig):
                stop(sched, target, sig)
            else:  # stops it when unblocked (`Machine._before_run`)
                state.pending.setdefault(sig, signals.SigInfo(sig, code, sender))
            return
    was = state.pending.get(sig)
    if was is not None and was.thread and was.thread != target.pid \
            and was.thread not in target.members:
        del state.pending[sig]  # sent to a thread that has ended: nobody will take it
    if signals.queue(target, signals.SigInfo(sig, code, sender, thread=thread)):
        entries = [e for e in (target, *target.members.values())
                   if not thread or signals.tid_of(e) == thread]
        if thread:
            for e in entries:
                sched.wake(e, members=False)
        else:
            sched.wake(target)
        for e in entries:
            if e.state.on_cpu:
                e.context.preempt()


def _tree(sched: Scheduler, p: Process) -> list[Process]:
    """The processes of `p`'s tree on this machine, itself included (zombies too)."""
    mine = node(p)
    return [q for q in sched.table.values() if q.pid == p.pid or (
        isinstance(q.tree, TreeNode) and q.tree.root == (mine.root or p.pid))]


def _targets(sched: Scheduler, p: Process, pid: int) -> list[Process]:
    """The processes kill(pid) reaches from `p`: a process of its tree on this machine, the
    members of a process group (0: its own), or (-1) every process of its tree but itself —
    zombies not yet waited for included (a kill of one answers 0 and does nothing, as on
    Linux)."""
    tree_of = _tree(sched, p)
    if pid > 0:
        return [q for q in tree_of if q.pid == pid]
    if pid == -1:
        return [q for q in tree_of if q.pid != p.pid]
    group = ids(p)[0] if pid == 0 else -pid
    return [q for q in tree_of if ids(q)[0] == group]


def kill(sc: SystemCalls, p: Process, pid: int, sig: int, code: int = signals.SI_USER
         ) -> SyscallOutcome:
    """kill(2) within a tree: ESRCH when nothing is reached (a pid outside its tree, or
    elsewhere: every process is its user's, so EPERM never arises), EINVAL for a bad
    signal; 0 checks only."""
    if not 0 <= sig <= signals.NSIG:
        return SyscallOutcome(-Errno.EINVAL)
    if pid == -(2**31):
        return SyscallOutcome(-Errno.ESRCH)  # INT_MIN: no such group, as on Linux
    sched = cast(Machinery, sc.services).scheduler
    with sched.lock:
        targets = _targets(sched, p, pid)
        if not targets:
            return SyscallOutcome(-Errno.ESRCH)
        if sig:
            for q in targets:
                if q.state is not RunState.ZOMBIE:
                    send(sched, q, sig, p.pid, code)
    # One to itself is delivered as the call returns (a stop holds it there); so is the
    # SIGCHLD of a child it stopped or continued — on Linux the child stops after the call,
    # and the parent's wait for it returns with the handler run.
    return SyscallOutcome(0, stop=bool(sig) and (
        any(q.pid == p.pid for q in targets) or signals.of(p).deliverable() != 0))


def kill_thread(sc: SystemCalls, p: Process, tgid: int, tid: int, sig: int
                ) -> SyscallOutcome:
    """tkill (`tgid` 0) and tgkill: a signal that thread `tid` — of itself, or of another
    process of its tree — alone takes (a stop or SIGCONT is its whole process's, as on
    Linux); ESRCH when no such thread is there (or it is not of `tgid`)."""
    if tid <= 0 or tgid < 0 or not 0 <= sig <= signals.NSIG:
        return SyscallOutcome(-Errno.EINVAL)
    sched = cast(Machinery, sc.services).scheduler
    with sched.lock:
        owner = next((q for q in _tree(sched, p) if q.state is not RunState.ZOMBIE and (
            q.pid == tid or tid in q.members or tid in q.threads)), None)
        if owner is None or tgid not in (0, owner.pid):
            return SyscallOutcome(-Errno.ESRCH)
        if sig:
            send(sched, owner, sig, p.pid, signals.SI_TKILL, thread=tid)
    return SyscallOutcome(0, stop=bool(sig) and owner.pid == p.pid)
