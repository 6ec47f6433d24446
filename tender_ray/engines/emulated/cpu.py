"""The x86-64 CPU a computation lends to a process: Unicorn over the machine's real memory.

The whole real-memory array is mapped once as the emulator's physical memory and Unicorn runs in
virtual-TLB mode: every TLB miss asks the process's virtual space for the page, so frames can be
anywhere and pages can start not present. A quantum ends only at a translated-block boundary
(the private `no_exit_request` flag, see `private`), so preemption never runs an
instruction twice.

The interface is engine-neutral: `load`/`save` move a `CpuState`, `run` runs one quantum and
says why it stopped, and system calls go to a handler that knows nothing of Unicorn.

Where the time goes (measured; see `tender_ray.bench.engine`): integer code runs as QEMU TCG
code, and Unicorn 2.1.4 adds a helper call at the start of every translated block (~12 % of a
sieve); what the engine itself controls is the TLB (every miss is a Python call, ~1 us, and
QEMU's soft TLB only grows when flushed), the cost of starting a quantum (Unicorn's own
`timeout` starts and joins a polling thread per run, ~0.13 ms; here one watchdog thread stops
every CPU's timed quanta) and how often the TLB is flushed.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Any

import unicorn as uc
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from tender_ray.abi.cpu_state import (
    CpuState,
    Stop,
    StopKind,
    SyscallHandler,
    SyscallOutcome,
)
from tender_ray.abi.linux import (
    FPE_INTDIV,
    ILL_ILLOPN,
    SEGV_ACCERR,
    SEGV_MAPERR,
    SI_KERNEL,
    Signal,
)
from tender_ray.engines.emulated.private import (
    EXIT_REQUEST_OFFSET,
    TLB_ENTRY_BITS,
    TLB_INITIAL,
    block_boundary_stops_available,
    find_tlb_masks,
    held,
)
from tender_ray.engines.emulated.watchdog import WATCHDOG
from tender_ray.errors import EngineError, OutOfMemoryError
from tender_ray.resources.dirty_pages import DirtyPages
from tender_ray.resources.real_memory import PAGE_SHIFT, RealMemory
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import PROT_WRITE

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


_FILL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int,
                            ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p)
_SYSCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)

_WRITE_ACCESS = ucc.UC_MEM_WRITE
# Each with the si_code Linux gives the signal (SI_KERNEL where it has no finer one).
_FAULT_ERRORS = {
    ucc.UC_ERR_READ_UNMAPPED: (Signal.SIGSEGV, "read of an unmapped address", SEGV_MAPERR),
    ucc.UC_ERR_WRITE_UNMAPPED: (Signal.SIGSEGV, "write to an unmapped address", SEGV_MAPERR),
    ucc.UC_ERR_FETCH_UNMAPPED: (Signal.SIGSEGV, "jump to an unmapped address", SEGV_MAPERR),
    ucc.UC_ERR_READ_PROT: (Signal.SIGSEGV, "read of a protected page", SEGV_ACCERR),
    ucc.UC_ERR_WRITE_PROT: (Signal.SIGSEGV, "write to a read-only page", SEGV_ACCERR),
    ucc.UC_ERR_FETCH_PROT: (Signal.SIGSEGV, "execution of a non-executable page",
                            SEGV_ACCERR),
    ucc.UC_ERR_INSN_INVALID: (Signal.SIGILL, "invalid instruction", ILL_ILLOPN),
    ucc.UC_ERR_READ_UNALIGNED: (Signal.SIGSEGV, "unaligned read", SI_KERNEL),
    ucc.UC_ERR_WRITE_UNALIGNED: (Signal.SIGSEGV, "unaligned write", SI_KERNEL),
    ucc.UC_ERR_FETCH_UNALIGNED: (Signal.SIGSEGV, "unaligned fetch", SI_KERNEL),
    ucc.UC_ERR_EXCEPTION: (Signal.SIGSEGV, "unhandled CPU exception", SI_KERNEL),
}
_INTERRUPT_SIGNALS = {0: (Signal.SIGFPE, "divide error", FPE_INTDIV),
                      1: (Signal.SIGTRAP, "debug trap", SI_KERNEL),
                      3: (Signal.SIGTRAP, "breakpoint", SI_KERNEL),
                      4: (Signal.SIGSEGV, "overflow", SI_KERNEL),
                      5: (Signal.SIGSEGV, "bound range", SI_KERNEL),
                      6: (Signal.SIGILL, "invalid opcode", ILL_ILLOPN),
                      13: (Signal.SIGSEGV, "general protection fault", SI_KERNEL),
                      14: (Signal.SIGSEGV, "page fault", SEGV_MAPERR),
                      16: (Signal.SIGFPE, "x87 floating-point error", SI_KERNEL),
                      19: (Signal.SIGFPE, "SIMD floating-point error", SI_KERNEL)}


_TLB_MAX_GROWN = 1 << 16  # do not push the TLB past this (64 B an entry: 4 MiB)
_CTL_TLB_FLUSH = (ucc.UC_CTL_IO_WRITE << 30) | ucc.UC_CTL_TLB_FLUSH  # uc_ctl code, no args


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

    Write tracking (`VirtualSpace.dirty`). While a space is tracked, a page not yet written in
    the current interval is handed to QEMU without write permission, so the first store to it
    misses the TLB again: that fill marks the page and hands it out writable. When a take
    starts a new interval (its `epoch` moves) the whole TLB is flushed before the next run,
    which is also when QEMU may grow it, so the growth policy above is kept.
    """

    tracks_writes = True

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
            assert EXIT_REQUEST_OFFSET is not None
            ctypes.c_bool.from_address(self._handle + EXIT_REQUEST_OFFSET).value = True
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
        # The write tracking the TLB was last made to agree with, and its interval.
        self._dirty: DirtyPages | None = None
        self._dirty_epoch = -1
        # The soft TLB's size descriptors and QEMU's CPUState, once `find_tlb_masks` vouched.
        found = find_tlb_masks(self._handle)
        self._tlb_masks: ctypes.Array[ctypes.c_uint64] | None = None
        self._cpu_state = 0
        if found is not None:
            self._tlb_masks, self._cpu_state = found
        self._tlb_model = TLB_INITIAL  # the TLB size, when it cannot be read
        self._grow_at = TLB_INITIAL + TLB_INITIAL // 2  # fills that make `_on_fill` look
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
        # The threads of one process take turns on their CPUs (one lock for them all): the
        # next to run sees the page table the last one changed, and an atomic instruction
        # is atomic between them.
        self._turns = threading.Lock()

    # A process's threads move as one unit: each context's registers are its thread's
    # alone (the space is the process's), so a destination makes one context per thread.
    moves_threads = True

    def spawn_thread(self) -> Cpu:
        """A CPU context of its own for a new thread of the bound process."""
        twin = Cpu(self.memory, exact=self.exact)
        twin._turns = self._turns
        return twin

    def _add_hook(self, kind: int, fn: object, *extra: int) -> None:
        handle = ctypes.c_size_t()
        status = uclib.uc_hook_add(self._uch, ctypes.byref(handle), kind, fn,
                                   ctypes.c_void_p(0), ctypes.c_uint64(1), ctypes.c_uint64(0),
                                   *[ctypes.c_int(e) for e in extra])
        if status != ucc.UC_ERR_OK:
            raise EngineError(f"unicorn refused a hook: {uc.UcError(status)}")

    def tlb_entries(self) -> int:
        """The soft TLB's current size in entries (read from QEMU, else modelled)."""
        masks = self._tlb_masks
        if masks is None:
            return self._tlb_model
        return (max(masks[0], masks[2], masks[4]) >> TLB_ENTRY_BITS) + 1

    # --- binding to a process ------------------------------------------------------------

    def bind(self, space: VirtualSpace, handler: SyscallHandler) -> None:
        """Run the process whose pages are in `space` and whose system calls go to `handler`."""
        self.space = space
        self.handler = handler
        self._space_generation = -1  # flush on the next run
        # QEMU finds translated code by virtual and physical address, and the frames behind a
        # new space (an exec's program, a space rebuilt here) may be ones this CPU ran other
        # code from: their contents were written by the machine, not through QEMU, so it
        # cannot know. Binding is rare (a start, an arrival, an exec), so all code goes.
        ctl: Any = self._uc
        ctl.ctl_flush_tb()

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
        status = held.ctl(self._uch, _CTL_TLB_FLUSH)
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
        if fresh:
            self.flush_tlb()
            return
        filled = self._filled
        # Every translation QEMU may hold that the table no longer has, as it was handed out.
        stale = space.changed(filled)
        if not stale:
            _COUNTERS.flushes_avoided += 1
            return
        flush_page = held.flush_page
        if not self._cpu_state or flush_page is None or len(stale) > max(64, len(filled) // 4):
            self.flush_tlb()
            return
        for vpn in stale:
            flush_page(self._cpu_state, vpn << PAGE_SHIFT)
            del filled[vpn]
        _COUNTERS.page_flushes += len(stale)

    def _rearm(self, dirty: DirtyPages | None) -> None:
        """Tracking began, ended or a take began a new interval: every page cached as
        writable must miss again on its next store. Right after one take, those are among
        the pages it took: when they are few, only they are dropped, so the rest of the TLB
        stays (a dropped page misses twice after: a read, then its store); otherwise the
        whole TLB is flushed."""
        flush_page = held.flush_page
        if (dirty is not None and dirty is self._dirty and dirty.epoch == self._dirty_epoch + 1
                and self._cpu_state and flush_page is not None):
            filled = self._filled
            cached = dirty.last & filled.keys()
            if len(cached) <= max(64, len(filled) // 4):
                for vpn in cached:
                    flush_page(self._cpu_state, vpn << PAGE_SHIFT)
                    del filled[vpn]
                _COUNTERS.page_flushes += len(cached)
                self._dirty_epoch = dirty.epoch
                return
        self._dirty = dirty
        self._dirty_epoch = dirty.epoch if dirty is not None else -1
        self.flush_tlb()

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
        held.reg_read(self._uch, x86.UC_X86_REG_RIP, ctypes.byref(self._rip))
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
        with self._turns:
            return self._run(quantum)

    def _run(self, quantum: int) -> Stop:
        space = self.space
        if space is None or self.handler is None:
            raise EngineError("CPU has no process bound")
        self._sync_tlb(space)
        dirty = space.dirty
        if dirty is not self._dirty or (dirty is not None and dirty.epoch != self._dirty_epoch):
            self._rearm(dirty)
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
            signal, why, code = _FAULT_ERRORS.get(status, (Signal.SIGSEGV,
                                                           f"CPU error {status}", 0))
            return Stop(StopKind.FAULT, signal, self.rip(), why, code)
        self._sync_tlb(space)
        return self._stop or Stop(StopKind.QUANTUM)

    def preempt(self) -> None:
        """End the running timed quantum at the next block boundary (from another thread).
        Exact quanta end only by their instruction count: they stay deterministic."""
        with self._token_lock:
            self._preempted = True
            token = self._token
        if token:
            WATCHDOG.expire(token)

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
                token = self._token = WATCHDOG.arm(self._handle, deadline)
            try:
                status = uclib.uc_emu_start(self._uch, self.rip(), 0, 0, 0)
            finally:
                with self._token_lock:
                    self._token = 0
                WATCHDOG.disarm(token)
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
            pte = space.entry(vpn)
            if pte is None:
                try:
                    pte = space.fault(vpn)
                except OutOfMemoryError:
                    # The machine has no frame for the page: the process dies as the Linux
                    # OOM killer would end it (Signal.SIGKILL), not as a broken engine.
                    self._stop = Stop(StopKind.FAULT, Signal.SIGKILL, vaddr,
                                      f"out of memory: no frame for the page at {vaddr:#x}")
                    return False
                if pte is None:
                    what = {ucc.UC_MEM_WRITE: "write to", ucc.UC_MEM_FETCH: "jump to"}.get(
                        access, "read of")
                    self._stop = Stop(StopKind.FAULT, Signal.SIGSEGV, vaddr,
                                      f"{what} unmapped address {vaddr:#x}", SEGV_MAPERR)
                    return False
            self._filled[vpn] = pte
            self._fills += 1
            if self._fills >= self._grow_at:
                self._tlb_full(space)
            entry[0] = pte & ~0xFFF  # physical address of the frame
            perms = pte & 7
            dirty = space.dirty
            if dirty is not None and perms & PROT_WRITE and vpn not in dirty.pages:
                if access == _WRITE_ACCESS:  # the first store of the interval: mark it
                    dirty.pages.add(vpn)
                    dirty.marks += 1
                else:  # clean: its first store must come back here
                    perms &= ~PROT_WRITE
            entry[1] = perms  # permissions; the rest of the struct is padding
            return True
        except BaseException as exc:  # an exception must not cross the C boundary
            self._error = exc
            held.emu_stop(self._uch)
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
            held.emu_stop(self._uch)

    def _on_syscall(self, _uc: int, _data: int) -> None:
        try:
            held.reg_read_batch(self._uch, self._reg_ids, self._reg_ptrs, 7)
            r = self._regs
            assert self.handler is not None
            outcome = self.handler(r[0], (r[1], r[2], r[3], r[4], r[5], r[6]))
            if outcome.result is not None:
                self._rax.value = outcome.result & 0xFFFF_FFFF_FFFF_FFFF
                held.reg_write(self._uch, x86.UC_X86_REG_RAX, ctypes.byref(self._rax))
            space = self.space
            if space is not None and space.generation != self._space_generation:
                # munmap/mprotect/brk changed the table: the translation block ends after a
                # syscall, so a flush here is seen by the very next instruction.
                self._sync_tlb(space)
            if outcome.stop:
                self._stop = Stop(StopKind.SYSCALL)
                held.emu_stop(self._uch)
        except BaseException as exc:
            self._error = exc
            held.emu_stop(self._uch)

    def _on_interrupt(self, _uc: int, intno: int, _data: int) -> None:
        signal, why, code = _INTERRUPT_SIGNALS.get(intno, (Signal.SIGSEGV,
                                                           f"CPU exception {intno}", SI_KERNEL))
        self._stop = Stop(StopKind.FAULT, signal, 0, why, code)
        held.emu_stop(self._uch)


def replay(memory: RealMemory, space: VirtualSpace, state: CpuState) -> Stop:
    """How the one instruction `state` is at stops on a fresh exact CPU over `memory` and
    `space` (a system call stops it unserved): what the native engine says of a fault the host
    reports, so that both engines give the same reasons (`engines.base.Replay`)."""
    cpu = Cpu(memory, exact=True, translation_buffer=1 << 20)
    try:
        cpu.bind(space, lambda _nr, _args: SyscallOutcome(None, stop=True))
        cpu.load(state)
        return cpu.run(1)
    finally:
        cpu.close()
