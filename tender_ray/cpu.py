"""The x86-64 CPU a computation lends to a process: Unicorn over the machine's real memory.

The whole real-memory array is mapped once as the emulator's physical memory and Unicorn runs in
virtual-TLB mode: every TLB miss asks the process's virtual space for the page, so frames can be
anywhere and pages can start not present. A quantum ends only at a translated-block boundary
(see `_exit_request_offset`), so preemption never runs an instruction twice.

The interface is engine-neutral: `load`/`save` move a `CpuState`, `run` runs one quantum and
says why it stopped, and system calls go to a handler that knows nothing of Unicorn.
"""

from __future__ import annotations

import ctypes
import enum
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import unicorn as uc
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86
from unicorn.unicorn_py3.unicorn import uclib

from .errors import EngineError
from .resources.real_memory import PAGE_SHIFT, RealMemory
from .resources.virtual_space import VirtualSpace

# Signals a fault ends a process with (Linux numbering).
SIGILL = 4
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


class Cpu:
    """One emulated x86-64 CPU bound to a machine's real memory.

    Owned by one process at a time (a kernel process keeps it when held for reuse). Not
    thread-safe: only the computation running its process touches it.
    """

    def __init__(self, memory: RealMemory, *, exact: bool = False,
                 translation_buffer: int = 8 << 20, _proven: bool = False) -> None:
        self.memory = memory  # the machine's; not owned
        # `_proven` is only for the self-test, which is what proves timed stops safe.
        self.exact = exact or not (_proven or block_boundary_stops_available())
        self._uc = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
        self._uch = self._uc._uch
        self._uc.ctl_set_tcg_buffer_size(translation_buffer)
        self._uc.ctl_set_tlb_mode(ucc.UC_TLB_VIRTUAL)
        self._uc.mem_map_ptr(0, memory.size, ucc.UC_PROT_ALL, memory.address)
        if not self.exact:
            assert _EXIT_REQUEST_OFFSET is not None
            ctypes.c_bool.from_address(self._uch.value + _EXIT_REQUEST_OFFSET).value = True
        self.space: VirtualSpace | None = None  # the running process's; not owned
        self.handler: SyscallHandler | None = None
        self._space_generation = -1
        self._fills = 0  # TLB fills since the last flush
        self._stop: Stop | None = None  # set by hooks during a run
        self._error: BaseException | None = None  # an exception raised inside a hook
        self.instructions_hint = 0
        self._regs = (ctypes.c_uint64 * 7)()
        self._reg_ids = (ctypes.c_int * 7)(*_SYSCALL_IDS)
        self._reg_ptrs = (ctypes.c_void_p * 7)(
            *[ctypes.addressof(self._regs) + 8 * i for i in range(7)])
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
        self._uc.ctl_flush_tb()
        self.flush_tlb()

    def flush_tlb(self) -> None:
        self._uc.ctl(ucc.UC_CTL_TLB_FLUSH, ucc.UC_CTL_IO_WRITE)
        self._fills = 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.space = None
            self.handler = None
            # The binding's finalizer closes the handle exactly once (it also runs at exit).
            self._uc._Uc__finalizer()

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
                        st, xmm)  # type: ignore[arg-type]

    def rip(self) -> int:
        return int(self._uc.reg_read(x86.UC_X86_REG_RIP))

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
        if space.generation != self._space_generation:
            self.flush_tlb()
            self._space_generation = space.generation
        elif self._fills > 2 * space.resident_pages() + 256:
            # QEMU's soft TLB only grows when flushed: let it grow to the working set.
            self.flush_tlb()
        self._stop = None
        self._error = None
        begin = self.rip()
        if self.exact:
            status = uclib.uc_emu_start(self._uch, begin, 0, 0, quantum)
        else:
            status = uclib.uc_emu_start(self._uch, begin, 0, quantum, 0)
        if self._error is not None:
            raise EngineError(f"CPU hook failed: {self._error!r}") from self._error
        if status != ucc.UC_ERR_OK:
            if self._stop is not None and self._stop.kind is StopKind.FAULT:
                return self._stop
            signal, why = _FAULT_ERRORS.get(status, (SIGSEGV, f"CPU error {status}"))
            return Stop(StopKind.FAULT, signal, self.rip(), why)
        if space.generation != self._space_generation:
            self.flush_tlb()
            self._space_generation = space.generation
        return self._stop or Stop(StopKind.QUANTUM)

    # --- hooks (called by Unicorn on the computation's thread, inside emu_start) ---------

    def _on_fill(self, _uc: int, vaddr: int, access: int,
                 entry: ctypes._Pointer[ctypes.c_uint64], _data: int) -> bool:
        try:
            space = self.space
            assert space is not None
            vpn = vaddr >> PAGE_SHIFT
            pte = space.table.get(vpn)
            if pte is None:
                pte = space.fault(vpn)
                if pte is None:
                    what = {ucc.UC_MEM_WRITE: "write to", ucc.UC_MEM_FETCH: "jump to"}.get(
                        access, "read of")
                    self._stop = Stop(StopKind.FAULT, SIGSEGV, vaddr,
                                      f"{what} unmapped address {vaddr:#x}")
                    return False
            self._fills += 1
            entry[0] = pte & ~0xFFF  # physical address of the frame
            entry[1] = pte & 7  # permissions; the rest of the struct is padding
            return True
        except BaseException as exc:  # an exception must not cross the C boundary
            self._error = exc
            uclib.uc_emu_stop(self._uch)
            return False

    def _on_syscall(self, _uc: int, _data: int) -> None:
        try:
            uclib.uc_reg_read_batch(self._uch, self._reg_ids, self._reg_ptrs, 7)
            r = self._regs
            assert self.handler is not None
            outcome = self.handler(r[0], (r[1], r[2], r[3], r[4], r[5], r[6]))
            if outcome.result is not None:
                self._rax.value = outcome.result & 0xFFFF_FFFF_FFFF_FFFF
                uclib.uc_reg_write(self._uch, x86.UC_X86_REG_RAX, ctypes.byref(self._rax))
            if outcome.stop:
                self._stop = Stop(StopKind.SYSCALL)
                uclib.uc_emu_stop(self._uch)
        except BaseException as exc:
            self._error = exc
            uclib.uc_emu_stop(self._uch)

    def _on_interrupt(self, _uc: int, intno: int, _data: int) -> None:
        signal, why = _INTERRUPT_SIGNALS.get(intno, (SIGSEGV, f"CPU exception {intno}"))
        self._stop = Stop(StopKind.FAULT, signal, 0, why)
        uclib.uc_emu_stop(self._uch)


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
