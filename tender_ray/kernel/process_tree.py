"""Process trees on one machine: fork makes a Tender process of its own (its own pid, a copy
of the parent's space, the parent's open file descriptions shared, rax 0), and the parent
keeps a children table of zombie records — the status a child ended with — which `wait4`
and `waitid` collect; the child's end queues SIGCHLD and wakes a parent waiting for it.

A child's standard output and error go where its tree's root's go (the streams of the
process exec started), in the order they are written. A pipe between two processes wakes
the processes of the machine's trees that wait when data or an end comes or goes: a woken
process issues its call again (`restart_call`) and finds what it waits for, or waits again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from tender_ray.abi.cpu_state import CpuState, SyscallOutcome
from tender_ray.abi.linux import Errno, Signal
from tender_ray.errors import OutOfMemoryError, ProcessTreeError, TenderError
from tender_ray.kernel import address_space as vm
from tender_ray.kernel import signals
from tender_ray.kernel.syscalls.base import restart_call
from tender_ray.resources import event_file, open_file
from tender_ray.resources.manager import ResourceManager
from tender_ray.resources.open_file import FdTable, PipeBuffer, PipeEnd
from tender_ray.resources.process import Process, RunState, ThreadEntry
from tender_ray.resources.virtual_region import NOT_PRESENT
from tender_ray.resources.virtual_user_space import PROT_WRITE, VirtualUserSpace

if TYPE_CHECKING:
    from tender_ray.kernel.scheduler import Scheduler
    from tender_ray.kernel.syscalls.dispatch import SystemCalls

CLONE_VM, CLONE_VFORK, CLONE_SETTLS = 0x100, 0x4000, 0x80000
CLONE_PARENT_SETTID, CLONE_CHILD_CLEARTID, CLONE_CHILD_SETTID = 0x100000, 0x200000, 0x1000000
CSIGNAL = 0xFF
WNOHANG, WUNTRACED, WEXITED, WCONTINUED, WNOWAIT = 1, 2, 4, 8, 0x01000000
P_ALL, P_PID, P_PGID = 0, 1, 2
CLD_EXITED, CLD_KILLED, CLD_STOPPED, CLD_CONTINUED = 1, 2, 5, 6
SA_NOCLDSTOP = 1  # sigaction flag on SIGCHLD: no SIGCHLD when a child stops or continues
SA_NOCLDWAIT = 2  # sigaction flag on SIGCHLD: the children leave no zombie
# The signals whose default action stops a process (SIGSTOP's cannot be changed).
STOP_SIGNALS = frozenset({Signal.SIGSTOP, Signal.SIGTSTP, Signal.SIGTTIN, Signal.SIGTTOU})
WAIT_CALLS = (61, 247)  # wait4, waitid
ALL_SIGNALS = (1 << 64) - 1  # a blocked mask holding back every signal (SIGKILL still ends)
# Calls that wait on a pipe: read, write, poll, select, readv, writev, sendfile,
# epoll_wait, pselect6, ppoll, splice, tee, epoll_pwait, epoll_pwait2.
PIPE_CALLS = frozenset({0, 1, 7, 23, 19, 20, 40, 232, 270, 271, 275, 276, 281, 441})
KILLED = "killed by signal"  # how kernel/signals.py names an end by a signal


@dataclass
class Child:
    """A parent's record of one child: how it ended (None while it runs)."""

    pid: int
    ended: tuple[int, int] | None = None  # (CLD_EXITED, code) or (CLD_KILLED, signal)
    cpu_seconds: float = 0.0
    # A stop or a continue not yet reported by a wait: (CLD_STOPPED, signal) or
    # (CLD_CONTINUED, SIGCONT); the later replaces the earlier, as Linux keeps one.
    changed: tuple[int, int] | None = None


@dataclass
class TreeNode:
    """A process's place in its tree (`Process.tree`; None for a process exec started, whose
    parent is outside the machines and which has no child)."""

    ppid: int = 0  # 0: a parent outside the machines (getppid answers 1, as for init)
    root: int = 0  # the process exec started: its standard streams are the tree's
    exit_signal: int = Signal.SIGCHLD  # sent to the parent at its end (0: none)
    children: dict[int, Child] = field(default_factory=dict)
    vfork_parent: int = 0  # a vfork child: the parent waits until it execs or ends
    shared_vm: bool = False  # made with CLONE_VM (posix_spawn): runs on a copy (`copy_back`)
    vfork_mask: int | None = None  # a vfork parent waiting: its blocked mask before
    waited_cpu: float = 0.0  # CPU seconds of the children it waited for (RUSAGE_CHILDREN)
    pgid: int = 0  # its process group and session (0: its own pid, as a process exec
    sid: int = 0  # started leads both)
    stopped: int = 0  # the signal that stopped it (0: not stopped); it runs after SIGCONT
    # Its run entries (itself, its threads) held by the stop between two runs: SIGCONT
    # makes them runnable (one waiting in a call of its own meanwhile waits on).
    held: list[Process] = field(default_factory=list)


class Machinery(Protocol):
    """What fork needs of its machine (a `Machine` is one)."""

    managers: vm.Managers
    processes: ResourceManager[Process]

    @property
    def scheduler(self) -> Scheduler: ...

    def add_process(self, p: Process) -> int: ...
    def reap(self, pid: int) -> object: ...


def node(p: Process) -> TreeNode:
    tree = getattr(p, "tree", None)
    if tree is None:
        tree = p.tree = TreeNode(root=p.pid)
    assert isinstance(tree, TreeNode)
    return tree


def children_cpu(p: Process) -> float:
    tree = getattr(p, "tree", None)
    return tree.waited_cpu if isinstance(tree, TreeNode) else 0.0


def ppid(p: Process) -> int:
    tree = getattr(p, "tree", None)
    return tree.ppid if isinstance(tree, TreeNode) and tree.ppid else 1


def check_movable(table: dict[int, Process], p: Process) -> None:
    """ProcessTreeError, naming why, for a process that cannot leave its machine alone yet:
    one whose parent on the machine may wait for it, that has children (running, or ended
    and not yet waited for), whose output goes to its tree's root here, that shares a
    pipe with another process, or that is stopped (its stop does not travel yet)."""
    tree = getattr(p, "tree", None)
    if not isinstance(tree, TreeNode):
        return
    if tree.stopped:
        raise ProcessTreeError(
            f"process {p.pid} is stopped (by signal {tree.stopped}): a stopped process cannot "
            "move to another machine yet (its stop would not travel); send it SIGCONT, then "
            "move it")
    why = []
    parent = table.get(tree.ppid) if tree.ppid else None
    if parent is not None and parent.state is not RunState.ZOMBIE:
        why.append(f"its parent {tree.ppid} is on this machine")
    if tree.children:
        why.append(f"{len(tree.children)} child(ren) {sorted(tree.children)} not yet waited "
                   "for")
    if output_owner(table, p) is not p:
        why.append(f"its output goes to process {tree.root}'s streams here")
    ends = [e.file for e in p.files.entries.values() if isinstance(e.file, PipeEnd)]
    if any(f.refs > sum(1 for g in ends if g is f) for f in ends):
        why.append("it shares a pipe with another process")
    if why:
        raise ProcessTreeError(
            f"process {p.pid} is part of a process tree ({'; '.join(why)}): a process of a "
            "tree cannot move to another machine on its own yet (wait, SIGCHLD and the pipes "
            "it shares stay here); it runs on where it is — move it once its children have "
            "ended and been waited for")


def output_owner(table: dict[int, Process], p: Process) -> Process:
    """The process whose standard streams hold `p`'s output: its tree's root while that is
    on this machine and has not ended, else its own."""
    tree = getattr(p, "tree", None)
    if not isinstance(tree, TreeNode) or tree.root in (0, p.pid):
        return p
    root = table.get(tree.root)
    return root if root is not None and root.state is not RunState.ZOMBIE else p


def output_writers(table: dict[int, Process], owner: Process) -> list[Process]:
    """Every process whose output goes to `owner`'s streams (itself first)."""
    return [owner, *(q for q in table.values() if q is not owner
                     and output_owner(table, q) is owner)]


def drain_output(owner: Process) -> None:
    """Bring into `owner`'s streams what it wrote straight to host pipes (a native CPU's
    `output_pipes`), before anything that orders against them (caller holds the lock)."""
    direct = getattr(getattr(owner, "context", None), "direct", None)
    if direct is not None:
        direct.drain_outputs()


class StreamSink:
    """A process's own standard streams as its native CPU's output pipes reach them: only a
    process that is no other's child in a tree has one (a child's output goes to its root's
    streams, mediated, after the root's pipes are drained)."""

    def __init__(self, lock: threading.RLock, p: Process,
                 room: Callable[[Process, int], int]) -> None:
        self.lock, self._p, self._room = lock, p, room

    @staticmethod
    def of(lock: threading.RLock, p: Process,
           room: Callable[[Process, int], int]) -> StreamSink | None:
        tree = getattr(p, "tree", None)
        own = not isinstance(tree, TreeNode) or tree.root in (0, p.pid)
        return StreamSink(lock, p, room) if own else None

    def room(self, stream: int) -> int:
        try:
            return self._room(self._p, stream)
        except OSError:  # (EPIPE) its reader has gone
            return -1

    def append(self, stream: int, data: bytes) -> None:
        (self._p.stdout if stream == 1 else self._p.stderr).extend(data)


# --- waking the waiters of pipes between processes ----------------------------------------

_machines: weakref.WeakSet[Machinery] = weakref.WeakSet()  # machines with a tree
_machines_lock = threading.Lock()
# Run entries (by id) a pipe change reached while on a CPU: their next untimed block returns
# at once. A stale id (an entry gone, its id reused) costs one needless look again, no more.
_poked: set[int] = set()


def _run_entries(q: Process) -> list[Process]:
    """A process's run entries: itself (its first thread) and its other threads."""
    return [q, *getattr(q, "members", {}).values()]


def _pipe_changed(pipe: PipeBuffer) -> None:
    """Data or an end of a pipe came or went: every blocked process (a member of a tree, or
    one whose threads share the pipe) looks again."""
    _waiters_look_again()


def _waiters_look_again() -> None:
    """Every run entry blocked without a deadline in a call that waits on a descriptor
    (`PIPE_CALLS`) looks again; one on a CPU does not fall asleep in its next block."""
    with _machines_lock:
        machines = list(_machines)
    for m in machines:
        sched = m.scheduler
        with sched.lock:
            for q in list(sched.table.values()):
                tree = getattr(q, "tree", None)
                if isinstance(tree, TreeNode) and tree.vfork_mask is not None:
                    continue  # (a vfork parent waits for its child alone)
                wait = signals.of(q).wait
                if wait is not None and wait.kind == "restart" and wait.nr in PIPE_CALLS:
                    # Woken by what it waits for, not cut short: a signal that comes before
                    # it runs has its handler run, then the call is issued again, and finds
                    # the data (Linux returns the data first; the outcome is the same). Its
                    # other threads blocked without a deadline look again too (`wake`).
                    q.signals.wait = None
                    sched.wake(q)
                    continue
                for e in _run_entries(q):
                    if e.state.on_cpu:
                        # It may have looked at the pipe before this change and be about to
                        # wait: its next block returns at once (`block`), and one that has
                        # just blocked, untimed, does not fall asleep.
                        _poked.add(id(e))
                        if e.wake_at == math.inf:
                            sched.wake(e, members=False)
                    elif (e.state is RunState.SLEEPING and e.wake_at == math.inf
                          and not _owns(wait, e)):
                        # Threads share one wait record: a thread blocked in a call whose
                        # record another's overwrote may wait on this pipe, and looks again
                        # (a re-issued call that finds nothing waits again).
                        sched.wake(e, members=False)


def _owns(wait: signals.Wait | None, e: Process) -> bool:
    """Whether the process's wait record is run entry `e`'s own."""
    tid = e.tid if isinstance(e, ThreadEntry) else e.pid
    return wait is not None and wait.thread in (0, tid)


def block(sched: Scheduler, p: Process) -> None:
    """Block `p` with no deadline (`Services.block_process`), unless a pipe changed since it
    last looked (`_pipe_changed`): then its call is issued again at once and looks again."""
    with sched.lock:
        # (Only a call that waits by `restart_call` has no wait set yet: pause and the like
        # set theirs first and must not return without a signal.)
        if id(p) in _poked and signals.of(p).wait is None:
            _poked.discard(id(p))
            return
        _poked.discard(id(p))
        sched.block(p)


def watch(m: Machinery) -> None:
    """Tell `m`'s blocked processes of every pipe change (a machine calls it once)."""
    with _machines_lock:
        _machines.add(m)
    open_file.pipe_changed = _pipe_changed
    event_file.counter_changed = _counter_changed


def _counter_changed() -> None:
    """An eventfd's counter changed: its waiters look again, as a pipe's do."""
    _waiters_look_again()


# --- fork -----------------------------------------------------------------------------------

def copy_space(m: Machinery, parent: Process, child: Process) -> int:
    """A plain copy of every area of the parent's space into a new one (shared file
    mappings too: the child's is its own from then on); the pages copied."""
    assert parent.space is not None
    mem = m.managers.memory
    child.space = m.managers.spaces.acquire()
    copies: dict[int, VirtualUserSpace] = {}
    pages = 0
    for us in parent.space.user_spaces:
        region = us.region
        assert region is not None
        new = vm.add_area(m.managers, child, region.kind, us.start, region.npages, us.perms)
        copies[id(us)] = new
        present = region.present_array()
        if present.size:
            assert new.region is not None
            frames = new.region.populate_array(present, mem, zero=False)
            mem.frames[frames] = mem.frames[region.frame_array()[present]]
            child.space.add_entries(new, present, frames)
            pages += int(present.size)
    child.user_spaces = {name: copies[id(us)] for name, us in parent.user_spaces.items()}
    return pages


def _copy_files(parent: FdTable) -> FdTable:
    """The child's descriptors: the parent's open file descriptions shared (one offset, as
    on Linux), each descriptor's close-on-exec flag its own."""
    table = FdTable()
    table.limit = parent.limit
    for fd, entry in sorted(parent.entries.items()):
        table.install(entry.file, fd=fd, cloexec=entry.cloexec)
    return table


def fork(sc: SystemCalls, p: Process, flags: int, stack: int, parent_tid: int,
         child_tid: int, tls: int) -> SyscallOutcome:
    """fork, vfork, or clone without CLONE_VM (a vfork's CLONE_VM runs the child on a copy
    too, the parent waiting until it execs or ends): the child's pid, or -errno."""
    m = cast(Machinery, sc.services)  # the machine
    child = m.processes.acquire()
    try:
        copy_space(m, p, child)  # memory as at the call: nothing runs before the edit below
    except OutOfMemoryError:
        vm.release_address_space(m.managers, child)
        m.processes.release(child)
        return SyscallOutcome(-Errno.ENOMEM)
    child.program, child.plate_name = p.program, p.plate_name
    child.brk_start, child.brk, child.mmap_top = p.brk_start, p.brk, p.mmap_top
    child.cpu_features = p.cpu_features
    child.files = _copy_files(p.files)
    child.view = copy.copy(p.view)
    mine = signals.of(p)
    caller = signals.own(p)  # the child's one thread has the calling thread's mask and stack
    child.signals = dataclasses.replace(
        mine, actions=list(mine.actions), pending={}, timer_at=None, timer_left=None,
        cpu_timers={}, limits=dict(mine.limits), prctl_values=dict(mine.prctl_values),
        wait=None, saved_mask=None, blocked=caller.blocked, altstack=caller.altstack,
        threads={})
    parent_node = node(p)
    child.tree = TreeNode(ppid=p.pid, root=parent_node.root or p.pid,
                          pgid=parent_node.pgid or p.pid, sid=parent_node.sid or p.pid,
                          exit_signal=flags & CSIGNAL,
                          vfork_parent=p.pid if flags & CLONE_VFORK else 0,
                          shared_vm=bool(flags & CLONE_VM))
    child.name = p.name
    child.created_at = time.time()
    child.tid_address = child_tid if flags & CLONE_CHILD_CLEARTID else 0

    def start(state: CpuState) -> CpuState:
        """With the parent's CPU stopped just past the call: the child starts from the same
        registers, rax 0; the parent's rax is the child's pid."""
        regs = state.with_regs(rax=0, **({"rsp": stack} if stack else {}))
        child.registers = dataclasses.replace(regs, fs_base=tls) if flags & CLONE_SETTLS \
            else regs
        sc.attach(child)
        with m.scheduler.lock:  # no computation takes the child before its tid is written
            pid = m.add_process(child)
            parent_node.children[pid] = Child(pid)
            if flags & CLONE_CHILD_SETTID:
                assert child.space is not None
                child.space.write(child_tid, struct.pack("<i", pid))
        if flags & CLONE_PARENT_SETTID:
            assert p.space is not None
            p.space.write(parent_tid, struct.pack("<i", pid))
        return state.with_regs(rax=pid)

    p.register_edits.append(start)
    if flags & CLONE_VFORK:
        # It waits until the child execs or ends (`released`), as Linux's vfork parent, which
        # no signal but SIGKILL wakes: its signals are held back meanwhile (what the child
        # writes is copied into its memory when it ends, which must find it where it was).
        state = signals.of(p)
        parent_node.vfork_mask = state.blocked
        state.blocked = ALL_SIGNALS
        m.scheduler.block(p)
    return SyscallOutcome(None, stop=True)


# --- a child's end, and waiting for it --------------------------------------------------------

def _how(p: Process) -> tuple[int, int]:
    status = p.exit_status or 0
    if p.exit_reason.startswith(KILLED) and status > 128:
        return CLD_KILLED, status - 128
    return CLD_EXITED, status & 0xFF


def released(sched: Scheduler, child: Process) -> None:
    """A vfork child execs or ends: its parent goes on, its signals as they were."""
    tree = getattr(child, "tree", None)
    if isinstance(tree, TreeNode) and tree.vfork_parent:
        with sched.lock:
            parent = sched.table.get(tree.vfork_parent)
            tree.vfork_parent = 0
            if parent is not None and isinstance(parent.tree, TreeNode) \
                    and parent.tree.vfork_mask is not None:
                signals.of(parent).blocked = parent.tree.vfork_mask
                parent.tree.vfork_mask = None
                sched.wake(parent)


def copy_back(m: Machinery, child: Process, parent: Process) -> None:
    """What a vfork child that shared its parent's memory (CLONE_VM) wrote before it ended
    reaches the parent, as through one memory: every present page of the child's writable
    areas that the parent has at the same place. (glibc's posix_spawn child writes its exec
    error there for the parent to read.)"""
    mem = m.managers.memory
    assert child.space is not None and parent.space is not None
    for us in child.space.user_spaces:
        theirs = parent.space.find(us.start)
        region = us.region
        if (theirs is None or theirs.start != us.start or theirs.region is None
                or region is None or not us.perms & PROT_WRITE):
            continue
        present = region.present_array()
        present = present[present < theirs.region.npages]
        if present.size:
            was = theirs.region.frame_array()[present] == NOT_PRESENT
            frames = theirs.region.populate_array(present, mem, zero=False)
            mem.frames[frames] = mem.frames[region.frame_array()[present]]
            if was.any():
                parent.space.add_entries(theirs, present[was], frames[was])


def ended(m: Machinery, p: Process) -> None:
    """`p` has ended (the machine's lock held, its space not yet released): its parent on
    this machine gets the zombie record and SIGCHLD, and wakes if it waits (a vfork parent
    sharing its memory first gets what it wrote); its own children are orphans from now
    on."""
    tree = getattr(p, "tree", None)
    if not isinstance(tree, TreeNode):
        return
    sched = m.scheduler
    vfork_parent = sched.table.get(tree.vfork_parent) if tree.vfork_parent else None
    if tree.shared_vm and vfork_parent is not None and p.space is not None:
        copy_back(m, p, vfork_parent)
    released(sched, p)
    for pid, record in list(tree.children.items()):
        if record.ended is not None:  # a zombie nobody will wait for now: it goes
            with contextlib.suppress(TenderError):
                m.reap(pid)
            continue
        orphan = sched.table.get(pid)
        if orphan is not None and isinstance(orphan.tree, TreeNode):
            orphan.tree.ppid = 0  # getppid answers 1, as for init's child
    tree.children.clear()
    parent = sched.table.get(tree.ppid) if tree.ppid else None
    if parent is None or parent.state is RunState.ZOMBIE or not isinstance(parent.tree,
                                                                           TreeNode):
        return
    mine = parent.tree.children.get(p.pid)
    if mine is None:
        return
    mine.ended, mine.cpu_seconds = _how(p), p.accounting.cpu_seconds
    state = signals.of(parent)
    waiting = state.wait is not None and state.wait.kind == "restart" \
        and state.wait.nr in WAIT_CALLS
    if waiting:
        state.wait = None  # its wait is over, not cut short: after a handler it collects
    action = state.actions[Signal.SIGCHLD - 1]
    if action.handler == signals.SIG_IGN or action.flags & SA_NOCLDWAIT:
        del parent.tree.children[p.pid]  # nobody will wait: no zombie, as on Linux
    sent = tree.exit_signal and signals.queue(parent, signals.SigInfo(
        tree.exit_signal, mine.ended[0], p.pid))
    if sent and parent.state.on_cpu:
        parent.context.preempt()
    if sent or waiting:  # (a sleep or another wait goes on: SIGCHLD is ignored by default)
        sched.wake(parent)


def _select(sched: Scheduler, p: Process, tree: TreeNode, pid: int) -> list[Child]:
    """The children a wait for `pid` takes: -1 any, a pid that one, 0 those of the caller's
    process group, < -1 those of group -pid (a child's group as it is now, or was at its
    end)."""
    if pid > 0:
        record = tree.children.get(pid)
        return [record] if record is not None else []
    if pid == -1:
        return list(tree.children.values())
    group = ids(p)[0] if pid == 0 else -pid
    return [r for r in tree.children.values()
            if (q := sched.table.get(r.pid)) is not None and ids(q)[0] == group]


def _event(record: Child, options: int) -> tuple[int, int] | None:
    """What a wait with `options` reports of a child now: its end (WEXITED), its stop
    (WUNTRACED/WSTOPPED) or its continuing (WCONTINUED), or None."""
    if record.ended is not None:
        return record.ended if options & WEXITED else None
    if record.changed is not None and options & (
            WUNTRACED if record.changed[0] == CLD_STOPPED else WCONTINUED):
        return record.changed
    return None


def _rusage(record: Child) -> bytes:
    us = round(record.cpu_seconds * 1e6)
    return struct.pack("<qqqq14q", us // 1_000_000, us % 1_000_000, 0, 0, *([0] * 14))


def _wait_for(sc: SystemCalls, p: Process, pid: int, options: int, nr: int
              ) -> tuple[Child, tuple[int, int]] | SyscallOutcome:
    """The first child whose end, stop or continuing the wait reports, and that event — or
    what the call answers now (ECHILD, 0 with WNOHANG, or a wait that a child's change or
    a signal ends)."""
    sched = cast(Machinery, sc.services).scheduler
    with sched.lock:  # a child's end (`ended`) comes between the look and the wait, or after
        tree = getattr(p, "tree", None)
        candidates = _select(sched, p, tree, pid) if isinstance(tree, TreeNode) else []
        if not candidates:
            return SyscallOutcome(-Errno.ECHILD)
        for record in candidates:
            event = _event(record, options)
            if event is None:
                continue
            if options & WNOWAIT:
                pass
            elif record.ended is not None:
                assert isinstance(tree, TreeNode)
                del tree.children[record.pid]
                tree.waited_cpu += record.cpu_seconds
                _reap(sc, record.pid)
            else:
                record.changed = None  # reported once, as Linux does
            return record, event
        if options & WNOHANG:
            return SyscallOutcome(0)
        sched.block(p)
        return restart_call(p, nr)


def _reap(sc: SystemCalls, pid: int) -> None:
    """The machine's entry of a child that was waited for goes (unless its owner took it)."""
    with contextlib.suppress(TenderError):
        cast(Machinery, sc.services).reap(pid)


def _status_word(how: int, value: int) -> int:
    """wait4's status word, as Linux encodes it."""
    if how == CLD_EXITED:
        return (value & 0xFF) << 8
    if how == CLD_STOPPED:
        return (value & 0xFF) << 8 | 0x7F
    if how == CLD_CONTINUED:
        return 0xFFFF
    return value & 0x7F


def wait4(sc: SystemCalls, p: Process, pid: int, status_addr: int, options: int,
          rusage_addr: int, nr: int) -> SyscallOutcome:
    if options & ~(WNOHANG | WUNTRACED | WCONTINUED | 0x20000000 | 0x40000000 | 0x80000000):
        return SyscallOutcome(-Errno.EINVAL)
    found = _wait_for(sc, p, pid, (options | WEXITED) & ~WNOWAIT, nr)
    if isinstance(found, SyscallOutcome):
        return found
    record, (how, value) = found
    assert p.space is not None
    if status_addr:
        p.space.write(status_addr, struct.pack("<i", _status_word(how, value)))
    if rusage_addr:
        p.space.write(rusage_addr, _rusage(record))
    return SyscallOutcome(record.pid)


def waitid(sc: SystemCalls, p: Process, idtype: int, ident: int, info_addr: int,
           options: int, rusage_addr: int, nr: int) -> SyscallOutcome:
    if idtype not in (P_ALL, P_PID, P_PGID) or not options & (WEXITED | WUNTRACED | WCONTINUED):
        return SyscallOutcome(-Errno.EINVAL)
    pid = ident if idtype == P_PID else -ident if idtype == P_PGID and ident else \
        0 if idtype == P_PGID else -1
    found = _wait_for(sc, p, pid, options, nr)
    assert p.space is not None
    if isinstance(found, SyscallOutcome):
        if found.result == 0 and info_addr:  # WNOHANG and nothing yet: si_pid 0
            p.space.write(info_addr, bytes(128))
        return found
    record, (how, value) = found
    if info_addr:
        p.space.write(info_addr, struct.pack("<iii4xiii", Signal.SIGCHLD, 0, how, record.pid,
                                             0, value).ljust(128, b"\0"))
    if rusage_addr:
        p.space.write(rusage_addr, _rusage(record))
    return SyscallOutcome(0)


def ids(p: Process) -> tuple[int, int]:
    """(pgid, sid) of a process."""
    tree = getattr(p, "tree", None)
    if not isinstance(tree, TreeNode):
        return p.pid, p.pid
    return tree.pgid or p.pid, tree.sid or p.pid
