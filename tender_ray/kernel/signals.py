"""The signals of one process: its actions, pending set and interval timers, shared by its
threads; each thread's own blocked mask, alternate stack and signals sent to it alone
(`ThreadSignals`; the first thread's are the process's record's own fields) — and, as Linux
keeps them with a process's
signals (its signal_struct), its resource limits and the prctl flags that go with them
(`SignalState`, kernel-side, travelling in the image) — and delivery: the default action, or a
Linux-compatible `rt_sigframe` pushed on the user stack and read back by `rt_sigreturn`.

Delivery is engine-neutral: it is a register edit (`CpuState` → `CpuState`) that writes the
frame through the process's virtual space, applied by the scheduler between two runs.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from dataclasses import dataclass, field

from tender_ray.abi.cpu_state import CpuState
from tender_ray.abi.linux import Errno, Signal, signal_name
from tender_ray.resources.process import Process, ThreadEntry

NSIG = 64
SIG_DFL, SIG_IGN = 0, 1
SA_SIGINFO, SA_ONSTACK, SA_RESTART = 0x4, 0x08000000, 0x10000000
SA_NODEFER, SA_RESETHAND, SA_RESTORER = 0x40000000, 0x80000000, 0x04000000
SS_ONSTACK, SS_DISABLE = 1, 2
SI_USER, SI_KERNEL, SI_TKILL = 0, 0x80, -6
UNBLOCKABLE = (1 << (Signal.SIGKILL - 1)) | (1 << (Signal.SIGSTOP - 1))
# Default action "ignore" — and, for queueing, SIGCONT and the stop signals: what they do by
# default (stop a process, continue it) happens when they are sent (`job_control.send`),
# and a stop signal kept pending while blocked stops the process when unblocked
# (`Machine._before_run`).
IGNORED_BY_DEFAULT = frozenset({Signal.SIGCHLD, Signal.SIGURG, Signal.SIGWINCH, Signal.SIGCONT,
                                Signal.SIGSTOP, Signal.SIGTSTP, Signal.SIGTTIN, Signal.SIGTTOU})
# The signals a faulting instruction raises; delivered before any other pending one, as
# Linux's SYNCHRONOUS_MASK does, so the handler runs at the instruction that faulted.
FAULT_SIGNALS = frozenset({Signal.SIGSEGV, Signal.SIGBUS, Signal.SIGILL, Signal.SIGTRAP,
                           Signal.SIGFPE, Signal.SIGSYS})

# struct rt_sigframe (x86-64): pretcode, struct ucontext (304 bytes), struct siginfo (128).
UC_OFFSET, SIGINFO_OFFSET, FRAME_SIZE = 8, 8 + 304, 8 + 304 + 128
MCONTEXT = 40  # uc_mcontext within the ucontext, after uc_flags, uc_link, uc_stack
SIGMASK = MCONTEXT + 256  # uc_sigmask: the kernel's 8-byte sigset
# struct sigcontext's first 18 words, in Linux order.
SIGCONTEXT_REGS = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp",
                   "rbx", "rdx", "rax", "rcx", "rsp", "rip", "eflags")
FPSTATE_PTR = MCONTEXT + 184
FXSAVE_SIZE = 512
UC_FLAGS = 0x2 | 0x4  # UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, as Linux sets them
USER_CS, USER_SS = 0x33, 0x2B
RED_ZONE = 128
EFLAGS_USER = 0x40DD5  # CF PF AF ZF SF TF DF OF AC: what sigreturn may change


def bit(sig: int) -> int:
    return 1 << (sig - 1)


@dataclass(frozen=True)
class SigAction:
    """One signal's struct kernel_sigaction."""

    handler: int = SIG_DFL
    flags: int = 0
    restorer: int = 0
    mask: int = 0


@dataclass(frozen=True)
class SigInfo:
    """What a pending signal carries (the first fields of siginfo_t)."""

    signo: int
    code: int  # SI_USER (kill), SI_TKILL (tkill/tgkill), SI_KERNEL (timer), or a fault's
    pid: int = 0  # the sender (the process itself, or 0 from outside)
    addr: int = 0  # a fault's si_addr (then `pid` is not sent: they share the union)
    fault: bool = False  # raised by the faulting instruction
    thread: int = 0  # tkill/tgkill's thread, which alone takes it (0: any thread of it)


@dataclass(frozen=True)
class Wait:
    """The wait a process is in, so that a signal can end it as Linux would."""

    kind: str  # "sleep" (nanosleep & co., rax holds 0), "pause" (rax holds -EINTR),
    #            "restart" (a call answered by `restart_call`: rip/rax re-issue it)
    until: float = 0.0  # sleep: time.time() it ends (for the time left written back)
    rem: int = 0  # sleep: where to write the time left (0: nowhere)
    nr: int = -1  # restart: the call's number
    thread: int = 0  # the thread that waits (0: any; the threads share one wait record)


@dataclass
class ThreadSignals:
    """What a thread after the first has of its own signals, as Linux keeps them per task:
    its blocked mask (a new thread starts with its creator's), its alternate stack (none at
    first), rt_sigsuspend's saved mask, and the signals tkill/tgkill sent to it alone (one of
    each number). Its process's `SignalState` holds it, so it travels in the image."""

    blocked: int = 0
    altstack: tuple[int, int, int] = (0, SS_DISABLE, 0)
    saved_mask: int | None = None
    pending: dict[int, SigInfo] = field(default_factory=dict)

    def copy(self) -> ThreadSignals:
        return dataclasses.replace(self, pending=dict(self.pending))


@dataclass
class SignalState:
    """A process's signal state (its computation or the machine's lock guards it; the
    kernel fills and reads it, and it travels in the image as it is)."""

    actions: list[SigAction] = field(default_factory=lambda: [SigAction()] * NSIG)
    blocked: int = 0  # rt_sigprocmask's mask (bit sig-1)
    pending: dict[int, SigInfo] = field(default_factory=dict)  # by signal; one of each
    altstack: tuple[int, int, int] = (0, SS_DISABLE, 0)  # (ss_sp, ss_flags, ss_size)
    # ITIMER_REAL: time.monotonic() it fires (None: disarmed) and its interval (seconds).
    # In an image `timer_left` holds the time left instead, as a sleep's is.
    timer_at: float | None = None
    timer_interval: float = 0.0
    timer_left: float | None = None
    saved_mask: int | None = None  # rt_sigsuspend's mask to restore after the handler
    wait: Wait | None = None  # set by a waiting call, cleared when the process runs on
    # ITIMER_VIRTUAL and ITIMER_PROF: (the CPU time it fires at, interval) in the process's
    # CPU seconds (`Accounting.cpu_seconds`, which travels), so they move as they are.
    cpu_timers: dict[int, tuple[float, float]] = field(default_factory=dict)
    # setrlimit's limits, by resource: (soft, hard); a resource not here has its default.
    limits: dict[int, tuple[int, int]] = field(default_factory=dict)
    # prctl: PR_SET_PDEATHSIG's signal, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, and the other
    # values a process sets and reads back (timer slack, keepcaps, subreaper, THP), by option.
    pdeathsig: int = 0
    dumpable: int = 1
    no_new_privs: bool = False
    prctl_values: dict[int, int] = field(default_factory=dict)
    # The threads after the first, by tid: their own masks, alternate stacks and signals.
    # (The first thread's are `blocked`, `altstack`, `saved_mask` and the signals in
    # `pending` sent to its tid.)
    threads: dict[int, ThreadSignals] = field(default_factory=dict)

    def for_image(self) -> SignalState:
        """A copy to travel: the timer as the time left."""
        left = None if self.timer_at is None else max(0.0, self.timer_at - time.monotonic())
        return dataclasses.replace(self, actions=list(self.actions), pending=dict(self.pending),
                                   timer_at=None, timer_left=left,
                                   cpu_timers=dict(self.cpu_timers), limits=dict(self.limits),
                                   prctl_values=dict(self.prctl_values),
                                   threads=_copied(self))

    def arrived(self) -> SignalState:
        """The state as it goes on at the destination: the time left as a deadline here."""
        at = None if self.timer_left is None else time.monotonic() + self.timer_left
        return dataclasses.replace(self, actions=list(self.actions), pending=dict(self.pending),
                                   timer_at=at, timer_left=None,
                                   cpu_timers=dict(self.cpu_timers), limits=dict(self.limits),
                                   prctl_values=dict(self.prctl_values),
                                   threads=_copied(self))

    def ignored(self, sig: int) -> bool:
        handler = self.actions[sig - 1].handler
        return handler == SIG_IGN or (handler == SIG_DFL and sig in IGNORED_BY_DEFAULT)

    def deliverable(self, tid: int = 0) -> int:
        """The lowest pending signal thread `tid` may take now (0: none), a fault's first, as
        Linux picks it: its own signals and the process's, that its mask does not block.
        `tid` 0: whether any thread may take one (the lowest such)."""
        if not tid:  # the first thread (0: its own and the process's), or another
            return min((s for s in map(self._ready, (0, *threads_of(self))) if s), default=0)
        return self._ready(tid)

    def _ready(self, tid: int) -> int:
        mine = threads_of(self).get(tid)
        blocked = self.blocked if mine is None else mine.blocked
        # `tid` 0 stands for the first thread when its tid is not known here: the signals
        # sent to the process, or to a thread that has no record of its own (the first).
        ready = [(s, info) for s, info in self.pending.items()
                 if info.thread in (0, tid) or (not tid and info.thread not in threads_of(self))]
        if mine is not None:
            ready += mine.pending.items()
        ready = [(s, info) for s, info in ready
                 if not blocked & bit(s) or s in (Signal.SIGKILL, Signal.SIGSTOP)]
        faults = [s for s, info in ready if info.fault]
        return min(faults or [s for s, _ in ready]) if ready else 0

    def take(self, sig: int, tid: int) -> SigInfo:
        """Dequeue pending `sig` for thread `tid`: one sent to it alone first, as Linux does."""
        mine = threads_of(self).get(tid)
        if mine is not None and sig in mine.pending:
            return mine.pending.pop(sig)
        return self.pending.pop(sig)

    def pending_for(self, tid: int) -> int:
        """The set (bits) of signals pending for thread `tid`: its own and the process's."""
        mine = threads_of(self).get(tid)
        return sum(bit(s) for s in (*self.pending, *(mine.pending if mine else ())))


def threads_of(state: SignalState) -> dict[int, ThreadSignals]:
    """The per-thread records of `state` (an image from before they existed has none)."""
    threads: dict[int, ThreadSignals] | None = state.__dict__.get("threads")
    if threads is None:
        threads = state.threads = {}
    return threads


def _copied(state: SignalState) -> dict[int, ThreadSignals]:
    return {tid: t.copy() for tid, t in threads_of(state).items()}


def own(p: Process) -> SignalState | ThreadSignals:
    """The signal record of the thread run entry `p` runs: its mask, alternate stack,
    saved mask and the signals sent to it alone (the process's record for its first
    thread)."""
    state = of(p)
    if not isinstance(p, ThreadEntry):
        return state
    threads = threads_of(state)
    mine = threads.get(p.tid)
    if mine is None:  # (a thread made before threads had their own: the process's mask)
        mine = threads[p.tid] = ThreadSignals(blocked=state.blocked)
    return mine


def thread_born(creator: Process, tid: int) -> None:
    """A new thread `tid`: its creator's mask, no alternate stack, nothing pending."""
    threads_of(of(creator))[tid] = ThreadSignals(blocked=own(creator).blocked)


def thread_gone(p: Process, tid: int) -> None:
    """Thread `tid` ended: its own record and the signals sent to it alone go."""
    threads_of(of(p)).pop(tid, None)


def tid_of(p: Process) -> int:
    """The thread id of a run entry: a thread's own, or the process's first (its pid)."""
    return p.tid if isinstance(p, ThreadEntry) else p.pid


def waits(p: Process, wait: Wait) -> bool:
    """Whether `wait` is run entry `p`'s own (not another thread's of its process)."""
    return not wait.thread or wait.thread == tid_of(p)


def of(p: Process) -> SignalState:
    """The process's signal state (made on first use)."""
    state: SignalState | None = getattr(p, "signals", None)
    if state is None:
        state = SignalState()
        p.signals = state
    return state


def queue(p: Process, info: SigInfo) -> bool:
    """Make a signal pending (discarded when ignored, as Linux does at generation); whether
    it is now pending and deliverable, so the caller wakes a waiting process."""
    state = of(p)
    if state.ignored(info.signo) and info.signo != Signal.SIGKILL:
        return False
    mine = threads_of(state).get(info.thread) if info.thread else None
    (state.pending if mine is None else mine.pending).setdefault(info.signo, info)
    return state.deliverable(info.thread) != 0


def default_reason(sig: int) -> str:
    return f"killed by signal {sig} ({signal_name(sig)})"


def take_fault(p: Process, sig: int, code: int, addr: int) -> bool:
    """A fault raised `sig`: queue it for the process's handler, as Linux forces it (first of
    all pending signals, whatever is ignored at generation). False when no handler can take
    it — none installed, SIG_IGN, or the signal blocked (Linux then kills, as the default
    action): the caller ends the process."""
    state = of(p)
    handler = state.actions[sig - 1].handler
    if sig not in FAULT_SIGNALS or handler in (SIG_DFL, SIG_IGN) or own(p).blocked & bit(sig):
        return False
    # The faulting thread's alone: its handler runs at the instruction that faulted.
    tid = tid_of(p)
    mine = threads_of(state).get(tid) if isinstance(p, ThreadEntry) else None
    (state.pending if mine is None else mine.pending)[sig] = SigInfo(
        sig, code, addr=addr, fault=True, thread=tid)
    return True


def timer_due(state: SignalState, now: float) -> bool:
    """Whether ITIMER_REAL has fired by `now`; re-arms an interval timer."""
    if state.timer_at is None or state.timer_at > now:
        return False
    state.timer_at = (state.timer_at + state.timer_interval if state.timer_interval else None)
    if state.timer_at is not None and state.timer_at < now:
        state.timer_at = now + state.timer_interval  # overruns are one signal, as on Linux
    return True


CPU_TIMER_SIGNALS = {1: Signal.SIGVTALRM, 2: Signal.SIGPROF}  # by ITIMER_VIRTUAL, _PROF


def cpu_timers_due(state: SignalState, cpu_seconds: float) -> list[int]:
    """The signals of the CPU-time timers that fired by `cpu_seconds`; re-arms intervals."""
    fired: list[int] = []
    for which, (at, interval) in sorted(getattr(state, "cpu_timers", {}).items()):
        if at > cpu_seconds:
            continue
        if interval:
            state.cpu_timers[which] = (max(at + interval, cpu_seconds), interval)
        else:
            del state.cpu_timers[which]
        fired.append(int(CPU_TIMER_SIGNALS[which]))
    return fired


# --- the frame -------------------------------------------------------------------------------

def _fxsave(s: CpuState) -> bytes:
    top = (s.fpsw >> 11) & 7
    abridged = sum(1 << i for i in range(8) if (s.fptag >> 2 * i) & 3 != 3)
    head = struct.pack("<HHBBHQQII", s.fpcw, s.fpsw, abridged, 0, 0, 0, 0, s.mxcsr, 0xFFFF)
    st = b"".join(struct.pack("<QH6x", *s.st[(top + i) & 7]) for i in range(8))
    xmm = b"".join(x.to_bytes(16, "little") for x in s.xmm)
    return (head + st + xmm).ljust(FXSAVE_SIZE, b"\0")


def _from_fxsave(s: CpuState, area: bytes) -> CpuState:
    fpcw, fpsw, abridged, _, _, _, _, mxcsr, _ = struct.unpack_from("<HHBBHQQII", area)
    top = (fpsw >> 11) & 7
    stack = [struct.unpack_from("<QH", area, 32 + 16 * i) for i in range(8)]
    st = tuple(stack[(p - top) & 7] for p in range(8))
    # A present register is tagged valid (0): the engines classify zero/special themselves.
    tag = sum(3 << 2 * p for p in range(8) if not abridged >> p & 1)
    xmm = tuple(int.from_bytes(area[160 + 16 * i:176 + 16 * i], "little") for i in range(16))
    return dataclasses.replace(s, fpcw=fpcw, fpsw=fpsw, fptag=tag, mxcsr=mxcsr & 0xFFFF,
                               st=st, xmm=xmm)


def push_frame(p: Process, sig: int, s: CpuState) -> CpuState:
    """Deliver `sig` to its handler: push the rt_sigframe and point the CPU at the handler
    (the register edit a delivery is). Raises BadAddress when the stack cannot take it."""
    state = of(p)
    mine = own(p)
    action = state.actions[sig - 1]
    info = state.take(sig, tid_of(p))
    space = p.space
    assert space is not None
    rsp = s.reg("rsp")
    ss_sp, ss_flags, ss_size = mine.altstack
    on_alt = ss_flags != SS_DISABLE and ss_sp < rsp <= ss_sp + ss_size
    sp = rsp - RED_ZONE
    if action.flags & SA_ONSTACK and ss_flags != SS_DISABLE and not on_alt:
        sp = ss_sp + ss_size
    fpstate = (sp - FXSAVE_SIZE) & ~63
    frame = ((fpstate - FRAME_SIZE) & ~15) - 8  # rsp+8 16-byte aligned at handler entry
    mask = mine.blocked if mine.saved_mask is None else mine.saved_mask
    regs = {n: s.reg(n) for n in SIGCONTEXT_REGS[:16]} | {"rip": s.rip, "eflags": s.rflags}
    cr2 = info.addr if info.fault and sig == Signal.SIGSEGV else 0  # the page fault's address
    mcontext = struct.pack("<18QHHHHQQQQQ", *(regs[n] for n in SIGCONTEXT_REGS), USER_CS, 0, 0,
                           USER_SS, 0, 0, mask, cr2, fpstate).ljust(256, b"\0")
    flags = SS_ONSTACK if on_alt or sp == ss_sp + ss_size else ss_flags
    ucontext = struct.pack("<QQQiiQ", UC_FLAGS, 0, ss_sp, flags, 0, ss_size) + mcontext + \
        struct.pack("<Q", mask)
    if info.fault:  # _sigfault: si_addr where _kill has si_pid, si_uid
        siginfo = struct.pack("<iiiiQ", info.signo, 0, info.code, 0, info.addr)
    else:
        siginfo = struct.pack("<iiiiiI", info.signo, 0, info.code, 0, info.pid, 0)
    siginfo = siginfo.ljust(128, b"\0")
    space.write(fpstate, _fxsave(s))
    space.write(frame, struct.pack("<Q", action.restorer) + ucontext + siginfo)
    mine.blocked |= action.mask | (0 if action.flags & SA_NODEFER else bit(sig))
    mine.blocked &= ~UNBLOCKABLE
    mine.saved_mask = None
    if action.flags & SA_RESETHAND:
        state.actions[sig - 1] = SigAction()
    # The handler starts with the direction flag and the trap flag clear, as on Linux.
    return s.with_regs(rsp=frame, rip=action.handler, rdi=sig, rsi=frame + SIGINFO_OFFSET,
                       rdx=frame + UC_OFFSET, rax=0, rflags=s.rflags & ~0x500)


def read_frame(p: Process, s: CpuState) -> CpuState:
    """rt_sigreturn: the registers, FP state and mask the frame at rsp - 8 saved (the
    handler's `ret` popped the return address)."""
    space = p.space
    assert space is not None
    frame = s.reg("rsp") - 8
    mc = space.read(frame + UC_OFFSET + MCONTEXT, 256)
    words = struct.unpack_from("<18Q", mc)
    regs = dict(zip(SIGCONTEXT_REGS, words, strict=True))
    fpstate = struct.unpack_from("<Q", mc, 184)[0]
    mask = struct.unpack("<Q", space.read(frame + UC_OFFSET + SIGMASK, 8))[0]
    own(p).blocked = mask & ~UNBLOCKABLE
    rflags = (s.rflags & ~EFLAGS_USER) | (regs.pop("eflags") & EFLAGS_USER)
    restored = s.with_regs(rflags=rflags, **regs)
    if fpstate:
        restored = _from_fxsave(restored, space.read(fpstate, FXSAVE_SIZE))
    return restored


def end_wait(p: Process, sig: int, s: CpuState) -> CpuState:
    """A handler for `sig` is about to run over a wait it cut short: the call answers as
    Linux's does — a sleep -EINTR with the time left written; a call waiting by
    `restart_call` is re-issued after the handler with SA_RESTART, else answers -EINTR."""
    state = of(p)
    wait = state.wait
    if wait is None or not waits(p, wait):
        return s  # (another thread's wait: it goes on)
    state.wait = None
    eintr = -Errno.EINTR & (2**64 - 1)
    if wait.kind == "restart":
        if state.actions[sig - 1].flags & SA_RESTART or s.reg("rax") != wait.nr:
            return s
        return s.with_regs(rip=s.rip + 2, rax=eintr)
    if wait.kind != "sleep":
        return s
    left = wait.until - time.time()
    if left <= 0:
        return s  # it had slept its time: it returns 0
    if wait.rem:
        assert p.space is not None
        ns = int(left * 1e9)
        p.space.write(wait.rem, struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000))
    return s.with_regs(rax=eintr)


__all__ = ["SigAction", "SigInfo", "SignalState", "ThreadSignals", "Wait", "end_wait", "of",
           "own", "push_frame", "queue", "read_frame", "take_fault", "thread_born",
           "thread_gone"]
