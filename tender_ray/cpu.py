"""The x86-64 CPU a computation lends to a process: Unicorn over the machine's real memory.

The whole real-memory array is mapped once as the emulator's physical memory and Unicorn runs in
virtual-TLB mode: every TLB miss asks the process's virtual space for the page, so frames can be
anywhere and pages can start not present. A quantum ends only at a translated-block boundary
(see `_exit_request_offset`), so preemption never runs an instruction twice.

The interface is engine-neutral: `load`/`save` move a `CpuState`, `run` runs one quantum and
says why it stopped, and system calls go to a handler that knows nothing of Unicorn.

Where the time goes (measured; see `tender_ray.benchmarks`): integer code runs as QEMU TCG
code, and Unicorn 2.1.4 adds a helper call at the start of every translated block (~12 % of a
sieve); what the engine itself controls is the TLB (every miss is a Python call, ~1 us, and
QEMU's soft TLB only grows when flushed), the cost of starting a quantum (Unicorn's own
`timeout` starts and joins a polling thread per run, ~0.13 ms; here one watchdog thread stops
every CPU's timed quanta) and how often the TLB is flushed.
"""

from __future__ import annotations

import ctypes
import enum
import heapq
import itertools
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import unicorn as uc
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from .errors import EngineError, OutOfMemoryError
from .resources.real_memory import PAGE_SHIFT, RealMemory
from .resources.virtual_space import VirtualSpace

# Signals a fault ends a process with (Linux numbering).
SIGILL = 4
SIGKILL = 9
SIGTRAP = 5
SIGFPE = 8
SIGSEGV = 11

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR_IDS = (x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX,
            x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI, x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSP,
            x86.UC_X86_REG_R8, x86.UC_X86_REG_R9, x86.UC_X86_REG_R10, x86.UC_X86_REG_R11,
            x86.UC_X86_REG_R12, x86.UC_X86_REG_R13, x86.UC_X86_REG_R14, x86.UC_X86_REG_R15)
_SCALAR_IDS = (x86.UC_X86_REG_RIP, x86.UC_X86_REG_EFLAGS, x86.UC_X86_REG_FS_BASE,
               x86.UC_X86_REG_GS_BASE, x86.UC_X86_REG_MXCSR, x86.UC_X86_REG_FPCW,
               x86.UC_X86_REG_FPSW, x86.UC_X86_REG_FPTAG)
# System call registers: number, then the six arguments in the x86-64 Linux order.
_SYSCALL_IDS = (x86.UC_X86_REG_RAX, x86.UC_X86_REG_RDI, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDX,
                x86.UC_X86_REG_R10, x86.UC_X86_REG_R8, x86.UC_X86_REG_R9)

LINUX_FPCW = 0x37F  # what Linux gives a new process; Unicorn starts at 0
LINUX_MXCSR = 0x1F80


@dataclass(frozen=True)
class CpuState:
    """Everything of a CPU a process needs to continue elsewhere, independent of the engine.

    `st` holds the x87 data registers as (64-bit mantissa, 16-bit sign+exponent) in physical
    register order; `xmm` the sixteen 128-bit SSE registers.
    """

    gpr: tuple[int, ...]
    rip: int
    rflags: int
    fs_base: int
    gs_base: int
    mxcsr: int
    fpcw: int
    fpsw: int
    fptag: int
    st: tuple[tuple[int, int], ...]
    xmm: tuple[int, ...]

    @classmethod
    def initial(cls, entry: int, stack_pointer: int) -> CpuState:
        return cls(gpr=tuple(stack_pointer if n == "rsp" else 0 for n in GPR_NAMES), rip=entry,
                   rflags=0x202, fs_base=0, gs_base=0, mxcsr=LINUX_MXCSR, fpcw=LINUX_FPCW,
                   fpsw=0, fptag=0xFFFF, st=((0, 0),) * 8, xmm=(0,) * 16)

    def reg(self, name: str) -> int:
        return self.gpr[GPR_NAMES.index(name)]


class StopKind(str, enum.Enum):
    QUANTUM = "quantum"  # the quantum ran out; the process is runnable
    SYSCALL = "syscall"  # the system call handler asked to stop (block, exit, map change)
    FAULT = "fault"  # the guest faulted; `signal` says how it dies


@dataclass(frozen=True)
class Stop:
    kind: StopKind
    signal: int = 0
    address: int = 0
    detail: str = ""


@dataclass(frozen=True)
class SyscallOutcome:
    """What the handler did with a system call: the value for rax (None: leave it), and
    whether the CPU must stop after it."""

    result: int | None
    stop: bool = False


SyscallHandler = Callable[[int, tuple[int, int, int, int, int, int]], SyscallOutcome]

_FILL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                            ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p)
_SYSCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)

_WRITE_ACCESS = ucc.UC_MEM_WRITE
_FAULT_ERRORS = {
    ucc.UC_ERR_READ_UNMAPPED: (SIGSEGV, "read of an unmapped address"),
    ucc.UC_ERR_WRITE_UNMAPPED: (SIGSEGV, "write to an unmapped address"),
    ucc.UC_ERR_FETCH_UNMAPPED: (SIGSEGV, "jump to an unmapped address"),
    ucc.UC_ERR_READ_PROT: (SIGSEGV, "read of a protected page"),
    ucc.UC_ERR_WRITE_PROT: (SIGSEGV, "write to a read-only page"),
    ucc.UC_ERR_FETCH_PROT: (SIGSEGV, "execution of a non-executable page"),
    ucc.UC_ERR_INSN_INVALID: (SIGILL, "invalid instruction"),
    ucc.UC_ERR_READ_UNALIGNED: (SIGSEGV, "unaligned read"),
    ucc.UC_ERR_WRITE_UNALIGNED: (SIGSEGV, "unaligned write"),
    ucc.UC_ERR_FETCH_UNALIGNED: (SIGSEGV, "unaligned fetch"),
    ucc.UC_ERR_EXCEPTION: (SIGSEGV, "unhandled CPU exception"),
}
_INTERRUPT_SIGNALS = {0: (SIGFPE, "divide error"), 1: (SIGTRAP, "debug trap"),
                      3: (SIGTRAP, "breakpoint"), 4: (SIGSEGV, "overflow"),
                      5: (SIGSEGV, "bound range"), 6: (SIGILL, "invalid opcode"),
                      13: (SIGSEGV, "general protection fault"), 14: (SIGSEGV, "page fault"),
                      16: (SIGFPE, "x87 floating-point error"),
                      19: (SIGFPE, "SIMD floating-point error")}


def _exit_request_offset() -> int | None:
    """Offset of `uc_struct.no_exit_request` in this libunicorn build, read from its code.

    Unicorn emits a stop check after every guest load and store unless this flag is set; a
    stop taken there rewinds to the start of an instruction whose store already happened, so
    a read-modify-write would run twice. With the flag set, stops happen only where a
    translated block starts. The field is private, so its offset is taken from the machine
    code of `check_exit_request_x86_64` (`mov uc(%rdi),%reg; cmpb $0,OFF(%reg)`) and the
    result is proven by `self_test`.
    """
    try:
        address = ctypes.cast(uclib.check_exit_request_x86_64, ctypes.c_void_p).value
    except AttributeError:
        return None
    if address is None:
        return None
    code = ctypes.string_at(address, 48)
    match = re.search(rb"\x48\x8b[\x80-\xbf](....)\x80[\xb8-\xbf](....)\x00", code, re.DOTALL)
    if match is None:
        return None
    return int.from_bytes(match.group(2), "little")


_EXIT_REQUEST_OFFSET = _exit_request_offset()


def _tlb_offsets() -> tuple[int, int] | None:
    """(offset of `uc_struct.cpu`, offset of the CPU's `icount_decr`) in this build.

    Read from `helper_check_exit_request_x86_64`, which starts with
    `mov CPU(%rdi),%r8; mov ICOUNT(%r8),%eax`. QEMU keeps the soft TLB's fast descriptors
    `{mask, table}` of the three x86 MMU modes right before `icount_decr`, so the TLB's current
    size can be read there. Used only to decide when to flush (performance, not correctness),
    and checked on every new CPU (three 256-entry masks) before it is trusted.
    """
    try:
        address = ctypes.cast(uclib.helper_check_exit_request_x86_64, ctypes.c_void_p).value
    except AttributeError:
        return None
    if address is None:
        return None
    code = ctypes.string_at(address, 16)
    match = re.match(rb"\x4c\x8b\x87(....)\x41\x8b\x80(....)", code, re.DOTALL)
    if match is None:
        return None
    return int.from_bytes(match.group(1), "little"), int.from_bytes(match.group(2), "little")


_TLB_OFFSETS = _tlb_offsets()
_TLB_MODES = 3  # x86 MMU indexes; the descriptors are 16 bytes each, ending at icount_decr
_TLB_ENTRY_BITS = 6  # log2(sizeof(CPUTLBEntry)) on a 64-bit host with a 64-bit guest
_TLB_INITIAL = 256  # entries of a fresh soft TLB (CPU_TLB_DYN_DEFAULT_BITS = 8)
_TLB_MAX_GROWN = 1 << 16  # do not push the TLB past this (64 B an entry: 4 MiB)
_CTL_TLB_FLUSH = (ucc.UC_CTL_IO_WRITE << 30) | ucc.UC_CTL_TLB_FLUSH  # uc_ctl code, no args


class _HeldLib:
    """The library's short calls made without releasing the interpreter lock (PyDLL).

    A ctypes call through `uclib` drops the GIL and must win it back afterwards; from inside a
    hook, or between two emulator runs, that hands the lock to whichever thread is waiting
    (the machine's waiters, the watchdog) and queues the computation behind it. Only
    `uc_emu_start`, which runs the guest, goes through `uclib` and lets other threads run.
    """

    def __init__(self) -> None:
        lib = ctypes.PyDLL(uclib._name)
        err, engine = ctypes.c_int, ctypes.c_void_p
        self.reg_read = lib.uc_reg_read
        self.reg_read.argtypes, self.reg_read.restype = (engine, ctypes.c_int,
                                                         ctypes.c_void_p), err
        self.reg_write = lib.uc_reg_write
        self.reg_write.argtypes, self.reg_write.restype = (engine, ctypes.c_int,
                                                           ctypes.c_void_p), err
        self.reg_read_batch = lib.uc_reg_read_batch
        self.reg_read_batch.argtypes = (engine, ctypes.POINTER(ctypes.c_int),
                                        ctypes.POINTER(ctypes.c_void_p), ctypes.c_int)
        self.reg_read_batch.restype = err
        self.ctl = lib.uc_ctl
        self.ctl.argtypes, self.ctl.restype = (engine, ctypes.c_int), err
        self.emu_stop = lib.uc_emu_stop
        self.emu_stop.argtypes, self.emu_stop.restype = (engine,), err
        # QEMU's own single-page flush (what `invlpg` uses), exported by this build: given the
        # CPU found with `_TLB_OFFSETS` it drops one page from the TLB, its victim cache and
        # the jump cache. Used when a page-table change touches a few cached translations.
        self.flush_page = getattr(lib, "tlb_flush_page_x86_64", None)
        if self.flush_page is not None:
            self.flush_page.argtypes = (ctypes.c_void_p, ctypes.c_uint64)
            self.flush_page.restype = None


_held = _HeldLib()


@dataclass
class EngineCounters:
    """What every CPU of this process did, summed (read with `engine_counters`).

    Bumped without a lock: exact with one computation, close enough with several.
    """

    runs: int = 0  # quanta run (`Cpu.run` calls)
    emu_starts: int = 0  # emulator entries; more than runs when a quantum resumed after a flush
    fills: int = 0  # TLB misses answered by the virtual space (each a Python call)
    flushes: int = 0  # whole-TLB flushes
    flushes_avoided: int = 0  # page-table changes that did not touch a cached translation
    page_flushes: int = 0  # single pages dropped instead of flushing everything
    grow_stops: int = 0  # quanta paused to flush so the TLB could grow to the working set


_COUNTERS = EngineCounters()


def engine_counters() -> dict[str, int]:
    """A snapshot of `EngineCounters` (benchmarks diff two of them)."""
    c = _COUNTERS
    return {"runs": c.runs, "emu_starts": c.emu_starts, "fills": c.fills,
            "flushes": c.flushes, "flushes_avoided": c.flushes_avoided,
            "page_flushes": c.page_flushes, "grow_stops": c.grow_stops}


class _Watchdog:
    """Ends timed quanta for every CPU of the process from one thread.

    Unicorn's own `timeout` starts a thread per run that polls in `usleep(2)` steps and is
    joined when the run ends, so every quantum, including one a system call ends after a
    microsecond, pays ~0.1-1 ms. Here a run arms a deadline and disarms it when it returns;
    the watchdog calls `uc_emu_stop` for armed runs whose deadline passed. The stop lands at a
    translated-block boundary like Unicorn's own (the `no_exit_request` flag), and a stop that
    arrives before the emulator has started (it resets its stop request on entry) is sent again
    until the run returns. Arming, disarming and stopping happen under one lock, so a stop is
    never sent to a run that has returned or a CPU that has been closed.
    """

    RESEND = 0.002  # seconds between stops of a run that has not yet returned

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start afresh: at creation, and in a forked child (no thread, a free lock)."""
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, uc handle)
        self._heap: list[tuple[float, int]] = []  # (deadline, token), may hold stale tokens
        self._tokens = itertools.count(1)
        self._wake = float("inf")  # when the thread is due to look next
        self._thread: threading.Thread | None = None

    def arm(self, handle: int, deadline: float) -> int:
        with self._cond:
            token = next(self._tokens)
            self._armed[token] = (deadline, handle)
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="tender-cpu-watchdog",
                                                daemon=True)
                self._thread.start()
            elif deadline < self._wake:
                self._cond.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def expire(self, token: int) -> None:
        """End an armed run now (a freeze or a kill does not wait for the quantum's end)."""
        with self._cond:
            entry = self._armed.get(token)
            if entry is None:
                return
            now = time.monotonic()
            self._armed[token] = (now, entry[1])
            heapq.heappush(self._heap, (now, token))
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                heap, armed = self._heap, self._armed
                while heap and (heap[0][0] <= now or heap[0][1] not in armed):
                    deadline, token = heapq.heappop(heap)
                    entry = armed.get(token)
                    if entry is None or entry[0] != deadline:
                        continue  # disarmed, or re-queued with a later deadline
                    _held.emu_stop(entry[1])
                    again = now + self.RESEND
                    armed[token] = (again, entry[1])
                    heapq.heappush(heap, (again, token))
                self._wake = heap[0][0] if heap else float("inf")
                self._cond.wait(None if not heap else max(0.0, self._wake - now))


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # a forked child starts with no watchdog and a free lock
    os.register_at_fork(after_in_child=_WATCHDOG.reset)


class Cpu:
    """One emulated x86-64 CPU bound to a machine's real memory.

    Owned by one process at a time (a kernel process keeps it when held for reuse). Not
    thread-safe: only the computation running its process touches it.

    TLB policy. Every translation QEMU caches came from `_on_fill` since the last flush, and
    `_filled` remembers them; when the page table changes (its `generation` moves) the TLB is
    flushed only if one of those translations changed, and that check runs right after the
    system call that changed it. QEMU's soft TLB starts at 256 entries and only resizes (at
    most doubling) when flushed, so once the misses since the last flush reach 1.5x its size
    while the resident set is bigger than half of it, the quantum pauses at the next block
    boundary, flushes and resumes: the TLB reaches the working set within a few pauses,
    whatever the quantum length.
    """

    def __init__(self, memory: RealMemory, *, exact: bool = False,
                 translation_buffer: int = 8 << 20, _proven: bool = False) -> None:
        self.memory = memory  # the machine's; not owned
        # `_proven` is only for the self-test, which is what proves timed stops safe.
        self.exact = exact or not (_proven or block_boundary_stops_available())
        self._uc = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
        self._uch = self._uc._uch
        if self._uch is None or not self._uch.value:
            raise EngineError("unicorn returned no engine handle")
        self._handle = int(self._uch.value)
        ctl: Any = self._uc  # the ctl_* helpers are missing from the binding's type stubs
        ctl.ctl_set_tcg_buffer_size(translation_buffer)
        ctl.ctl_set_tlb_mode(ucc.UC_TLB_VIRTUAL)
        self._uc.mem_map_ptr(0, memory.size, ucc.UC_PROT_ALL, memory.address)
        if not self.exact:
            assert _EXIT_REQUEST_OFFSET is not None
            ctypes.c_bool.from_address(self._handle + _EXIT_REQUEST_OFFSET).value = True
        self.space: VirtualSpace | None = None  # the running process's; not owned
        self.last_run_cpu_seconds = 0.0  # emulation runs on the caller's thread: none else
        # [preempt] The watchdog token of the run in progress (0: none), and whether the
        # current run was asked to end early; set by `preempt` from other threads.
        self._token_lock = threading.Lock()
        self._token = 0
        self._preempted = False
        self.handler: SyscallHandler | None = None
        self._space_generation = -1  # of `space` when the TLB was last made consistent
        self._fills = 0  # TLB fills since the last flush
        self._fills_flushed = 0  # fills before the last flush, for the counters
        self._filled: dict[int, int] = {}  # vpn -> entry handed to QEMU since the last flush
        self._cpu_state = 0  # QEMU's CPUState, once `_find_tlb_masks` has vouched for it
        self._tlb_masks = self._find_tlb_masks()
        self._tlb_model = _TLB_INITIAL  # the TLB size, when it cannot be read
        self._grow_at = _TLB_INITIAL + _TLB_INITIAL // 2  # fills that make `_on_fill` look
        self._grow_pending = False  # flush before the next run so the TLB can grow
        self._grow_stop = False  # this emulator run was stopped by `_tlb_full`
        self._stop: Stop | None = None  # set by hooks during a run
        self._error: BaseException | None = None  # an exception raised inside a hook
        self._regs = (ctypes.c_uint64 * 7)()
        self._reg_ids = (ctypes.c_int * 7)(*_SYSCALL_IDS)
        self._reg_ptrs = (ctypes.c_void_p * 7)(
            *[ctypes.addressof(self._regs) + 8 * i for i in range(7)])
        self._rip = ctypes.c_uint64()
        self._rax = ctypes.c_uint64()
        # Raw ctypes hooks: the binding's wrappers cost several Python calls per TLB fill.
        self._callbacks = (_FILL_CB(self._on_fill), _SYSCALL_CB(self._on_syscall),
                           _INTR_CB(self._on_interrupt))
        self._add_hook(ucc.UC_HOOK_TLB_FILL, self._callbacks[0])
        self._add_hook(ucc.UC_HOOK_INSN, self._callbacks[1], x86.UC_X86_INS_SYSCALL)
        self._add_hook(ucc.UC_HOOK_INTR, self._callbacks[2])
        self._closed = False

    def _add_hook(self, kind: int, fn: object, *extra: int) -> None:
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self._uch, ctypes.byref(handle), kind, fn,
                                   ctypes.c_void_p(0), ctypes.c_uint64(1), ctypes.c_uint64(0),
                                   *[ctypes.c_int(e) for e in extra])
        if status != ucc.UC_ERR_OK:
            raise EngineError(f"unicorn refused a hook: {uc.UcError(status)}")

    def _find_tlb_masks(self) -> ctypes.Array[ctypes.c_uint64] | None:
        """The soft TLB's `{mask, table}` pairs of this CPU, if this build is the one known."""
        if _TLB_OFFSETS is None:
            return None
        cpu_offset, icount_offset = _TLB_OFFSETS
        cpu = ctypes.c_uint64.from_address(self._handle + cpu_offset).value
        if cpu == 0 or cpu % 16:
            return None
        fast = (ctypes.c_uint64 * (2 * _TLB_MODES)).from_address(
            cpu + icount_offset - 16 * _TLB_MODES)
        fresh = (_TLB_INITIAL - 1) << _TLB_ENTRY_BITS
        if any(fast[2 * i] != fresh or fast[2 * i + 1] == 0 for i in range(_TLB_MODES)):
            return None
        self._cpu_state = cpu
        return fast

    def tlb_entries(self) -> int:
        """The soft TLB's current size in entries (read from QEMU, else modelled)."""
        masks = self._tlb_masks
        if masks is None:
            return self._tlb_model
        return (max(masks[0], masks[2], masks[4]) >> _TLB_ENTRY_BITS) + 1

    # --- binding to a process ------------------------------------------------------------

    def bind(self, space: VirtualSpace, handler: SyscallHandler) -> None:
        """Run the process whose pages are in `space` and whose system calls go to `handler`."""
        self.space = space
        self.handler = handler
        self._space_generation = -1  # flush on the next run

    def reset(self) -> None:
        """Forget the process (the CPU is being held for another): no stale TLB or code."""
        self.space = None
        self.handler = None
        self._space_generation = -1
        ctl: Any = self._uc
        ctl.ctl_flush_tb()
        self.flush_tlb()

    def flush_tlb(self) -> None:
        """Drop every cached translation (QEMU resizes the TLB here, and only here)."""
        if self._tlb_masks is None and len(self._filled) * 10 >= self._tlb_model * 7:
            self._tlb_model = min(self._tlb_model * 2, 1 << 22)  # QEMU doubles at 70 % use
        status = _held.ctl(self._uch, _CTL_TLB_FLUSH)
        if status != ucc.UC_ERR_OK:
            raise EngineError(f"TLB flush failed: {uc.UcError(status)}")
        self._fills_flushed += self._fills
        self._fills = 0
        self._filled.clear()
        self._grow_pending = False
        size = self.tlb_entries()
        self._grow_at = size + size // 2
        _COUNTERS.flushes += 1

    def _sync_tlb(self, space: VirtualSpace) -> None:
        """Make the TLB agree with `space` after its table changed (or a new binding)."""
        generation = space.generation
        if generation == self._space_generation:
            return
        fresh = self._space_generation < 0
        self._space_generation = generation
        filled, table = self._filled, space.table
        # `<=` on item views: every translation QEMU may hold is still in the table, as is.
        if fresh or not filled.items() <= table.items():
            stale = [] if fresh else [vpn for vpn, pte in filled.items() if table.get(vpn) != pte]
            flush_page = _held.flush_page
            if (fresh or not self._cpu_state or flush_page is None
                    or len(stale) > max(64, len(filled) // 4)):
                self.flush_tlb()
                return
            for vpn in stale:
                flush_page(self._cpu_state, vpn << PAGE_SHIFT)
                del filled[vpn]
            _COUNTERS.page_flushes += len(stale)
        else:
            _COUNTERS.flushes_avoided += 1

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.space = None
            self.handler = None
            self._tlb_masks = None
            self._cpu_state = 0
            # The binding's finalizer closes the handle exactly once (it also runs at exit).
            getattr(self._uc, "_Uc__finalizer")()  # noqa: B009 (name-mangled)

    # --- registers -----------------------------------------------------------------------

    def load(self, state: CpuState) -> None:
        u = self._uc
        for rid, value in zip(_GPR_IDS, state.gpr, strict=True):
            u.reg_write(rid, value)
        for rid, value in zip(_SCALAR_IDS, (state.rip, state.rflags, state.fs_base,
                                            state.gs_base, state.mxcsr, state.fpcw, state.fpsw,
                                            state.fptag), strict=True):
            u.reg_write(rid, value)
        for i, (mantissa, exponent) in enumerate(state.st):
            u.reg_write(x86.UC_X86_REG_FP0 + i, (mantissa, exponent))
        for i, value in enumerate(state.xmm):
            u.reg_write(x86.UC_X86_REG_XMM0 + i, value)

    def save(self) -> CpuState:
        u = self._uc
        gpr = tuple(u.reg_read(rid) for rid in _GPR_IDS)
        rip, rflags, fs, gs, mxcsr, fpcw, fpsw, fptag = (u.reg_read(rid) for rid in _SCALAR_IDS)
        st = tuple(tuple(u.reg_read(x86.UC_X86_REG_FP0 + i)) for i in range(8))
        xmm = tuple(u.reg_read(x86.UC_X86_REG_XMM0 + i) for i in range(16))
        return CpuState(gpr, rip, rflags, fs, gs, mxcsr, fpcw, fpsw, fptag,
                        st, xmm)

    def rip(self) -> int:
        _held.reg_read(self._uch, x86.UC_X86_REG_RIP, ctypes.byref(self._rip))
        return int(self._rip.value)

    def fs_base(self) -> int:
        return int(self._uc.reg_read(x86.UC_X86_REG_FS_BASE))

    def set_fs_base(self, value: int) -> None:
        """arch_prctl(ARCH_SET_FS): safe inside a system call hook; the base is read at run
        time, not baked into translated code."""
        self._uc.reg_write(x86.UC_X86_REG_FS_BASE, value)

    # --- running -------------------------------------------------------------------------

    def run(self, quantum: int) -> Stop:
        """Run one quantum: microseconds, or instructions when `exact`. Why it stopped."""
        space = self.space
        if space is None or self.handler is None:
            raise EngineError("CPU has no process bound")
        self._sync_tlb(space)
        if self._grow_pending:
            self.flush_tlb()
        self._stop = None
        self._error = None
        fills = self._fills_flushed + self._fills
        if self.exact:
            status = uclib.uc_emu_start(self._uch, self.rip(), 0, 0, quantum)
            starts = 1
        else:
            status, starts = self._run_timed(quantum)
        with self._token_lock:  # a preemption asked before this run began ended it too
            self._preempted = False
        counters = _COUNTERS
        counters.runs += 1
        counters.emu_starts += starts
        counters.fills += self._fills_flushed + self._fills - fills
        if self._error is not None:
            raise EngineError(f"CPU hook failed: {self._error!r}") from self._error
        if status != ucc.UC_ERR_OK:
            if self._stop is not None and self._stop.kind is StopKind.FAULT:
                return self._stop
            signal, why = _FAULT_ERRORS.get(status, (SIGSEGV, f"CPU error {status}"))
            return Stop(StopKind.FAULT, signal, self.rip(), why)
        self._sync_tlb(space)
        return self._stop or Stop(StopKind.QUANTUM)

    def preempt(self) -> None:
        """End the running timed quantum at the next block boundary (from another thread).
        Exact quanta end only by their instruction count: they stay deterministic."""
        with self._token_lock:
            self._preempted = True
            token = self._token
        if token:
            _WATCHDOG.expire(token)

    def _run_timed(self, quantum_us: int) -> tuple[int, int]:
        """Emulate until a hook stops or `quantum_us` has passed; (status, emulator entries).

        A stop requested only so the TLB can grow flushes it and resumes the same quantum.
        """
        deadline = time.monotonic() + quantum_us / 1e6
        starts = 0
        while True:
            self._grow_stop = False
            with self._token_lock:
                if self._preempted:
                    return ucc.UC_ERR_OK, starts
                token = self._token = _WATCHDOG.arm(self._handle, deadline)
            try:
                status = uclib.uc_emu_start(self._uch, self.rip(), 0, 0, 0)
            finally:
                with self._token_lock:
                    self._token = 0
                _WATCHDOG.disarm(token)
            starts += 1
            if (not self._grow_stop or status != ucc.UC_ERR_OK or self._stop is not None
                    or self._error is not None):
                return status, starts
            self.flush_tlb()
            if time.monotonic() >= deadline:
                return status, starts

    # --- hooks (called by Unicorn on the computation's thread, inside emu_start) ---------

    def _on_fill(self, _uc: int, vaddr: int, access: int,
                 entry: ctypes._Pointer[ctypes.c_uint64], _data: int) -> bool:
        try:
            space = self.space
            assert space is not None
            vpn = vaddr >> PAGE_SHIFT
            pte = space.table.get(vpn)
            if pte is None:
                try:
                    pte = space.fault(vpn)
                except OutOfMemoryError:
                    # The machine has no frame for the page: the process dies as the Linux
                    # OOM killer would end it (SIGKILL), not as a broken engine.
                    self._stop = Stop(StopKind.FAULT, SIGKILL, vaddr,
                                      f"out of memory: no frame for the page at {vaddr:#x}")
                    return False
                if pte is None:
                    what = {ucc.UC_MEM_WRITE: "write to", ucc.UC_MEM_FETCH: "jump to"}.get(
                        access, "read of")
                    self._stop = Stop(StopKind.FAULT, SIGSEGV, vaddr,
                                      f"{what} unmapped address {vaddr:#x}")
                    return False
            self._filled[vpn] = pte
            self._fills += 1
            if self._fills >= self._grow_at:
                self._tlb_full(space)
            entry[0] = pte & ~0xFFF  # physical address of the frame
            entry[1] = pte & 7  # permissions; the rest of the struct is padding
            return True
        except BaseException as exc:  # an exception must not cross the C boundary
            self._error = exc
            _held.emu_stop(self._uch)
            return False

    def _tlb_full(self, space: VirtualSpace) -> None:
        """Misses since the last flush reached 1.5x the TLB: flush soon if it should grow."""
        size = self.tlb_entries()
        if size >= _TLB_MAX_GROWN or size >= 2 * space.resident_pages():
            self._grow_at = self._fills + size  # big enough for now; look again later
            return
        self._grow_at = 1 << 62  # until the flush
        self._grow_pending = True
        _COUNTERS.grow_stops += 1
        if not self.exact:  # counted quanta cannot resume mid-way: flush at the next run
            self._grow_stop = True
            _held.emu_stop(self._uch)

    def _on_syscall(self, _uc: int, _data: int) -> None:
        try:
            _held.reg_read_batch(self._uch, self._reg_ids, self._reg_ptrs, 7)
            r = self._regs
            assert self.handler is not None
            outcome = self.handler(r[0], (r[1], r[2], r[3], r[4], r[5], r[6]))
            if outcome.result is not None:
                self._rax.value = outcome.result & 0xFFFF_FFFF_FFFF_FFFF
                _held.reg_write(self._uch, x86.UC_X86_REG_RAX, ctypes.byref(self._rax))
            space = self.space
            if space is not None and space.generation != self._space_generation:
                # munmap/mprotect/brk changed the table: the translation block ends after a
                # syscall, so a flush here is seen by the very next instruction.
                self._sync_tlb(space)
            if outcome.stop:
                self._stop = Stop(StopKind.SYSCALL)
                _held.emu_stop(self._uch)
        except BaseException as exc:
            self._error = exc
            _held.emu_stop(self._uch)

    def _on_interrupt(self, _uc: int, intno: int, _data: int) -> None:
        signal, why = _INTERRUPT_SIGNALS.get(intno, (SIGSEGV, f"CPU exception {intno}"))
        self._stop = Stop(StopKind.FAULT, signal, 0, why)
        _held.emu_stop(self._uch)


# --- proving block-boundary stops on this build -------------------------------------------

_self_test_lock = threading.Lock()
_self_test_result: bool | None = None

# incq (%rbx); dec %rcx; jnz back; then a syscall to end: the read-modify-write counter.
_TORTURE = bytes.fromhex("48ff03" "48ffc9" "75f8" "0f05")


def block_boundary_stops_available() -> bool:
    """Whether timed quanta are safe here: the flag was found and a torture run proves it.

    The torture run increments a memory word with `incq` twenty million times under dozens of
    timed preemptions; any re-executed instruction makes the count come out high.
    """
    global _self_test_result
    with _self_test_lock:
        if _self_test_result is None:
            _self_test_result = _EXIT_REQUEST_OFFSET is not None and _run_torture(20_000_000)
        return _self_test_result


def _run_torture(iterations: int) -> bool:
    memory = RealMemory(4 << 12)
    space = VirtualSpace(memory)
    code_frame, data_frame = 0, 1
    memory.frames[code_frame, : len(_TORTURE)] = list(_TORTURE)
    space.table[0x400] = (code_frame << PAGE_SHIFT) | 5  # r-x at 0x400000
    space.table[0x600] = (data_frame << PAGE_SHIFT) | 3  # rw- at 0x600000
    done = threading.Event()

    def handler(_nr: int, _args: tuple[int, int, int, int, int, int]) -> SyscallOutcome:
        done.set()
        return SyscallOutcome(0, stop=True)

    cpu = Cpu(memory, _proven=True)
    try:
        cpu.bind(space, handler)
        state = CpuState.initial(0x400000, 0)
        gpr = list(state.gpr)
        gpr[1] = 0x600000  # rbx
        gpr[2] = iterations  # rcx
        cpu.load(CpuState(tuple(gpr), *[getattr(state, f) for f in
                                        ("rip", "rflags", "fs_base", "gs_base", "mxcsr",
                                         "fpcw", "fpsw", "fptag", "st", "xmm")]))
        deadline = time.monotonic() + 30
        stops = 0
        while not done.is_set() and time.monotonic() < deadline:
            if cpu.run(20).kind is StopKind.FAULT:
                return False
            stops += 1
        count = int.from_bytes(memory.frames[data_frame, :8].tobytes(), "little")
        return done.is_set() and count == iterations and stops >= 20
    finally:
        cpu.close()
