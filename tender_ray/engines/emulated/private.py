"""What the emulated CPU reads from libunicorn's private structures, and the proof that it
read them right: the `no_exit_request` flag (quanta end only at translated-block boundaries),
the soft TLB's size, the library's calls made without releasing the interpreter lock, and the
torture run that proves block-boundary stops on this build at start-up.

All of it depends on the pinned Unicorn build (2.1.4): offsets are taken from its machine
code, and each is checked before it is trusted.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time

from unicorn.unicorn_py3.unicorn import uclib

from tender_ray.abi.cpu_state import CpuState, StopKind, SyscallOutcome
from tender_ray.abi.linux import PROT_EXEC, PROT_READ, PROT_WRITE
from tender_ray.resources.real_memory import RealMemory
from tender_ray.resources.virtual_space import VirtualSpace


def _exit_request_offset() -> int | None:
    """Offset of `uc_struct.no_exit_request` in this libunicorn build, read from its code.

    Unicorn emits a stop check after every guest load and store unless this flag is set; a
    stop taken there rewinds to the start of an instruction whose store already happened, so
    a read-modify-write would run twice. With the flag set, stops happen only where a
    translated block starts. The field is private, so its offset is taken from the machine
    code of `check_exit_request_x86_64` (`mov uc(%rdi),%reg; cmpb $0,OFF(%reg)`) and the
    result is proven by `block_boundary_stops_available`.
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


EXIT_REQUEST_OFFSET = _exit_request_offset()


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


TLB_OFFSETS = _tlb_offsets()
TLB_MODES = 3  # x86 MMU indexes; the descriptors are 16 bytes each, ending at icount_decr
TLB_ENTRY_BITS = 6  # log2(sizeof(CPUTLBEntry)) on a 64-bit host with a 64-bit guest
TLB_INITIAL = 256  # entries of a fresh soft TLB (CPU_TLB_DYN_DEFAULT_BITS = 8)


def find_tlb_masks(handle: int) -> tuple[ctypes.Array[ctypes.c_uint64], int] | None:
    """The soft TLB's `{mask, table}` pairs of engine `handle`'s CPU and the address of QEMU's
    CPUState, if this build is the one known (a fresh CPU: three 256-entry masks)."""
    if TLB_OFFSETS is None:
        return None
    cpu_offset, icount_offset = TLB_OFFSETS
    cpu = ctypes.c_uint64.from_address(handle + cpu_offset).value
    if cpu == 0 or cpu % 16:
        return None
    fast = (ctypes.c_uint64 * (2 * TLB_MODES)).from_address(cpu + icount_offset - 16 * TLB_MODES)
    fresh = (TLB_INITIAL - 1) << TLB_ENTRY_BITS
    if any(fast[2 * i] != fresh or fast[2 * i + 1] == 0 for i in range(TLB_MODES)):
        return None
    return fast, cpu


class HeldLib:
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
        # CPU found with `find_tlb_masks` it drops one page from the TLB, its victim cache and
        # the jump cache. Used when a page-table change touches a few cached translations.
        self.flush_page = getattr(lib, "tlb_flush_page_x86_64", None)
        if self.flush_page is not None:
            self.flush_page.argtypes = (ctypes.c_void_p, ctypes.c_uint64)
            self.flush_page.restype = None


held = HeldLib()


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
            _self_test_result = EXIT_REQUEST_OFFSET is not None and _run_torture(20_000_000)
        return _self_test_result


def _run_torture(iterations: int) -> bool:
    memory = RealMemory(4 << 12)
    space = VirtualSpace(memory)
    code_frame, data_frame = 0, 1
    memory.frames[code_frame, : len(_TORTURE)] = list(_TORTURE)
    space.map_page(0x400, code_frame, PROT_READ | PROT_EXEC)  # r-x at 0x400000
    space.map_page(0x600, data_frame, PROT_READ | PROT_WRITE)  # rw- at 0x600000
    done = threading.Event()

    def handler(_nr: int, _args: tuple[int, int, int, int, int, int]) -> SyscallOutcome:
        done.set()
        return SyscallOutcome(0, stop=True)

    # The CPU module imports this one (its constructor asks for the proof), so it is looked up
    # when the proof runs; through the module, so that a test can put another Cpu there.
    from tender_ray.engines.emulated import cpu as cpu_module

    cpu = cpu_module.Cpu(memory, _proven=True)
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
