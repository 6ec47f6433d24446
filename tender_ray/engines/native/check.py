"""Is the native engine possible here? The start-up self-check: the platform, the stub, and a
traced probe guest that must make two system calls and end as expected, within a timeout.

(Named `check`, not `self_check`, so that the package's `self_check` function does not hide
the module.)
"""

from __future__ import annotations

import os
import platform
import struct
import sys
import threading
from typing import Final

import numpy as np

from tender_ray.abi.cpu_state import CpuState, StopKind, SyscallOutcome
from tender_ray.abi.linux import PROT_EXEC, PROT_READ, SYS_EXIT, SYS_GETPID
from tender_ray.engines.native import libc
from tender_ray.engines.native.engine import NativeCpu
from tender_ray.engines.native.tracer import STUB, STUB_ENTRY
from tender_ray.resources.real_memory import PAGE_SIZE, RealMemory
from tender_ray.resources.virtual_region import RegionKind, VirtualRegion
from tender_ray.resources.virtual_space import VirtualSpace
from tender_ray.resources.virtual_user_space import VirtualUserSpace

_check_lock = threading.Lock()
_check_result: tuple[bool, str] | None = None
SELF_CHECK_TIMEOUT: Final = 15.0


def self_check() -> tuple[bool, str]:
    """Whether the native engine works on this host, and why not: spawns a traced guest that
    makes two system calls (served here) and must end with the expected value. Cached; bounded
    by a timeout, so a host where tracing hangs falls back instead of hanging."""
    global _check_result
    with _check_lock:
        if _check_result is None:
            _check_result = _self_check()
        return _check_result


def _self_check() -> tuple[bool, str]:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False, f"it needs Linux on x86-64 (this is {sys.platform} {platform.machine()})"
    if not libc.available() or not hasattr(os, "pidfd_open") or not hasattr(os, "posix_spawn"):
        return False, "this Python has no ptrace, pidfd_open or posix_spawn"
    if not os.access(STUB, os.X_OK):
        return False, f"its stub program {STUB} is missing or not executable"
    with open(STUB, "rb") as f:
        header = f.read(64)
    if header[:4] != b"\x7fELF" or struct.unpack_from("<Q", header, 24)[0] != STUB_ENTRY:
        return False, f"its stub program {STUB} is not the one this module knows (rebuild it)"
    outcome: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            outcome.append(_probe())
        except BaseException as exc:  # anything at all means: not here
            outcome.append((False, str(exc) or type(exc).__name__))

    thread = threading.Thread(target=probe, name="tender-native-self-check", daemon=True)
    thread.start()
    thread.join(SELF_CHECK_TIMEOUT)
    if thread.is_alive():
        return False, f"the ptrace self-check did not finish in {SELF_CHECK_TIMEOUT:.0f} s"
    return outcome[0] if outcome else (False, "the ptrace self-check failed")


# mov $39,%eax; syscall (getpid); mov %rax,%rdi; mov $60,%eax; syscall (exit)
_PROBE_CODE: Final = bytes.fromhex("b827000000" "0f05" "4889c7" "b83c000000" "0f05")


def _probe() -> tuple[bool, str]:
    memory = RealMemory(4 * PAGE_SIZE, shared=True)
    space = VirtualSpace(memory)
    code = memory.allocate_one()
    memory.frames[code, : len(_PROBE_CODE)] = np.frombuffer(_PROBE_CODE, np.uint8)
    seen: list[tuple[int, int]] = []

    def handler(nr: int, args: tuple[int, int, int, int, int, int]) -> SyscallOutcome:
        seen.append((nr, args[0]))
        return SyscallOutcome(4242 if nr == SYS_GETPID else 0, stop=nr == SYS_EXIT)

    # A user space so that the fault path and syncing see the page.
    region = VirtualRegion().setup(RegionKind.TEXT, 1)
    region.frames[0] = code
    space.paste(VirtualUserSpace().setup(region, 0x400000, PROT_READ | PROT_EXEC))
    cpu = NativeCpu(memory)
    try:
        cpu.bind(space, handler)
        cpu.load(CpuState.initial(0x400000, 0))
        for _ in range(10):
            stop = cpu.run(100_000)
            if stop.kind is not StopKind.QUANTUM:
                break
        if stop.kind is not StopKind.SYSCALL or seen != [(SYS_GETPID, 0), (SYS_EXIT, 4242)]:
            return False, f"the traced probe went wrong: {stop} after {seen}"
        return True, ""
    finally:
        cpu.close()
