"""The host's tracing interface as the native engine calls it: ptrace through the C library
(ctypes), its request numbers and options, and the kernel's x86-64 layouts of registers and
signal information.

This is the host side, not the guest's ABI (that is `tender_ray.abi.linux`): these numbers
never reach a guest.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from typing import Final

# ptrace requests and options.
PTRACE_CONT, PTRACE_GETREGS, PTRACE_SETREGS = 7, 12, 13
PTRACE_POKEDATA = 5
PTRACE_SINGLESTEP = 9
PTRACE_SETOPTIONS, PTRACE_GETSIGINFO = 0x4200, 0x4202
PTRACE_GETREGSET, PTRACE_SETREGSET = 0x4204, 0x4205
NT_X86_XSTATE = 0x202  # the regset of the whole XSAVE area (standard format)
XSTATE_MAX = 1 << 14  # bytes: more than any x86-64 XSAVE area Linux exposes (AMX included)
PTRACE_O_TRACESECCOMP, PTRACE_O_EXITKILL = 0x80, 0x100000
PTRACE_O_TRACECLONE = 0x08  # a thread the guest's host process makes is traced from birth
PTRACE_EVENT_SECCOMP = 7
# waitpid options: every child, traced or not (__WALL), and not those of other threads.
WALL, WNOTHREAD = 0x40000000, 0x20000000


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        libc.ptrace.restype = ctypes.c_long
    except (OSError, AttributeError):  # not a Unix C library: the self-check says no
        return None
    return libc


_libc = _load_libc()


def available() -> bool:
    """Whether this process can call ptrace at all (a Unix C library that has it)."""
    return _libc is not None


REG_NAMES: Final = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
                    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
                    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")


class Regs(ctypes.Structure):
    """struct user_regs_struct (x86-64)."""

    _fields_ = [(name, ctypes.c_uint64) for name in REG_NAMES]


XState = ctypes.c_uint8 * XSTATE_MAX  # the XSAVE area: FXSAVE's 512 bytes, header, components


class IoVec(ctypes.Structure):
    """struct iovec, how PTRACE_GETREGSET/SETREGSET pass a register set."""

    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
SigInfo = ctypes.c_uint8 * 128


def ptrace(request: int, pid: int, addr: int = 0, data: int | None = 0) -> int:
    """One ptrace call; OSError (with the C errno) when it fails."""
    assert _libc is not None
    result = _libc.ptrace(request, pid, addr, data)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return int(result)


def siginfo_fields(raw: bytes) -> tuple[int, int, int]:
    """(si_code, si_addr, si_pid) of a siginfo_t; the last two share a union, so only the one
    the signal's kind fills means anything."""
    (code,) = struct.unpack_from("<i", raw, 8)
    (address,) = struct.unpack_from("<Q", raw, 16)
    (sender,) = struct.unpack_from("<i", raw, 16)
    return code, address, sender


def host_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a host process has used so far; 0 once it is gone."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # its process CPU-time clock
    except OSError:
        return 0.0


def host_thread_cpu_seconds(tid: int) -> float:
    """CPU time (user + system) one host thread has used so far; 0 once it is gone."""
    try:
        return time.clock_gettime(((~tid) << 3) | 4 | 2)  # its thread CPU-time clock
    except OSError:
        return 0.0
